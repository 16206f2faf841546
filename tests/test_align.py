"""Faces to speakers, per-utterance tensors, dialogue pairs, cues, manifests, training API.

Unit tests exercise the pure functions of :mod:`ether_prep.align`; the
``slow`` tests run the real ``cpu`` pipeline (extract, then align) once on a small folder of shared clips
and check the acceptance criteria on what it stored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from ether_prep.align.cues import face_cues, text_cues, utterance_cues
from ether_prep.align.linking import link_persons, mouth_movement, parse_speaker_tracks, speech_activity
from ether_prep.align.pairs import pair_dialogue
from ether_prep.align.roles import assign_roles
from ether_prep.align.tensors import feature_names, offsets_from_lengths, pool, resample_track, utterance_grid
from ether_prep.errors import ConfigError
from ether_prep.stages.align import AlignParams
from ether_prep.store import read_ragged, write_ragged

from .conftest import DATA, GRID2, pipeline, pipeline_file

GRID_JSON = json.loads((DATA / "video" / "grid_two_faces_side_by_side.json").read_text())
FPS = 25.0


# ------------------------------------------------------------------------------------------ unit tests
def _grid_turns() -> list[tuple[float, float]]:
    """The two speech spans of the side-by-side clip (left person, then right), from its reference."""
    return [tuple(t["speech_approx"]) for t in GRID_JSON["turns"]]


def _talking_mouth(times: np.ndarray, spans: list[tuple[float, float]], rest: float = 0.05) -> np.ndarray:
    """Lip aperture of a talking face: ~4 Hz syllable opening within the spans, still elsewhere."""
    m = np.full(times.size, rest)
    for a, b in spans:
        sel = (times >= a) & (times <= b)
        m[sel] = rest + 0.3 * np.abs(np.sin(2 * np.pi * 2.0 * (times[sel] - a)))
    return m


def test_utterance_grid_covers_the_span_at_the_rate() -> None:
    for start, end, pad, rate in [(0.46, 2.51, 0.5, 10.0), (3.68, 5.51, 0.25, 25.0), (0.1, 0.2, 0.5, 5.0)]:
        g = utterance_grid(start, end, pad, rate)
        assert g[0] == pytest.approx(max(0.0, start - pad))
        assert np.allclose(np.diff(g), 1 / rate)
        assert g[-1] <= end + pad + 1e-9 and g[-1] > end + pad - 1 / rate
        assert g[0] <= start and g[-1] >= end


def test_resample_track_interpolates_and_masks_missing_frames() -> None:
    times = np.arange(150) / FPS
    feats = np.stack([times, 2 * times], axis=1)
    present = np.ones(150, bool)
    present[50:75] = False  # no face from 2.0 s to 2.96 s
    grid = utterance_grid(1.0, 4.0, 0.5, 10.0)
    values, mask = resample_track(times, feats, present, grid)
    gap = (grid > 2.0 - 0.02) & (grid < 2.96 + 0.02)
    assert not mask[gap].any() and np.all(values[gap] == 0)
    ok = (grid < 1.95) | (grid > 3.0)
    assert mask[ok].all()
    # linear ramps are reproduced exactly between frames
    assert np.allclose(values[mask, 0], grid[mask], atol=1e-6)
    assert np.allclose(values[mask, 1], 2 * grid[mask], atol=1e-5)
    # past the last frame the face is missing, not extrapolated
    _, tail_mask = resample_track(times, feats, np.ones(150, bool), np.array([5.9, 6.5, 7.0]))
    assert tail_mask.tolist() == [True, False, False]


def test_pool_uses_only_core_steps_with_a_face() -> None:
    values = np.array([[1.0], [100.0], [3.0], [5.0]], dtype=np.float32)
    mask = np.array([True, False, True, True])
    core = np.array([True, True, True, False])
    stats, coverage = pool(values, mask, core)
    assert stats[:, 0].tolist() == pytest.approx([2.0, 1.0, 3.0])
    assert coverage == pytest.approx(2 / 3)
    empty, cov0 = pool(values, np.zeros(4, bool), core)
    assert np.isnan(empty).all() and cov0 == 0.0


def test_mouth_movement_is_high_while_talking_and_nan_without_face() -> None:
    times = np.arange(150) / FPS
    (a, b), _ = _grid_turns()
    sig = np.stack([_talking_mouth(times, [(a, b)]), np.full(150, 0.4)], axis=1)
    sig[100:110, 1] = np.nan
    move = mouth_movement(sig, times, 0.5)
    talking = (times > a + 0.3) & (times < b - 0.3)
    assert move[talking, 0].mean() > 0.05
    assert np.nanmax(move[:, 1]) < 1e-6  # a still face, however open, does not move
    assert np.isnan(move[100:110, 1]).all()


def test_link_persons_side_by_side_turns_with_confidence() -> None:
    """Left face talks during the first reference span, right during the second (the real clip's timing)."""
    times = np.arange(150) / FPS
    left, right = _grid_turns()
    mouth = np.stack([_talking_mouth(times, [left]), _talking_mouth(times, [right])], axis=1)
    # speakers listed in the opposite order to the tracks, and a third speaker who is off screen
    speakers = ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    starts, ends = np.array([right[0], left[0], 8.0]), np.array([right[1], left[1], 9.0])
    act = speech_activity(speakers, speakers, starts, ends, times)
    links, corr = link_persons(mouth_movement(mouth, times), act, speakers, [0, 1])
    assert [lk.speaker for lk in links] == ["SPEAKER_01", "SPEAKER_00"]
    for lk in links:
        assert 0.5 < lk.confidence <= 1.0 and lk.corr > 0.5 and lk.margin > 0.5
    assert corr.shape == (2, 3)


def test_link_persons_leaves_silent_faces_unlinked_and_flags_ambiguity() -> None:
    times = np.arange(150) / FPS
    left, right = _grid_turns()
    talk = _talking_mouth(times, [left, right])
    still = np.full(150, 0.2)
    act = speech_activity(["A"], ["A", "A"], np.array([left[0], right[0]]), np.array([left[1], right[1]]), times)
    links, _ = link_persons(mouth_movement(np.stack([still, talk], 1), times), act, ["A"], [7, 9])
    assert links[0].speaker == "" and links[1].speaker == "A" and links[0].person == 7
    # two faces moving identically: the match is a coin toss, and the confidence says so
    links, _ = link_persons(mouth_movement(np.stack([talk, talk], 1), times), act, ["A"], [0, 1])
    assert max(lk.confidence for lk in links) < 0.01
    # too few frames with a face: no link
    few = np.stack([talk], 1).copy()
    few[8:] = np.nan
    links, _ = link_persons(mouth_movement(few, times), act, ["A"], [0], min_frames=10)
    assert links[0].speaker == ""


def test_link_persons_joins_fragments_of_one_face() -> None:
    """A face hidden for a second comes back as a new track in the same place: both are the speaker's."""
    times = np.arange(75) / FPS
    talk = _talking_mouth(times, [(0.5, 2.5)])
    frag = np.full((75, 3), np.nan)
    frag[:25, 0] = talk[:25]  # before the face was hidden
    frag[50:, 1] = talk[50:]  # after: a new track
    frag[:, 2] = 0.1  # someone else, still, on screen all along
    boxes = np.array([[100, 50, 200, 180], [104, 52, 203, 182], [400, 50, 500, 180]], dtype=float)
    act = speech_activity(["A"], ["A"], np.array([0.5]), np.array([2.5]), times)
    links, _ = link_persons(mouth_movement(frag, times), act, ["A"], [0, 1, 2], min_frames=10, boxes=boxes)
    assert [lk.speaker for lk in links] == ["A", "A", ""]
    assert 0 < links[0].confidence <= links[1].confidence  # the seat link inherits the primary's confidence


def test_link_persons_by_screen_time_when_the_edit_shows_whoever_talks() -> None:
    """Edited dialogue: each shot shows the person talking, so every visible mouth moves and only screen time
    tells who is who (the failure of mouth-only linking on TV-style editing)."""
    times = np.arange(400) / FPS  # 16 s
    turns = [(0.0, 3.9, "A"), (4.0, 7.9, "B"), (8.0, 11.9, "A"), (12.0, 16.0, "B")]
    movement = np.full((400, 2), np.nan)
    for a, b, who in turns:
        on = (times >= a) & (times < b)
        movement[on, 0 if who == "A" else 1] = mouth_movement(_talking_mouth(times, [(a, b)]), times)[on, 0]
    speakers = ["SPEAKER_00", "SPEAKER_01"]  # SPEAKER_00 is B, SPEAKER_01 is A
    spk = ["SPEAKER_01" if who == "A" else "SPEAKER_00" for _, _, who in turns]
    act = speech_activity(speakers, spk, np.array([t[0] + 0.2 for t in turns]), np.array([t[1] - 0.2 for t in turns]),
                          times)
    links, _ = link_persons(movement, act, speakers, [0, 1])
    assert [lk.speaker for lk in links] == ["SPEAKER_01", "SPEAKER_00"]
    for lk in links:
        assert lk.screen_corr > 0.8 and abs(lk.mouth_corr) < lk.screen_corr and lk.confidence > 0.8


def test_pair_dialogue_groups_turns_and_respects_the_gap() -> None:
    ids = [f"s/u{i:05d}" for i in range(7)]
    starts = np.array([0.0, 2.0, 4.0, 6.0, 8.0, 30.0, 40.0])
    ends = starts + 1.5
    roles = ["client", "client", "counsellor", "counsellor", "client", "counsellor", "client"]
    pairs = pair_dialogue(ids, starts, ends, roles, max_gap=10.0)
    assert len(pairs) == 1  # the reply at 30 s comes 20.5 s after the client's turn
    p = pairs[0]
    assert p.client_utterances == tuple(ids[:2]) and p.counsellor_utterances == tuple(ids[2:4])
    assert p.start == 0.0 and p.end == 7.5 and p.gap == pytest.approx(0.5)
    assert len(pair_dialogue(ids, starts, ends, roles, max_gap=30.0)) == 2


def test_text_cues_find_distress_behind_positive_words() -> None:
    (fine_tired, happy, neutral) = text_cues(["I am fine, really, everything is good, just a bit tired",
                                              "I love this, it is wonderful!", "bin blue at f two now"])
    assert fine_tired[0] > 0  # VADER's compound calls it positive ...
    assert fine_tired[2] >= 0.35 and fine_tired[3] == "tired"  # ... but "tired" is -1.9 on VADER's scale
    assert happy[0] > 0.8 and happy[1] > 0.5
    assert neutral[:3] == (0.0, 0.0, 0.0)


def test_face_cues_and_flags() -> None:
    names = feature_names(["AU01", "AU04", "AU12", "AU15", "AU25", "AU26"],
                          ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"])
    dim = len(names)
    neutral_face = np.zeros((10, dim))
    neutral_face[:, names.index("neutral")] = 0.95
    neutral_face[:, names.index("AU26")] = 0.9  # talking: ignored by expressivity
    mask = np.ones(10, bool)
    val, expr = face_cues(neutral_face, mask, names)
    assert val == pytest.approx(0.0) and expr == pytest.approx(0.025)
    text = text_cues(["I'm fine, just tired and lonely"])[0]
    cues = utterance_cues(text, val, expr, coverage=1.0, params=AlignParams())
    assert cues.flags == ("minimizing",)
    assert 0 <= cues.mismatch <= 1
    assert utterance_cues(text, val, expr, coverage=0.2, params=AlignParams()).flags == ()  # too little face to judge
    sad = np.zeros((10, dim))
    sad[:, names.index("sadness")] = 0.8
    sad[:, names.index("AU15")] = 0.7
    sad[:, names.index("AU04")] = 0.6
    s_val, s_expr = face_cues(sad, mask, names)
    assert s_val < -0.5 and s_expr > 0.3
    happy_words = text_cues(["This is great, I love it"])[0]
    assert "positive_words_negative_face" in utterance_cues(happy_words, s_val, s_expr, 1.0, AlignParams()).flags
    assert np.isnan(face_cues(sad, np.zeros(10, bool), names)[0])


def test_ragged_round_trip_reads_one_chunk_per_item(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 120, size=3000)
    offsets = offsets_from_lengths(lengths)
    face = rng.random((int(offsets[-1]), 2, 31), dtype=np.float32)
    mask = face[..., 0] > 0.3
    group = zarr.open_group(str(tmp_path / "r.zarr"), mode="w", zarr_format=3)
    write_ragged(group, "t", {"face": face, "mask": mask}, offsets)
    arr = group["t/face"]
    assert arr.shards is not None and arr.chunks[0] * 2 * 31 * 4 <= 64 * 1024
    for i in (0, 1234, 2999):
        item = read_ragged(group, "t", i)
        assert np.array_equal(item["face"], face[offsets[i]:offsets[i + 1]])
        assert np.array_equal(item["mask"], mask[offsets[i]:offsets[i + 1]])
    shards = [p for p in (tmp_path / "r.zarr" / "t" / "face" / "c").rglob("*") if p.is_file()]
    # ~49 MB of rows (16 MB shards of 64 KB chunks) in 4 files, not hundreds of chunk files
    assert len(shards) == -(-face.shape[0] // arr.shards[0]) <= 4


def test_roles_from_metadata_tracks_and_heuristics() -> None:
    speakers = ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    talk = {"SPEAKER_00": 10.0, "SPEAKER_01": 40.0, "SPEAKER_02": 1.0}
    first = ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    roles, assumed, source = assign_roles(speakers, talk, first, {}, {}, "most_talk_is_client", "s")
    assert roles == {"SPEAKER_00": "counsellor", "SPEAKER_01": "client", "SPEAKER_02": "other"}
    assert assumed and source == "most_talk_is_client"
    roles, assumed, _ = assign_roles(speakers, talk, first, {}, {}, "first_speaker_is_counsellor", "s")
    assert roles["SPEAKER_00"] == "counsellor" and roles["SPEAKER_01"] == "client" and assumed
    meta = {"client": "track:1", "counsellor": "SPEAKER_02"}
    roles, assumed, source = assign_roles(speakers, talk, first, meta, {1: "SPEAKER_00"}, "none", "s")
    assert roles == {"SPEAKER_00": "client", "SPEAKER_01": "other", "SPEAKER_02": "counsellor"}
    assert not assumed and source == "metadata"
    assert parse_speaker_tracks("SPEAKER_00=1; SPEAKER_01=-", "s") == {"SPEAKER_00": 1, "SPEAKER_01": None}
    with pytest.raises(ConfigError, match="SPEAKER_00=1"):
        parse_speaker_tracks("SPEAKER_00", "s")


def test_bad_align_parameters_are_config_errors(tmp_path: Path) -> None:
    from ether_prep.config import load_pipeline

    with pytest.raises(ValueError, match="role_heuristic"):
        AlignParams(role_heuristic="loudest").validate()
    cfg = pipeline_file(tmp_path, align={"rate_hz": -1.0})
    with pytest.raises(ConfigError, match="rate_hz"):
        load_pipeline("cpu", cfg)


# --------------------------------------------------------------------------------- end to end (slow)
def _session(store: Path, name: str) -> tuple[str, zarr.Group]:
    root = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)
    for sid in root["sessions"].group_keys():
        if sid.startswith(name):
            return sid, root["sessions"][sid]
    raise AssertionError(f"no session {name} in {list(root['sessions'].group_keys())}")


def _table(group: zarr.Group, name: str) -> dict[str, np.ndarray]:
    from ether_prep.store import read_table

    return {k: np.array([str(x) for x in v]) if v.dtype.kind in "TUO" else v
            for k, v in read_table(group, name).items()}


@pytest.mark.slow
def test_side_by_side_faces_are_linked_to_their_turns(aligned: dict[str, object]) -> None:
    _, g = _session(aligned["store"], "grid_two_faces")
    links = _table(g["align"], "links")
    utts = _table(g["utterances"], "utterances")
    box = np.asarray(g["face/box"][...], dtype=np.float64)
    centre_x = np.nanmean((box[..., 0] + box[..., 2]) / 2, axis=0)  # per track

    def speaker_of(window: tuple[float, float]) -> str:
        talk: dict[str, float] = {}
        for s, e, spk in zip(utts["start"], utts["end"], utts["speaker"], strict=True):
            talk[spk] = talk.get(spk, 0.0) + max(0.0, min(e, window[1]) - max(s, window[0]))
        return max(talk, key=talk.get)

    first, second = speaker_of((0.0, 3.0)), speaker_of((3.0, 6.0))
    assert first != second
    linked = {int(t): (str(s), float(c)) for t, s, c in zip(links["track"], links["speaker"],
                                                             links["confidence"], strict=True)}
    left = int(np.argmin(centre_x))
    right = int(np.argmax(centre_x))
    assert centre_x[left] < 360 < centre_x[right]
    track_ids = [int(t) for t in g["face/tracks/track"][...]]
    assert linked[track_ids[left]][0] == first and linked[track_ids[right]][0] == second
    for t in (left, right):
        assert linked[track_ids[t]][1] > 0.5, links  # 0.67 on this clip: well above chance (0 = a coin toss)
    print(f"\nside-by-side links: {links}")


@pytest.mark.slow
def test_tensors_cover_each_utterance_from_distinct_tracks(aligned: dict[str, object]) -> None:
    rate = pipeline("cpu").stage("align").params.rate_hz
    root = zarr.open_group(str(aligned["store"]), mode="r", zarr_format=3, use_consolidated=False)
    n_both = 0
    for sid in root["sessions"].group_keys():
        align = root["sessions"][sid]["align"]
        assert align.attrs["rate_hz"] == rate
        utts = _table(align, "utterances")
        offsets = align["tensors/offsets"][...]
        time = align["tensors/time"][...]
        assert offsets[-1] == time.size == align["tensors/face"].shape[0] == align["tensors/mask"].shape[0]
        for i in range(len(utts["id"])):
            t = time[offsets[i]:offsets[i + 1]]
            assert np.allclose(np.diff(t), 1 / rate)
            assert t[0] <= utts["start"][i] + 1e-9 and t[-1] >= utts["end"][i] - 1e-9
            st, lt = int(utts["speaker_track"][i]), int(utts["listener_track"][i])
            if st >= 0 and lt >= 0:
                n_both += 1
                assert st != lt
                face = align["tensors/face"][offsets[i]:offsets[i + 1]]
                both = align["tensors/mask"][offsets[i]:offsets[i + 1]].all(axis=1)
                assert not np.allclose(face[both, 0], face[both, 1])
    assert n_both >= 2  # both utterances of the side-by-side clip have a speaker and a listener face


@pytest.mark.slow
def test_mask_is_false_where_the_face_is_missing(aligned: dict[str, object]) -> None:
    _, g = _session(aligned["store"], "bbaf2n_face_hidden")
    align = g["align"]
    utts = _table(align, "utterances")
    assert len(utts["id"]) >= 1
    offsets = align["tensors/offsets"][...]
    time = align["tensors/time"][...]
    mask = align["tensors/mask"][...]
    face = align["tensors/face"][...]
    speaker_mask = mask[:, 0]
    hidden = (time > 1.05) & (time < 1.95)
    assert hidden.any() and not speaker_mask[hidden].any()
    assert np.all(face[~speaker_mask] == 0)
    visible = ((time > 0.3) & (time < 0.9)) | ((time > 2.1) & (time < 2.9))
    assert speaker_mask[visible].mean() > 0.9
    assert not mask[:, 1].any()  # one person on screen: no listener face
    # the stored face track really lacks those frames
    ft = g["face/time"][...]
    present = np.isfinite(g["face/score"][...])
    assert not present[(ft > 1.05) & (ft < 1.95)].any()
    cov = utts["speaker_coverage"]
    assert 0.0 < cov[int(np.argmax(offsets[1:] - offsets[:-1]))] < 0.5  # hidden for most of the words
    # the tracker lost the face while hidden; both fragments are linked to the one speaker (same seat)
    links = _table(align, "links")
    assert len(set(links["speaker"])) == 1 and links["speaker"][0] != ""
    # the audio-only call: every face step masked, face cues NaN, still in the manifest with text cues
    _, call = _session(aligned["store"], "sample")
    assert call["face"].attrs["stage"]["state"] == "skipped"
    assert not call["align/tensors/mask"][...].any()
    call_utts = _table(call["align"], "utterances")
    assert len(call_utts["id"]) >= 5 and np.isnan(call_utts["mismatch"]).all()


@pytest.mark.slow
def test_manifests_and_pairs(aligned: dict[str, object]) -> None:
    import pyarrow.parquet as pq

    store = aligned["store"]
    manifest = pq.read_table(store / "utterances.parquet").to_pydict()
    root = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)
    n_total = sum(root["sessions"][s]["align"].attrs["n_utterances"] for s in root["sessions"].group_keys())
    assert len(manifest["utterance_id"]) == n_total and len(set(manifest["utterance_id"])) == n_total
    for k in ("session_id", "utterance_index", "start", "end", "speaker", "role", "text", "speaker_coverage",
              "mismatch", "text_valence", "group", "row_start", "n_steps", "flag_minimizing", "cue_flags",
              "speaker_person", "needs_review", "review_reasons"):
        assert k in manifest
    # no column shadows a pandas attribute, and every column says what it holds
    schema = pq.read_schema(store / "utterances.parquet")
    assert "index" not in schema.names and "flags" not in schema.names
    for field in schema:
        assert field.metadata and field.metadata[b"description"], field.name
    # absent values are nulls, not sentinels: the audio-only call has no faces, so no person or mismatch
    call = [i for i, s in enumerate(manifest["session_id"]) if s.startswith("sample")]
    assert call and all(manifest["speaker_person"][i] is None for i in call)
    assert all(manifest["mismatch"][i] is None for i in call)
    assert all(isinstance(manifest["cue_flags"][i], list) for i in call)
    assert all(manifest["needs_review"][i] is not None for i in range(len(manifest["utterance_id"])))
    sessions = pq.read_table(store / "sessions.parquet").to_pydict()
    assert len(sessions["session_id"]) == 4 and "qc_speaker_face_share" in sessions
    pairs = pq.read_table(store / "dialogue_pairs.parquet").to_pydict()
    assert len(pairs["pair_id"]) >= 1  # the two-party call has client turns followed by replies
    ids = set(manifest["utterance_id"])
    roles = dict(zip(manifest["utterance_id"], manifest["role"], strict=True))
    for c, r in zip(pairs["client_utterance"], pairs["counsellor_utterance"], strict=True):
        assert c in ids and r in ids and roles[c] == "client" and roles[r] == "counsellor"


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
    assert len(names) == 31 and names[:2] == ["AU01", "AU02"] and names[-1] == "mouth_open"
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
    assert len(store.to_pandas("sessions")) == 4
    pairs = store.pairs()
    assert len(pairs) == len(store.to_pandas("pairs")) >= 1
    item = pairs[0]
    ids = store.pair_manifest["client_utterances"][0]
    by_id = {u: store.utterances(ids=[u])[0] for u in ids}
    assert item["client"]["utterance_ids"] == list(ids)
    steps = sum(len(by_id[u]["time"]) for u in ids)
    assert item["client"]["speaker_face"].shape == (steps, 31)
    assert np.array_equal(item["client"]["speaker_face"][: len(by_id[ids[0]]["time"])], by_id[ids[0]]["speaker_face"])
    batch = pairs.collate([pairs[i] for i in range(len(pairs))])
    assert batch["client"]["speaker_face"].shape[0] == len(pairs) == batch["counsellor"]["lengths"].shape[0]


@pytest.mark.slow
def test_changing_the_rate_reruns_only_align(aligned: dict[str, object]) -> None:
    from ether_prep.runner import run_pipeline

    store = aligned["tmp"] / "rate_store.zarr"
    shutil.copytree(aligned["store"], store)
    before = _markers(store)
    summary = run_pipeline(pipeline("cpu", align={"rate_hz": 5.0, "max_len": 40}), aligned["raw"], store, family=None)
    assert summary.ok, summary.report()
    computed = {o.stage for o in summary.outcomes if o.state in ("done", "failed")}
    assert computed == {"align", "qc"}, summary.report()  # align, and the quality check that reads it
    assert {o.state for o in summary.outcomes if o.stage not in ("align", "qc")} <= {"cached"}
    after = _markers(store)
    for key, marker in before.items():
        if key[1] not in ("align", "qc"):
            assert after[key] == marker  # extract stages untouched: same fingerprint and finish time
        else:
            assert after[key]["fingerprint"] != marker["fingerprint"]
    _, g = _session(store, "grid_two_faces")
    t = g["align/tensors/time"][...]
    off = g["align/tensors/offsets"][...]
    assert np.allclose(np.diff(t[off[0]:off[1]]), 0.2)
    # the optional fixed-length tensors hold the same values, cut or zero-padded to max_len
    padded, length = g["align/padded/face"], g["align/padded/length"][...]
    for i in range(len(off) - 1):
        n = int(length[i])
        assert n == min(40, off[i + 1] - off[i])
        assert np.array_equal(padded[i, :n], g["align/tensors/face"][off[i]:off[i] + n])
        assert not g["align/padded/mask"][i, n:].any()


def _markers(store: Path) -> dict[tuple[str, str], dict]:
    root = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)
    out = {}
    for sid in root["sessions"].group_keys():
        for stage in root["sessions"][sid].group_keys():
            m = dict(root["sessions"][sid][stage].attrs.get("stage", {}))
            out[(sid, stage)] = {k: m.get(k) for k in ("fingerprint", "finished_at", "state")}
    return out


@pytest.mark.slow
def test_edited_sessions_csv_reaches_align_alone(aligned: dict[str, object]) -> None:
    """Roles fixed by hand in sessions.csv after extraction: `align` (no raw folder) picks them up and reruns
    only for that session; nothing is re-extracted."""
    from ether_prep.runner import run_pipeline

    store = aligned["tmp"] / "roles_store.zarr"
    shutil.copytree(aligned["store"], store)
    sid, g = _session(store, "grid_two_faces")
    auto = dict(g["align"].attrs)
    assert auto["role_assumed"] is True
    client = next(s for s, r in auto["roles"].items() if r == "counsellor")  # swap the guess
    counsellor = next(s for s, r in auto["roles"].items() if r == "client")
    csv = aligned["raw"] / "sessions.csv"
    csv.write_text(f"file,client,counsellor\n{GRID2.name},{client},{counsellor}\n")
    try:
        summary = run_pipeline(pipeline("cpu"), None, store, family="align")
    finally:
        csv.unlink()
    assert summary.ok, summary.report()
    assert summary.ran("align") == [sid] and summary.ran("qc") == [sid]
    _, g = _session(store, "grid_two_faces")
    fixed = dict(g["align"].attrs)
    assert fixed["role_assumed"] is False
    assert fixed["roles"][client] == "client" and fixed["roles"][counsellor] == "counsellor"
