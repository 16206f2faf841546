"""One session clock: every stream's start read from the container, the waveform and face times on
one axis, so that a recording whose audio stream starts 1.4 s after its video (edit lists: cameras, OBS,
screen recorders) gives the words and links its in-sync copy gives. Also: cover art is no video (an MP3 with
its album picture is an audio-only session), other audio tracks are noted and selectable, qc flags audio that
ends well before the recording does, and discovery finds the common extensions, lists the files it does not
read and does not follow folder links out of the raw folder.

Media are built here with ffmpeg from the shared GRID side-by-side clip (two people taking turns), LibriSpeech
and JFK; one cpu pipeline run over the clock cases is shared by the tests of this module."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr

from ether_prep.adapters import pyav
from ether_prep.sessions import probe_session, scan, session_id
from ether_prep.store import read_table

from ..conftest import GRID2, audio_config, pipeline, pipeline_file
from ..trust_media import JFK, LIBRI, ffmpeg

LEAD_S = 1.5  # silence (and a frozen first frame) before the in-sync copy's speech
DELAY_S = 1.4  # where the delayed copy's audio stream starts
FPS = 25.0
FRAME_S = 1.0 / FPS


def _ffprobe(path: Path) -> list[dict]:
    """Each stream as ffprobe reads it: codec_type, start_time, disposition.attached_pic."""
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries",
                          "stream=codec_type,start_time:stream_disposition=attached_pic",
                          "-of", "json", str(path)], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["streams"]


def _ffprobe_starts(path: Path) -> dict[str, float]:
    """Each (non cover art) stream's start_time (s): the check that a built file really is delayed."""
    return {s["codec_type"]: float(s["start_time"]) for s in _ffprobe(path) if not s["disposition"]["attached_pic"]}


def in_sync(dst: Path) -> None:
    """The two-person clip with LEAD_S of a still first frame and silence before it: speech from ~2 s on."""
    ffmpeg("-i", GRID2, "-vf", f"tpad=start_duration={LEAD_S}:start_mode=clone",
           "-af", f"adelay={int(LEAD_S * 1000)}:all=1", "-c:v", "libx264", "-preset", "ultrafast", "-g", "25",
           "-c:a", "aac", dst)


def audio_late(dst: Path, reference: Path, tmp: Path) -> None:
    """``reference`` with its audio stream starting DELAY_S after the video, as an edit list makes it: the same
    video packets, the audio from DELAY_S on (only silence is cut) muxed at DELAY_S. Same speech, same times."""
    cut = tmp / "from_delay.wav"
    ffmpeg("-ss", DELAY_S, "-i", reference, "-vn", "-c:a", "pcm_s16le", cut)
    ffmpeg("-i", reference, "-itsoffset", DELAY_S, "-i", cut, "-map", "0:v", "-map", "1:a", "-c:v", "copy",
           "-c:a", "aac", dst)


def video_late(dst: Path, reference: Path) -> None:
    """``reference``'s packets with the video stream starting DELAY_S after the audio."""
    ffmpeg("-itsoffset", DELAY_S, "-i", reference, "-i", reference, "-map", "0:v", "-map", "1:a", "-c", "copy", dst)


def cover_art(dst: Path, tmp: Path) -> None:
    """LibriSpeech as an MP3 with an embedded album picture (an ``attached_pic`` video stream)."""
    picture = tmp / "cover.jpg"
    ffmpeg("-f", "lavfi", "-i", "testsrc=s=300x300:d=1", "-frames:v", "1", picture)
    ffmpeg("-i", LIBRI, "-i", picture, "-map", "0", "-map", "1", "-c:a", "libmp3lame", "-c:v", "copy",
           "-disposition:v", "attached_pic", "-id3v2_version", "3", dst)


@pytest.fixture(scope="module")
def clocks(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The in-sync copy, the audio-late copy and the cover-art MP3 through the cpu pipeline (extract, align, qc)."""
    from ether_prep.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("clocks")
    raw = tmp / "raw"
    raw.mkdir()
    in_sync(raw / "insync.mp4")
    audio_late(raw / "delayed.mp4", raw / "insync.mp4", tmp)
    cover_art(raw / "cover.mp3", tmp)
    store = tmp / "store.zarr"
    summary = run_pipeline(pipeline("cpu"), raw, store, family=None)
    assert summary.ok, summary.report()
    root = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)
    groups = {sid.split("-")[0]: root["sessions"][sid] for sid in root["sessions"].group_keys()}
    return {"raw": raw, "store": store, "groups": groups, "summary": summary, "tmp": tmp}


def _table(g: zarr.Group, path: str) -> dict[str, np.ndarray]:
    stage, name = path.split("/")
    return read_table(g[stage], name)


@pytest.mark.slow
def test_the_delayed_copy_really_starts_its_audio_late(clocks: dict) -> None:
    starts = _ffprobe_starts(clocks["raw"] / "delayed.mp4")
    assert starts["video"] == 0.0 and DELAY_S - 0.1 <= starts["audio"] <= DELAY_S + 0.01, starts
    probe = pyav.probe(clocks["raw"] / "delayed.mp4")
    assert probe.video_start == 0.0 and probe.audio_start == pytest.approx(starts["audio"], abs=1e-3)
    assert probe.origin == 0.0
    audio = dict(clocks["groups"]["delayed"]["audio"].attrs)
    assert audio["start_offset"] == pytest.approx(starts["audio"], abs=1e-3)
    assert audio["padded_samples"] == round(audio["start_offset"] * audio["sample_rate"])
    wave = clocks["groups"]["delayed"]["audio/waveform"][...]
    assert not wave[: audio["padded_samples"]].any()  # leading silence
    # Both waveforms carry the same signal at the same session times (only AAC coding differs).
    ref = clocks["groups"]["insync"]["audio/waveform"][...]
    n = min(len(ref), len(wave))
    assert abs(len(ref) - len(wave)) < 0.1 * audio["sample_rate"]
    lo = int((LEAD_S + 0.3) * audio["sample_rate"])
    assert np.corrcoef(ref[lo:n], wave[lo:n])[0, 1] > 0.98


@pytest.mark.slow
def test_words_equal_the_in_sync_copys_within_a_frame(clocks: dict) -> None:
    ref, late = (_table(clocks["groups"][k], "utterances/words") for k in ("insync", "delayed"))
    assert len(ref["text"]) >= 4
    audio = dict(clocks["groups"]["delayed"]["audio"].attrs)
    # speech never leaves the shared time axis: every word inside the audio stream's own span
    assert (late["start"] >= audio["start_offset"] - 1e-6).all() and (late["end"] <= audio["duration"] + 1e-6).all()
    matched = 0
    for text, start, end in zip(ref["text"], ref["start"], ref["end"], strict=True):
        near = np.flatnonzero((np.abs(late["start"] - start) <= FRAME_S) & (np.abs(late["end"] - end) <= FRAME_S))
        matched += any(str(late["text"][i]).lower() == str(text).lower() for i in near)
    assert matched >= 0.8 * len(ref["text"]), (list(zip(ref["text"], ref["start"], strict=True)),
                                                list(zip(late["text"], late["start"], strict=True)))


@pytest.mark.slow
def test_face_links_equal_the_in_sync_copys(clocks: dict) -> None:
    g_ref, g_late = clocks["groups"]["insync"], clocks["groups"]["delayed"]
    # The same video packets on the same clock: the same frames and faces.
    assert np.array_equal(g_ref["face/time"][...], g_late["face/time"][...])
    assert g_late["face"].attrs["start_offset"] == 0.0
    words = {k: _table(clocks["groups"][k], "utterances/words") for k in ("insync", "delayed")}

    def turn_of_person(g: zarr.Group, w: dict[str, np.ndarray]) -> dict[int, float]:
        """Each linked person -> the middle time of the words of the speaker linked to it."""
        links = _table(g, "align/links")
        out = {}
        for person, speaker in zip(links["person"], links["speaker"], strict=True):
            said = w["speaker"] == speaker
            if speaker and said.any():
                out[int(person)] = float(np.median((w["start"][said] + w["end"][said]) / 2))
        return out

    ref, late = turn_of_person(g_ref, words["insync"]), turn_of_person(g_late, words["delayed"])
    assert len(ref) == 2, ref  # both persons linked in the in-sync copy
    assert ref.keys() == late.keys()
    for person in ref:
        assert abs(ref[person] - late[person]) <= 0.5, (ref, late)  # the same turn, not the other speaker's
    # every utterance shows the same person as speaker in both copies
    utts = {k: _table(clocks["groups"][k], "align/utterances") for k in ("insync", "delayed")}
    for start, person in zip(utts["insync"]["start"], utts["insync"]["speaker_person"], strict=True):
        i = int(np.argmin(np.abs(utts["delayed"]["start"] - start)))
        assert abs(utts["delayed"]["start"][i] - start) <= FRAME_S
        assert utts["delayed"]["speaker_person"][i] == person
    qc = dict(g_late["qc"].attrs)
    assert qc["metrics"]["audio_missing_s"] < 0.1


@pytest.mark.slow
def test_cover_art_mp3_is_an_audio_only_session(clocks: dict) -> None:
    import pyarrow.parquet as pq

    g = clocks["groups"]["cover"]
    streams = [(s["codec_type"], s["disposition"]["attached_pic"]) for s in _ffprobe(clocks["raw"] / "cover.mp3")]
    assert streams == [("audio", 0), ("video", 1)]  # the picture is there, as cover art
    probe = dict(g["audio"].attrs)["probe"]
    assert probe["cover_art"] == 1 and not probe["has_video"]
    status = {o.session_id.split("-")[0] + "/" + o.stage: o.state for o in clocks["summary"].outcomes}
    assert status["cover/face"] == "skipped"
    assert "only cover art" in next(o.message for o in clocks["summary"].outcomes
                                    if o.session_id.startswith("cover-") and o.stage == "face")
    assert all(status[f"cover/{s}"] in ("done", "cached") for s in ("audio", "transcribe", "utterances", "align",
                                                                    "qc"))
    manifest = pq.read_table(clocks["store"] / "utterances.parquet").to_pydict()
    ids = [s for s in manifest["session_id"] if s.startswith("cover-")]
    assert ids, "the cover-art MP3's speech is in the manifest"
    assert len(_table(g, "utterances/words")["text"]) >= 8


@pytest.mark.slow
def test_a_video_that_starts_late_has_later_face_times(clocks: dict) -> None:
    """The late-video case at the decoder: times offset by the video's start, planned equal to decoded."""
    reference = clocks["raw"] / "insync.mp4"
    late = clocks["tmp"] / "video_late.mp4"
    video_late(late, reference)
    starts = _ffprobe_starts(late)
    assert starts["audio"] == 0.0 and starts["video"] == pytest.approx(DELAY_S, abs=1e-3)
    probe = pyav.probe(late)
    assert probe.video_start == pytest.approx(DELAY_S, abs=1e-3) and probe.origin == 0.0
    ref_times = np.array([f.time for f in pyav.iter_video_frames(reference)])
    stats = pyav.DecodeStats()
    late_times = np.array([f.time for f in pyav.iter_video_frames(late, stats=stats)])
    np.testing.assert_allclose(late_times, ref_times + starts["video"], atol=1e-9)
    assert stats.start == pytest.approx(DELAY_S, abs=1e-3)
    for path in (late, clocks["raw"] / "delayed.mp4"):
        plan = pyav.plan_video_frames(path, analysis_fps=10.0)
        assert plan is not None
        decoded = [f.time for f in pyav.iter_video_frames(path, analysis_fps=10.0)]
        assert np.array_equal(plan.time, decoded)  # bit for bit, as windows need
        planned = [f.time for f in pyav.iter_planned_frames(path, plan, 5, 12)]
        assert planned == decoded[5:12]


@pytest.mark.slow
def test_second_audio_track_is_noted_and_selectable(tmp_path: Path) -> None:
    from ether_prep.config import load_pipeline
    from ether_prep.runner import run_pipeline

    raw = tmp_path / "raw"
    raw.mkdir()
    ffmpeg("-i", LIBRI, "-i", JFK, "-map", "0:a", "-map", "1:a", "-c:a", "flac", "-metadata:s:a:1",
           "title=Interviewer", raw / "two_tracks.mka")
    sid = session_id("two_tracks.mka")
    waves, notes = {}, {}
    for track in (0, 1):
        store = tmp_path / f"t{track}.zarr"
        summary = run_pipeline(load_pipeline("audio", audio_config(tmp_path, track=track)), raw, store)
        assert summary.ok, summary.report()
        g = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)["sessions"][sid]["audio"]
        waves[track], notes[track] = g["waveform"][...], next(o.message for o in summary.outcomes if o.stage == "audio")
        assert g.attrs["track"] == track and len(g.attrs["audio_tracks"]) == 2
    assert "2 audio tracks: track 0 read" in notes[0] and "1 (flac, 2 ch, Interviewer)" in notes[0]
    assert "track 1 read" in notes[1]
    assert len(waves[0]) / 16000 == pytest.approx(5.855, abs=0.05)  # LibriSpeech
    assert len(waves[1]) / 16000 == pytest.approx(11.0, abs=0.05)  # JFK


def test_discovery_finds_common_extensions_and_lists_the_rest(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "cam").mkdir(parents=True)
    ffmpeg("-i", GRID2, "-t", "1", "-c:v", "mpeg2video", "-c:a", "mp2", "-f", "mpegts", raw / "cam" / "00001.MTS")
    ffmpeg("-i", GRID2, "-t", "1", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-f", "mpegts",
           raw / "screen.ts")
    ffmpeg("-i", GRID2, "-t", "1", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-f", "mp4",
           raw / "phone.m4v")
    ffmpeg("-i", LIBRI, "-t", "1", "-c:a", "libopus", raw / "voice.opus")
    ffmpeg("-i", LIBRI, "-t", "1", "-c:a", "aac", "-f", "adts", raw / "memo.aac")
    ffmpeg("-i", LIBRI, "-t", "1", "-c:a", "libvorbis", "-f", "ogg", raw / "memo.oga")
    (raw / "consent form.docx").write_bytes(b"PK\x03\x04 not a recording")
    (raw / "sessions.csv").write_text("file,client\nscreen.ts,SPEAKER_00\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    ffmpeg("-i", LIBRI, "-t", "1", outside / "other.wav")
    (raw / "everything").symlink_to("/", target_is_directory=True)
    (raw / "other clinic").symlink_to(outside, target_is_directory=True)
    (raw / "cam again").symlink_to(raw / "cam", target_is_directory=True)  # inside: followed (once)
    found = scan(raw)
    names = sorted(s.relpath for s in found.sessions)
    assert names == ["cam/00001.MTS", "memo.aac", "memo.oga", "phone.m4v", "screen.ts", "voice.opus"]
    kinds = {s.relpath: s.kind for s in found.sessions}
    assert kinds["cam/00001.MTS"] == kinds["screen.ts"] == kinds["phone.m4v"] == "video"
    assert kinds["voice.opus"] == kinds["memo.aac"] == kinds["memo.oga"] == "audio"
    notes = "\n".join(found.notes)
    assert "everything: a folder link to /, outside the raw folder" in notes and "not followed" in notes
    assert f"other clinic: a folder link to {outside}" in notes
    assert "consent form.docx" in notes and "sessions.csv" not in notes
    assert "cam again: leads back to" in notes
    for session in found.sessions:  # every one of them really is readable
        probed = probe_session(session).probe
        assert probed is not None and probed.has_audio and probed.has_video == (session.kind == "video")


def test_validate_says_what_it_skipped(tmp_path: Path) -> None:
    from ..trust_media import cli

    raw = tmp_path / "raw"
    raw.mkdir()
    ffmpeg("-i", LIBRI, "-t", "1", "-c:a", "libopus", raw / "voice.opus")
    (raw / "notes.pages").write_bytes(b"not a recording")
    (raw / "root").symlink_to("/", target_is_directory=True)
    result = cli("validate", raw)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "notes.pages" in out and "outside the raw folder" in out and "1 recording" in out, out


def test_qc_flags_audio_much_shorter_than_the_probe(tmp_path: Path) -> None:
    """The check on what the stages stored: a recording whose decoded audio ends 3 s before its probe's end."""
    from ether_prep.records import MediaProbe, Session
    from ether_prep.stages.qc import QcParams, quality_checks, session_metrics
    from ether_prep.store import Store, write_table

    probe = MediaProbe(duration=6.0, has_audio=True, has_video=True, format_name="mov,mp4")
    session = Session("short", tmp_path / "short.mp4", "short.mp4", "video", {}, probe)
    group = Store(tmp_path / "s.zarr").session("short", session.to_dict())
    out = group.begin_stage("audio", {"stage": "audio"})
    out.attrs.update({"probe": probe.to_dict(), "sample_rate": 16000, "n_samples": 48000, "duration": 3.0})
    group.finish_stage("audio", "done", "fp")
    aligned = group.begin_stage("align", {"stage": "align"})  # qc runs after align; nothing aligned here
    for name, dim in (("utterances", "utterance"), ("pairs", "pair"), ("links", "link")):
        write_table(aligned, name, {"start": np.zeros(0), "end": np.zeros(0)}, dim=dim)
    group.finish_stage("align", "done", "fp")
    metrics = session_metrics(session, group)
    assert metrics["audio_missing_s"] == pytest.approx(3.0)
    checks = {c.check: c for c in quality_checks(metrics, QcParams())}
    assert not checks["audio_complete"].ok
    assert "audio_complete: audio_missing_s 3 > 1" in checks["audio_complete"].reason
    metrics["audio_missing_s"] = 0.05
    assert {c.check: c for c in quality_checks(metrics, QcParams())}["audio_complete"].ok


def _face_config(tmp: Path, window_s: float | None) -> Path:
    return pipeline_file(tmp, "face", [{
        "stage": "face", "backend": "mediapipe", "model": "face_landmarker.task",
        "params": {"analysis_fps": 5.0, "identity": "off"},
        "resources": {"num_cpus": 1, "window_s": window_s}}])


@pytest.mark.slow
def test_a_late_video_in_windows_equals_it_whole(tmp_path: Path) -> None:
    """Windows (resources.window_s) plan the late video's frames on the session clock as the whole decode has
    them: the same face times and arrays, the first frame at the video's start."""
    from ether_prep.config import load_pipeline
    from ether_prep.runner import run_pipeline

    raw = tmp_path / "raw"
    raw.mkdir()
    in_sync(tmp_path / "insync.mp4")
    video_late(raw / "late.mp4", tmp_path / "insync.mp4")
    sid = session_id("late.mp4")
    faces = {}
    for window_s in (None, 3.0):
        store = tmp_path / f"w{window_s}.zarr"
        summary = run_pipeline(load_pipeline("face", _face_config(tmp_path, window_s)), raw, store)
        assert summary.ok, summary.report()
        faces[window_s] = zarr.open_group(str(store), mode="r", zarr_format=3,
                                          use_consolidated=False)["sessions"][sid]["face"]
    whole, split = faces[None], faces[3.0]
    assert split.attrs["windows"]["used"] and split.attrs["windows"]["count"] >= 2
    times = whole["time"][...]
    assert times[0] == pytest.approx(DELAY_S, abs=1e-3) and whole.attrs["start_offset"] == times[0]
    for name, arr in whole.arrays():
        assert np.array_equal(arr[...], split[name][...], equal_nan=arr.dtype.kind == "f"), name
    assert split.attrs["start_offset"] == whole.attrs["start_offset"]
    assert split.attrs["session_origin"] == whole.attrs["session_origin"] == 0.0
