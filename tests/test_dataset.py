"""The training API (:mod:`ether_prep.dataset`) on the shared aligned store: items equal raw Zarr slicing,
DataLoader batches, pairs and pandas views."""

from __future__ import annotations

import numpy as np
import pytest
import zarr


@pytest.mark.slow
def test_dataloader_batches_equal_direct_zarr_slicing(aligned: dict[str, object]) -> None:
    from torch.utils.data import DataLoader

    import ether_prep

    ds = ether_prep.open_store(aligned["store"]).utterances(with_words=True)
    loader = DataLoader(ds, batch_size=4, shuffle=False, num_workers=2, collate_fn=ds.collate)
    root = zarr.open_group(str(aligned["store"]), mode="r", zarr_format=3, use_consolidated=False)
    seen = 0
    for batch in loader:
        for j, uid in enumerate(batch["utterance_id"]):
            sid = batch["session_id"][j]
            align = root["sessions"][sid]["align"]
            index = [str(x) for x in align["utterances/id"][...]].index(uid)
            lo, hi = (int(x) for x in align["tensors/offsets"][index:index + 2])
            n = int(batch["lengths"][j])
            assert n == hi - lo
            face = align["tensors/face"][lo:hi]
            mask = align["tensors/mask"][lo:hi]
            assert np.array_equal(batch["speaker_face"][j, :n].numpy(), face[:, 0])
            assert np.array_equal(batch["listener_face"][j, :n].numpy(), face[:, 1])
            assert np.array_equal(batch["speaker_mask"][j, :n].numpy(), mask[:, 0])
            assert np.array_equal(batch["listener_mask"][j, :n].numpy(), mask[:, 1])
            assert np.allclose(batch["time"][j, :n].numpy(), align["tensors/time"][lo:hi])
            assert not batch["speaker_mask"][j, n:].any() and not batch["valid"][j, n:].any()
            assert np.array_equal(batch["pooled"][j].numpy(), align["pooled"][index], equal_nan=True)
            ws, we = (int(align["utterances/word_start"][index]), int(align["utterances/word_end"][index]))
            assert [w[0] for w in batch["words"][j]] == [str(w) for w in
                                                         root["sessions"][sid]["utterances/words/text"][ws:we]]
            seen += 1
    assert seen == len(ds) == len(ether_prep.open_store(aligned["store"]))
    clients = ether_prep.open_store(aligned["store"]).utterances(role="client")
    assert 0 < len(clients) < len(ds) and all(clients[i]["role"] == "client" for i in range(len(clients)))


@pytest.mark.slow
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shuffled_dataloader_over_a_mixed_store(aligned: dict[str, object], seed: int) -> None:
    """Audio-only and video sessions in one store: every utterance has the same feature width, so shuffled
    batches mixing them collate (the README example); audio-only steps are all masked."""
    import torch
    from torch.utils.data import DataLoader

    import ether_prep

    store = ether_prep.open_store(aligned["store"])
    ds = store.utterances()
    assert len(store.sessions()) == 4
    names = ds.feature_names
    assert len(names) == 33 and names[:2] == ["AU01", "AU02"] and names[-3:] == ["mouth_open", "gaze_angle_x",
                                                                                 "gaze_angle_y"]
    torch.manual_seed(seed)
    loader = DataLoader(ds, batch_size=5, shuffle=True, num_workers=0, collate_fn=ds.collate)
    seen = 0
    for batch in loader:
        assert batch["speaker_face"].shape[-1] == len(names)
        for j, sid in enumerate(batch["session_id"]):
            if sid.startswith("sample"):
                assert not batch["speaker_mask"][j].any() and not batch["listener_mask"][j].any()
        seen += len(batch["utterance_id"])
    assert seen == len(ds)


@pytest.mark.slow
def test_pairs_dataset_and_pandas_views(aligned: dict[str, object]) -> None:
    import ether_prep

    store = ether_prep.open_store(aligned["store"])
    frame = store.to_pandas("utterances")
    assert len(frame) == len(store) and "utterance_index" in frame.columns
    # Nullable integer ids stay integers in plain pandas (the audio-only call has no face: missing, not NaN).
    for col in ("speaker_person", "listener_person", "speaker_track", "listener_track"):
        assert str(frame[col].dtype) == "Int64", (col, frame[col].dtype)
    assert frame.loc[frame["session_id"].str.startswith("sample"), "speaker_track"].isna().all()
    assert len(store.to_pandas("sessions")) == 4
    pairs = store.pairs()
    assert len(pairs) == len(store.to_pandas("pairs")) >= 1
    item = pairs[0]
    ids = store.pair_manifest["client_utterances"][0]
    by_id = {u: store.utterances(ids=[u])[0] for u in ids}
    assert item["client"]["utterance_ids"] == list(ids)
    steps = sum(len(by_id[u]["time"]) for u in ids)
    assert item["client"]["speaker_face"].shape == (steps, 33)
    assert np.array_equal(item["client"]["speaker_face"][: len(by_id[ids[0]]["time"])], by_id[ids[0]]["speaker_face"])
    batch = pairs.collate([pairs[i] for i in range(len(pairs))])
    assert batch["client"]["speaker_face"].shape[0] == len(pairs) == batch["counsellor"]["lengths"].shape[0]


@pytest.mark.slow  # reads the `aligned` store, made with the cpu pipeline's models
def test_one_batch_holds_every_channel_of_each_utterance(aligned: dict[str, object]) -> None:
    """Face, voice, text and timing side by side in one batch of the mixed audio-only/video store: the face and
    voice on one time axis, each channel's rows present where the session has that channel."""
    from torch.utils.data import DataLoader

    import ether_prep

    store = ether_prep.open_store(aligned["store"])
    ds = store.utterances()
    batch = next(iter(DataLoader(ds, batch_size=len(ds), collate_fn=ds.collate)))
    n, t = batch["speaker_face"].shape[:2]
    assert batch["voice"].shape[:2] == (n, t) and batch["functionals"].shape == (n, 88)
    assert batch["text_embedding"].shape == (n, 384) and batch["timing"].shape == (n, 7)
    audio_only = np.array([str(s).startswith("sample-") for s in batch["session_id"]])
    assert audio_only.any() and (~audio_only).any()
    face_seen = batch["speaker_mask"].any(dim=1).numpy()
    assert not face_seen[audio_only].any() and face_seen[~audio_only].all()  # no face where there is no video
    assert batch["voice_mask"].any(dim=1).all()  # every utterance has its voice, video or not
    assert np.allclose(batch["text_embedding"].norm(dim=-1).numpy(), 1.0, atol=1e-4)
    frame = store.to_pandas("utterances")
    assert {"voice_f0_median_st", "voice_arousal", "speech_rate", "text_embedding"} <= set(frame.columns)
