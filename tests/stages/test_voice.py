"""The voice stage: openSMILE eGeMAPS descriptors and functionals on real speech (the shared aligned store,
conftest), F0 against librosa's pyin, the voice on the face grid in the training API, the vocal cues."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ether_prep.errors import ConfigError

from ..conftest import DATA, ROOT, pipeline, pipeline_file

F0 = "F0semitoneFrom27.5Hz_sma3nz"
SAMPLE = DATA / "diarization" / "sample.wav"


def _voice(store: Path, prefix: str) -> tuple[Any, Any]:
    """(session group, voice outputs) of the session whose id starts with ``prefix``."""
    from ether_prep.stages.voice import read_voice
    from ether_prep.store import Store

    s = Store(store, mode="r")
    sid = next(i for i in s.session_ids() if i.startswith(prefix))
    group = s.session(sid)
    return group, read_voice(group)


def _wave(path: Path) -> np.ndarray:
    """The recording's audio as the audio stage decodes it (16 kHz mono float32)."""
    from ether_prep.adapters.pyav import iter_audio_blocks

    return np.concatenate(list(iter_audio_blocks(path, 16000, 16000 * 30, None, 0)))


def _pyin_hz(x: np.ndarray) -> np.ndarray:
    """librosa's pyin F0 (Hz) of the voiced frames of ``x`` (16 kHz)."""
    import librosa

    f0, _, _ = librosa.pyin(x, fmin=60, fmax=500, sr=16000)
    return f0[np.isfinite(f0)]


def _reference_turns() -> list[tuple[float, float, str]]:
    rows = [line.split() for line in (DATA / "diarization" / "sample.rttm").read_text().splitlines() if line]
    return [(float(r[3]), float(r[3]) + float(r[4]), r[7]) for r in rows]


def _alone(times: np.ndarray, turns: list[tuple[float, float, str]], speaker: str) -> np.ndarray:
    """Frames inside ``speaker``'s reference turns and outside everyone else's (no overlap)."""
    mine = np.zeros(len(times), bool)
    for s, e, who in turns:
        inside = (times >= s) & (times <= e)
        mine = mine | inside if who == speaker else mine
    for s, e, who in turns:
        if who != speaker:
            mine &= ~((times >= s) & (times <= e))
    return mine


# ------------------------------------------------------------------------------------------ fast checks
def test_bad_voice_parameters_are_config_errors(tmp_path: Path) -> None:
    from ether_prep.config import load_pipeline

    with pytest.raises(ConfigError, match=r"feature_set 'eGeMAPS' is not one of eGeMAPSv02, GeMAPSv01b") as info:
        load_pipeline("cpu", pipeline_file(tmp_path, voice={"feature_set": "eGeMAPS"}))
    assert "pipelines.yaml" in str(info.value) or ".yaml" in str(info.value)
    with pytest.raises(ConfigError, match="exists only for ComParE_2016"):
        load_pipeline("cpu", pipeline_file(tmp_path, voice={"level": "lld_deltas"}))
    with pytest.raises(ConfigError, match="block_s"):
        load_pipeline("cpu", pipeline_file(tmp_path, voice={"block_s": 0.0}))
    assert load_pipeline("cpu", pipeline_file(tmp_path, voice={"feature_set": "ComParE_2016", "level": "lld_deltas"}))


def test_the_adapter_and_the_stage_name_the_same_feature_sets() -> None:
    from ether_prep.adapters.opensmile_voice import FEATURE_SETS, LEVELS
    from ether_prep.stages import voice

    assert voice._SETS == FEATURE_SETS
    assert {k: v for k, v in voice._LEVELS.items()} == {k: sets for k, (_, sets) in LEVELS.items()}


def test_blocks_give_the_frames_of_one_call_over_the_whole_file() -> None:
    """Blocks of 7 s with 1 s of context either side: the same LLD frames as one openSMILE call (voiced-only
    descriptors NaN where unvoiced instead of openSMILE's 0)."""
    from ether_prep.adapters.opensmile_voice import VoiceExtractor
    from ether_prep.stages.audio import Audio
    from ether_prep.stages.voice import VoiceStage

    x = _wave(SAMPLE)
    spec = next(s for s in pipeline("cpu", voice={"block_s": 7.0}).stages if s.name == "voice")
    stage = VoiceStage(spec)
    ex = VoiceExtractor("eGeMAPSv02", "lld", 16000)
    blocks = list(stage._frames(Audio(x, 16000, {"n_samples": len(x)}), ex, 0, None))
    whole = ex.lld(x)
    assert len(blocks) == 5 and sum(len(b) for b in blocks) == len(whole)
    got = np.concatenate(blocks)
    f0 = ex.lld_names.index(F0)
    assert np.array_equal(np.isnan(got[:, f0]), whole[:, f0] == 0)  # NaN exactly where openSMILE says unvoiced
    # Voiced-only descriptors (*_sma3nz: formants, jitter, ...) are NaN exactly there; every other value equal.
    voiced_only = [i for i, n in enumerate(ex.lld_names) if n.endswith("nz")]
    assert np.array_equal(np.isnan(got), np.outer(whole[:, f0] == 0, np.isin(np.arange(25), voiced_only)))
    finite = np.isfinite(got)
    assert np.allclose(got[finite], whole[finite], atol=1e-5)


def test_a_session_without_speech_gets_descriptors_and_no_functionals(tmp_path: Path) -> None:
    """The call's first 6 s (line silence, no utterance): frames over the whole span, F0 NaN throughout, no
    functionals, and a note saying so."""
    import zarr

    from ether_prep.stages.audio import Audio
    from ether_prep.stages.voice import VoiceStage, utterance_inputs

    x = _wave(SAMPLE)[:6 * 16000]
    stage = VoiceStage(next(s for s in pipeline("cpu").stages if s.name == "voice"))
    out = zarr.open_group(str(tmp_path / "voice.zarr"), mode="w", zarr_format=3)
    note = stage.compute(Audio(x, 16000, {"n_samples": len(x)}), utterance_inputs({}, {}), out)
    assert note is not None and "no utterances: no functionals" in note
    assert out["functionals"].shape == (0, 88) and out["steps/lld"].shape == (0, 25)
    lld = np.asarray(out["lld"][...])
    assert len(lld) >= 590 and np.isnan(lld[:, out.attrs["lld_names"].index(F0)]).all()


def test_collate_fills_voice_of_a_session_without_audio() -> None:
    """A video without audio (no voice stage) batched with utterances that have voice: zeros, masks false,
    functionals NaN with functionals_present false."""
    from ether_prep.dataset import collate_utterances

    def item(n: int, voice: bool) -> dict[str, Any]:
        steps = {"time": np.arange(n) / 10.0, "speaker_face": np.ones((n, 31), np.float32),
                 "listener_face": np.zeros((n, 31), np.float32), "speaker_mask": np.ones(n, bool),
                 "listener_mask": np.zeros(n, bool)}
        return {"utterance_id": f"s/u{n}", "session_id": "s", "speaker": "A", "role": "client",
                "listener_role": None, "text": "hi", "start": 0.0, "end": n / 10, "cues": np.zeros(6, np.float32),
                "pooled": np.zeros((2, 3, 31), np.float32), **steps,
                "functionals": np.ones(88, np.float32) if voice else None,
                "voice": np.ones((n, 25), np.float32) if voice else None,
                "voice_mask": np.ones(n, bool) if voice else None, "voice_voiced": np.ones(n, bool) if voice else None}

    batch = collate_utterances([item(3, True), item(5, False)], as_torch=False)
    assert batch["voice"].shape == (2, 5, 25) and batch["voice"][0, :3].all() and not batch["voice"][0, 3:].any()
    assert not batch["voice"][1].any() and not batch["voice_mask"][1].any()
    assert batch["voice_mask"].tolist() == [[True] * 3 + [False] * 2, [False] * 5]
    assert batch["functionals"].shape == (2, 88) and np.isnan(batch["functionals"][1]).all()
    assert batch["functionals_present"].tolist() == [True, False]


def test_voice_cues_keep_the_face_cues_where_the_voice_is_unknown() -> None:
    from ether_prep.align.cues import utterance_cues, voice_cues
    from ether_prep.stages.align import AlignParams

    p = AlignParams()
    distress = (0.0, 0.3, 0.5, "tired")  # text valence, arousal, distress, word
    neutral_face = utterance_cues(distress, 0.0, 0.05, 1.0, p)
    assert neutral_face.flags == ("minimizing",)
    assert voice_cues(neutral_face, float("nan"), p, 0.35) == (neutral_face.mismatch, ("minimizing",),
                                                               ("text", "face"))
    mismatch, flags, used = voice_cues(neutral_face, 0.9, p, 0.35)  # an aroused voice: not minimizing
    assert used == ("text", "face", "voice") and flags == () and mismatch != neutral_face.mismatch
    assert voice_cues(neutral_face, 0.1, p, 0.35)[1] == ("minimizing",)  # flat voice, neutral face
    no_face = utterance_cues(distress, float("nan"), float("nan"), 0.0, p)
    assert voice_cues(no_face, 0.1, p, 0.35) == (pytest.approx(0.2), ("minimizing",), ("text", "voice"))
    assert voice_cues(no_face, float("nan"), p, 0.35)[2] == ("text",)


# ------------------------------------------------------------------------------- on the aligned store
def test_every_utterance_has_88_functionals_and_frames_over_its_span(aligned: dict[str, Any]) -> None:
    from ether_prep.stages.align import read_align

    for prefix in ("sample", "grid_two_faces", "bbaf2n"):
        group, voice = _voice(aligned["store"], prefix)
        utts = read_align(group).utterances
        assert len(utts["id"]) >= 1
        assert voice.functionals.shape == (len(utts["id"]), 88) and np.isfinite(voice.functionals).all()
        assert voice.attrs["functional_names"][0] == "F0semitoneFrom27.5Hz_sma3nz_amean"
        times = voice.times
        assert voice.lld.shape[1] == 25 and np.allclose(np.diff(times), 0.01)
        for s, e in zip(utts["start"], utts["end"], strict=True):
            inside = (times >= s) & (times <= e)
            assert inside.sum() >= round((e - s) * 100) - 1  # a frame every 10 ms over the whole span
        assert voice.attrs["feature_set"] == "eGeMAPSv02" and voice.attrs["opensmile"].startswith("2.")
    group, voice = _voice(aligned["store"], "sample")
    assert group.stage_state("voice").info["libraries"]["opensmile"] == voice.attrs["opensmile"]


def test_f0_is_nan_in_silence_and_voiced_in_speech(aligned: dict[str, Any]) -> None:
    _, voice = _voice(aligned["store"], "sample")
    f0, times = voice.descriptor(F0), voice.times
    turns = _reference_turns()
    near_speech = np.zeros(len(times), bool)
    for s, e, _ in turns:
        near_speech |= (times >= s - 0.2) & (times <= e + 0.2)
    assert (~near_speech).sum() > 500  # the call starts with 6.7 s of line silence
    assert np.isnan(f0[~near_speech]).all()
    for s, e, _ in turns:
        voiced = np.isfinite(f0[(times >= s) & (times <= e)]).mean()
        assert voiced > 0.6, (s, e, voiced)
    assert np.nanmin(f0) > 0  # no openSMILE zero left as a pitch


@pytest.fixture(scope="module")
def sample_f0(aligned: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Per reference speaker of sample.rttm: (the stage's median F0, pyin's median F0) in Hz over the frames
    where that speaker talks alone."""
    _, voice = _voice(aligned["store"], "sample")
    f0, times = voice.descriptor(F0), voice.times
    x = _wave(SAMPLE)
    turns = _reference_turns()
    out = {}
    for speaker in sorted({t[2] for t in turns}):
        ours = f0[_alone(times, turns, speaker)]
        ref = np.concatenate([_pyin_hz(x[round(s * 16000):round(e * 16000)]) for s, e, who in turns
                              if who == speaker])
        out[speaker] = (27.5 * 2 ** (np.nanmedian(ours) / 12), float(np.median(ref)))
    return out


def test_the_two_speakers_median_f0_differ_as_in_the_audio(sample_f0: dict[str, tuple[float, float]]) -> None:
    (_, (ours_a, ref_a)), (_, (ours_b, ref_b)) = sorted(sample_f0.items())
    ours_st, ref_st = 12 * np.log2(ours_a / ours_b), 12 * np.log2(ref_a / ref_b)
    assert abs(ref_st) > 0.3  # they differ (by ~0.7 semitones)
    assert np.sign(ours_st) == np.sign(ref_st) and abs(ours_st - ref_st) < 0.3, (ours_st, ref_st)
    for ours, ref in sample_f0.values():
        assert abs(ours / ref - 1) < 0.1


def test_grid_speakers_median_f0_is_within_10_percent_of_pyin(aligned: dict[str, Any]) -> None:
    from ether_prep.stages.align import read_align

    checked = 0
    for prefix, path in (("grid_two_faces", DATA / "video" / "grid_two_faces_side_by_side.mp4"),
                         ("bbaf2n-", DATA / "video" / "bbaf2n.mpg")):
        group, voice = _voice(aligned["store"], prefix)
        utts = read_align(group).utterances
        f0, times, x = voice.descriptor(F0), voice.times, _wave(path)
        for speaker in sorted(set(utts["speaker"].tolist())):
            spans = [(s, e) for s, e, w in zip(utts["start"], utts["end"], utts["speaker"], strict=True)
                     if w == speaker]
            ours = np.concatenate([f0[(times >= s) & (times <= e)] for s, e in spans])
            ref = np.concatenate([_pyin_hz(x[round(s * 16000):round(e * 16000)]) for s, e in spans])
            ours_hz, ref_hz = 27.5 * 2 ** (np.nanmedian(ours) / 12), float(np.median(ref))
            assert abs(ours_hz / ref_hz - 1) < 0.10, (prefix, speaker, ours_hz, ref_hz)
            checked += 1
    assert checked == 3  # two people side by side, one in bbaf2n


def test_a_dataloader_batch_holds_voice_on_the_face_grid(aligned: dict[str, Any]) -> None:
    """Audio-only and video sessions in one batch: voice (B, T, 25) on the steps of the face tensors, masks,
    functionals (B, 88); an item's voice equals the stage's stored frames averaged over each step."""
    from torch.utils.data import DataLoader

    import ether_prep
    from ether_prep.align.tensors import frame_means

    store = ether_prep.open_store(aligned["store"])
    ds = store.utterances()
    kinds = {str(s).split("-")[0] for s in ds.rows["session_id"]}
    assert "sample" in kinds and len(kinds) >= 3  # audio-only and video sessions together
    batch = next(iter(DataLoader(ds, batch_size=len(ds), collate_fn=ds.collate)))
    n, t = batch["speaker_face"].shape[:2]
    assert batch["voice"].shape == (n, t, 25) and batch["voice_mask"].shape == (n, t)
    assert batch["functionals"].shape == (n, 88) and batch["voice"].dtype == batch["speaker_face"].dtype
    assert not batch["voice_mask"][~batch["valid"]].any()  # padding holds no voice
    assert (batch["voice_mask"] & ~batch["voice_voiced"]).any() and batch["voice_voiced"].any()
    for i in range(len(ds)):
        item = ds[i]
        _, voice = _voice(aligned["store"], item["session_id"])
        grid, rate = item["time"], 1 / np.diff(item["time"]).mean()
        means, present = frame_means(np.asarray(voice.lld[...]), 0, 0.01, voice.attrs["frame_s"], grid, rate)
        assert np.array_equal(item["voice_mask"], present)
        assert np.allclose(item["voice"], np.nan_to_num(means), atol=1e-5)
        inside = (grid >= item["start"] + 0.05) & (grid <= item["end"] - 0.05)
        assert item["voice_mask"][inside].all()  # speech steps have voice frames
    pair = store.pairs()[0]
    assert pair["client"]["voice"].shape == (len(pair["client"]["time"]), 25)
    assert pair["client"]["functionals"].shape[1] == 88


def test_voice_columns_in_pandas_and_parquet(aligned: dict[str, Any]) -> None:
    import pyarrow.parquet as pq

    import ether_prep

    frame = ether_prep.open_store(aligned["store"]).to_pandas("utterances")
    for col in ("voice_f0_median_st", "voice_f0_sd_st", "voice_loudness_mean", "voice_arousal", "voice_mismatch",
                "voice_flags", "cue_channels"):
        assert col in frame.columns
    assert frame["voice_f0_median_st"].notna().all() and (frame["voice_loudness_mean"] > 0).all()
    table = pq.read_table(aligned["store"] / "utterances.parquet")
    assert table.column("voice_f0_median_st").to_pylist() == frame["voice_f0_median_st"].tolist()
    audio_only = frame[frame["session_id"].str.startswith("sample")]
    # The call's 8+ utterances give each speaker a baseline: arousal judged, cues from text and voice (no face).
    assert audio_only["voice_arousal"].between(0, 1).all()
    assert all(list(c) == ["text", "voice"] for c in audio_only["cue_channels"])
    assert audio_only["mismatch"].isna().all() and audio_only["voice_mismatch"].notna().all()
    video = frame[~frame["session_id"].str.startswith("sample")]  # one utterance per speaker: no baseline
    assert video["voice_arousal"].isna().all()
    assert np.allclose(video["voice_mismatch"].astype(float), video["mismatch"].astype(float), equal_nan=True)


def test_windows_give_the_same_arrays_as_the_whole_recording(aligned: dict[str, Any], tmp_path: Path) -> None:
    """The 30 s call computed as 3 windows of 10 s (inline), against the whole recording in one task."""
    import yaml
    import zarr

    from ether_prep.config import load_pipeline
    from ether_prep.runner import run_pipeline

    copy = tmp_path / "store.zarr"
    shutil.copytree(aligned["store"], copy)
    shipped = yaml.safe_load((ROOT / "pipelines.yaml").read_text(encoding="utf-8"))["pipelines"]["cpu"]["stages"]
    stages = [{**e, "resources": {"num_cpus": 1, "window_s": 10}} if e["stage"] == "voice" else e for e in shipped]
    cfg = pipeline_file(tmp_path, "cpu", stages)
    summary = run_pipeline(load_pipeline("cpu", cfg), aligned["raw"], copy, family=None, only=["voice"], force=True)
    assert summary.ok, summary.report()
    group, _ = _voice(copy, "sample")
    assert group.stage_group("voice").attrs["windows"]["count"] == 3
    sid = group.id
    whole = zarr.open_group(str(aligned["store"] / "sessions" / sid / "voice"), mode="r")
    split = zarr.open_group(str(copy / "sessions" / sid / "voice"), mode="r")
    for name in ("lld", "functionals", "steps/lld", "steps/mask", "utterances/f0_median_st",
                 "utterances/vocal_arousal"):
        assert np.array_equal(np.asarray(whole[name][...]), np.asarray(split[name][...]), equal_nan=True), name


def test_voice_of_an_older_align_run_is_left_out_until_rerun(aligned: dict[str, Any], tmp_path: Path) -> None:
    """Align recomputed on another grid without voice (`--only align`): the voice rows belong to the old grid, so
    items carry no voice (zeros in a batch) and the manifest's voice columns are null; rerunning voice brings them
    back on the new grid."""
    import ether_prep
    from ether_prep.runner import run_pipeline

    copy = tmp_path / "store.zarr"
    shutil.copytree(aligned["store"], copy)
    cpu = pipeline("cpu", align={"rate_hz": 5.0})
    summary = run_pipeline(cpu, aligned["raw"], copy, family=None, only=["align"])
    assert summary.ok, summary.report()
    store = ether_prep.open_store(copy)
    ds = store.utterances()
    assert all(ds[i]["voice"] is None and ds[i]["functionals"] is None for i in range(len(ds)))
    batch = ds.collate([ds[i] for i in range(len(ds))])
    assert not batch["voice_mask"].any() and not batch["functionals_present"].any()
    assert store.to_pandas("utterances")["voice_f0_median_st"].isna().all()
    summary = run_pipeline(cpu, aligned["raw"], copy, family=None, only=["voice"])
    assert summary.ok, summary.report()
    ds = ether_prep.open_store(copy).utterances()
    item = ds[0]
    assert item["voice"].shape == (len(item["time"]), 25) and np.allclose(np.diff(item["time"]), 0.2)
