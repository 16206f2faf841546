"""One long recording transcribed in time windows (the transcribe stage's ``resources.window_s``).

A 54 s dialogue is built from whole shared clips of different speakers (LibriSpeech, jfk, GRID) with turn gaps
of 0.3-1.0 s and transcribed by the real offline ``cpu`` stages three ways: whole, in 3 windows one after
another (inline), and in 3 windows on 2 Ray actors. The cuts must fall in pauses, every sample must be in one
window, every clip's words must be found in place as well as whole, and the two windowed runs must agree array
for array. A 324 s call in 4 windows keeps every read turn; a steady chord (no pause to cut in) and a stereo
recording that is transcribed whole say so.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from ether_prep.config import load_pipeline
from ether_prep.runner import run_pipeline
from ether_prep.sessions import session_id
from ether_prep.store import SessionGroup, Store

from ..conftest import ROOT
from ..media import SR, read_aloud_call, speech_clip, words_in_place, write_wav
from ..ray_helpers import comparable_attrs

pytestmark = pytest.mark.slow

WINDOW_S = 15.0
ORDER = ["libri", "bbaf2n", "jfk", "lwbsza", "libri", "swwp2s", "jfk", "bbaf2n", "libri"]
GAPS_S = (0.5, 0.8, 0.3, 1.0)  # between turns, in turn
# Attributes that say how the work was cut (and where it ran), not what came out.
_HOW = {"windows", "stage"}


def _build(raw: Path) -> tuple[np.ndarray, list[tuple[str, float, float]]]:
    """The dialogue file; returns its samples and each clip's window (name, start, end): the turns."""
    clips = {name: speech_clip(name) for name in set(ORDER)}
    parts, turns, n = [], [], 0
    for i, name in enumerate(ORDER):
        if i:
            parts.append(np.zeros(round(GAPS_S[(i - 1) % len(GAPS_S)] * SR), dtype=np.float32))
            n += len(parts[-1])
        turns.append((name, n / SR, (n + len(clips[name])) / SR))
        parts.append(clips[name])
        n += len(clips[name])
    audio = np.concatenate(parts)
    write_wav(raw / "long_dialogue.wav", audio, SR)
    return audio, turns


def _config(tmp: Path, window_s: float | None) -> Path:
    """The cpu pipeline's audio and transcribe stages, one CPU per worker (two workers on this machine)."""
    shipped = yaml.safe_load((ROOT / "pipelines.yaml").read_text())["pipelines"]["cpu"]["stages"]
    stages = [{**s, "resources": {"num_cpus": 1, **({"window_s": window_s} if s["stage"] == "transcribe" else {})}}
              for s in shipped if s["stage"] in ("audio", "transcribe")]
    path = tmp / f"speech_{window_s}.yaml"
    path.write_text(yaml.safe_dump({"version": 1, "pipelines": {"speech": {"stages": stages}}}))
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict:
    """The recording, its turns, and its transcription whole (inline), in windows inline and on 2 Ray actors."""
    tmp = tmp_path_factory.mktemp("split_speech")
    raw = tmp / "raw"
    raw.mkdir()
    audio, turns = _build(raw)
    out: dict = {"audio": audio, "turns": turns, "tmp": tmp}
    for name, window_s, executor in (("whole", None, "inline"), ("inline", WINDOW_S, "inline"),
                                     ("ray", WINDOW_S, "ray")):
        if executor == "ray":
            request.getfixturevalue("ray_instance")
        summary = run_pipeline(load_pipeline("speech", _config(tmp, window_s)), raw, tmp / f"{name}.zarr",
                               executor=executor)
        assert summary.ok, summary.report()
        out[name] = Store(tmp / f"{name}.zarr", mode="r").session(session_id("long_dialogue.wav"))
    return out


def _words(group: SessionGroup) -> dict[str, np.ndarray]:
    return group.read_table("transcribe", "words")


def test_cuts_fall_in_pauses_and_every_sample_is_in_one_window(runs: dict) -> None:
    audio, turns = runs["audio"], runs["turns"]
    windows = dict(runs["inline"].stage_group("transcribe").attrs)["windows"]
    assert windows["used"] and windows["count"] == 3 and len(windows["cuts"]) == 2
    cuts = [c["at"] for c in windows["cuts"]]
    duration = len(audio) / SR
    # Near the even cut points (within a quarter window), in time order.
    assert all(abs(c - k * duration / 3) <= duration / 12 for k, c in enumerate(cuts, 1))
    speech_rms = float(np.sqrt(np.mean(np.square(audio[np.abs(audio) > 0]))))
    for cut in windows["cuts"]:
        around = audio[round((cut["at"] - 0.1) * SR): round((cut["at"] + 0.1) * SR)]
        # In a pause: the 0.2 s around the cut is quiet, whether a gap between turns or a pause inside one.
        assert float(np.sqrt(np.mean(np.square(around)))) < 0.1 * speech_rms, cut
        assert cut["pause_s"] >= 0.3
    # Every sample in exactly one window: the parts joined start where the one before stopped (the join checks
    # it, sample for sample); here, no word crosses a cut and none is doubled on either side of one.
    w = _words(runs["inline"])
    for cut in cuts:
        assert not ((w["start"] < cut) & (w["end"] > cut)).any()
    assert (np.diff(w["start"]) >= 0).all() and (w["end"][:-1] <= w["start"][1:] + 1e-9).all()
    assert set(windows["languages"]) == {"en"} and "parts" not in Store(runs["tmp"] / "inline.zarr").root
    print(f"\nwindows: cuts {windows['cuts']} of {duration:.1f} s; turns "
          + ", ".join(f"{n} {a:.1f}-{b:.1f}" for n, a, b in turns))


def test_every_clip_is_found_in_place_as_well_as_whole(runs: dict) -> None:
    rows = {name: words_in_place(_words(runs[name]), runs["turns"]) for name in ("whole", "inline")}
    share = {name: sum(r["hits"] for r in x) / sum(r["n"] for r in x) for name, x in rows.items()}
    print(f"\nwords in place: whole {share['whole']:.1%}, windows {share['inline']:.1%}")
    for whole, split in zip(rows["whole"], rows["inline"], strict=True):
        print(f"  {whole['clip']:7s} {whole['start']:5.1f}-{whole['end']:5.1f} s  whole {whole['hits']}/{whole['n']}"
              f"  windows {split['hits']}/{split['n']}  [{split['text']}]")
        assert split["hits"] >= whole["hits"] - 1, (whole, split)  # a clip's words are not lost to a cut
        if split["clip"] in ("libri", "jfk"):
            assert split["errors"] <= whole["errors"] + 1, (whole, split)  # at most one word more misheard
    assert share["inline"] >= max(0.85, share["whole"] - 0.02)
    a, b = (runs[name].stage_group("transcribe").attrs for name in ("whole", "inline"))
    # The speech found, and how much of it has words, as whole; windows' attrs are summed.
    assert b["speech_seconds"] == pytest.approx(a["speech_seconds"], rel=0.03)
    assert b["speech_coverage"] >= a["speech_coverage"] - 0.02 and b["speech_coverage"] >= 0.9
    speech = runs["inline"].read_table("transcribe", "speech")
    assert b["speech_seconds"] == pytest.approx(float(np.sum(speech["end"] - speech["start"])))
    assert (np.diff(speech["start"]) > 0).all() and (speech["end"][:-1] <= speech["start"][1:]).all()
    n_words = [len(_words(runs[name])["text"]) for name in ("whole", "inline")]
    print(f"speech {a['speech_seconds']:.2f} / {b['speech_seconds']:.2f} s, coverage {a['speech_coverage']:.3f} / "
          f"{b['speech_coverage']:.3f}, words {n_words[0]} / {n_words[1]}")


def test_windows_on_two_ray_actors_equal_windows_inline(runs: dict) -> None:
    ray_group, inline_group = (runs[name].stage_group("transcribe") for name in ("ray", "inline"))
    workers = dict(ray_group.attrs)["windows"]["workers"]
    assert len({w["pid"] for w in workers}) >= 2, workers  # the windows really ran on different actors
    arrays = {name: dict(g.arrays()) for name, g in (("ray", ray_group), ("inline", inline_group))}
    tables = {name: dict(g.groups()) for name, g in (("ray", ray_group), ("inline", inline_group))}
    assert sorted(tables["ray"]) == sorted(tables["inline"]) == ["speech", "words"]
    for table in ("speech", "words"):
        x, y = (runs[name].read_table("transcribe", table) for name in ("ray", "inline"))
        assert sorted(x) == sorted(y)
        for column in x:
            assert np.array_equal(x[column], y[column]), (table, column)
    assert sorted(arrays["ray"]) == sorted(arrays["inline"])
    attrs = [{k: v for k, v in comparable_attrs(dict(g.attrs)).items() if k not in _HOW}
             for g in (ray_group, inline_group)]
    assert attrs[0] == attrs[1]
    assert [c["at"] for c in dict(ray_group.attrs)["windows"]["cuts"]] == \
        [c["at"] for c in dict(inline_group.attrs)["windows"]["cuts"]]


def test_window_s_is_in_the_fingerprint_of_a_session_it_splits(runs: dict) -> None:
    """Windows are decoded apart, so ``window_s`` can change words: it reruns transcription, not audio."""
    states = {name: {stage: runs[name].stage_state(stage).fingerprint for stage in ("audio", "transcribe")}
              for name in ("whole", "inline", "ray")}
    assert states["whole"]["audio"] == states["inline"]["audio"] == states["ray"]["audio"]
    assert states["whole"]["transcribe"] != states["inline"]["transcribe"] == states["ray"]["transcribe"]


def test_a_cut_without_a_pause_and_a_recording_that_is_not_split_say_so(tmp_path: Path) -> None:
    """A steady chord has no pause to cut in: the cuts still fall (every sample in one window), and the note says
    a word there may be cut. A stereo recording of two speakers with ``channels: auto`` is transcribed whole
    (its channels apart), and the attrs say why."""
    import shutil

    from ..conftest import DATA
    from ..trust_media import music

    raw = tmp_path / "raw"
    raw.mkdir()
    music(raw / "chord.wav", seconds=10.0)
    shutil.copy(DATA / "speech" / "stereo_two_speakers.wav", raw / "stereo.wav")
    summary = run_pipeline(load_pipeline("speech", _config(tmp_path, 2.5)), raw, tmp_path / "s.zarr", executor="inline")
    assert summary.ok, summary.report()
    store = Store(tmp_path / "s.zarr", mode="r")
    chord = store.session(session_id("chord.wav"))
    windows = dict(chord.stage_group("transcribe").attrs)["windows"]
    assert windows["used"] and windows["count"] == 4
    assert all(c["pause_s"] == 0.0 for c in windows["cuts"])
    assert "3 window cut(s) fall in a pause under 0.3 s" in chord.stage_state("transcribe").note
    stereo = store.session(session_id("stereo.wav")).stage_group("transcribe").attrs
    assert stereo["channels"] == "split" and not stereo["windows"]["used"]
    assert "channels: auto on a 2-channel recording" in stereo["windows"]["why"]


def test_a_five_minute_call_in_windows_keeps_every_read_turn(tmp_path: Path) -> None:
    """324 s: the two-party call, LibriSpeech and jfk in turn (0.3-1 s apart, 19 turns), in 4 windows of ~75 s
    (bench speech-windows). In the third window whisperx gave "is the [apostle of the middle classes and we are
    glad] to welcome" as one 2.3 s "the": the guard must cut it back and re-decode what it hid."""
    raw = tmp_path / "raw"
    raw.mkdir()
    turns = read_aloud_call(raw / "call.wav")
    summary = run_pipeline(load_pipeline("speech", _config(tmp_path, 75.0)), raw, tmp_path / "s.zarr",
                           executor="inline")
    assert summary.ok, summary.report()
    group = Store(tmp_path / "s.zarr", mode="r").session(session_id("call.wav"))
    assert dict(group.stage_group("transcribe").attrs)["windows"]["count"] == 4
    rows = words_in_place(_words(group), turns)
    for r in rows:
        print(f"  {r['clip']:5s} {r['start']:6.1f}-{r['end']:6.1f} s  {r['hits']}/{r['n']}  [{r['text']}]")
        assert r["hits"] >= r["n"] - 2, r  # an ASR slip ("a puzzle" for "apostle"), never a lost stretch
    assert sum(r["hits"] for r in rows) / sum(r["n"] for r in rows) >= 0.97
