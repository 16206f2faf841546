"""Issue 2: discovery, the audio stage, resume, failures, status, Ray, validate, fast --help (GPU placement on
Ray: tests/test_ray.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from ether_prep.cli import app
from ether_prep.config import load_config, load_pipeline
from ether_prep.errors import ConfigError
from ether_prep.runner import run_pipeline
from ether_prep.sessions import discover_sessions, session_id
from ether_prep.store import Store

from .conftest import DATA, ROOT, pipeline, pipeline_file


def _config(tmp: Path, block: object = 30.0, **audio: object) -> Path:
    """Pipeline ``audio``: the audio stage alone."""
    return pipeline_file(tmp, "audio", [{"stage": "audio", "params": {"sample_rate": 16000, "block_seconds": block,
                                                                        **audio}}])


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Video and audio-only recordings, nested folders, a name with spaces and non-ASCII letters,
    a truncated copy and a text file renamed .mp4."""
    raw = tmp_path_factory.mktemp("raw")
    nested = raw / "clinic Zürich" / "week 1"
    nested.mkdir(parents=True)
    shutil.copy(DATA / "video" / "bbaf2n.mpg", nested / "séance à deux.mpg")
    shutil.copy(DATA / "speech" / "jfk.flac", raw / "jfk.flac")
    shutil.copy(DATA / "speech" / "librispeech_1272-128104-0000.wav", nested / "client.wav")
    shutil.copy(DATA / "face" / "single_face.mp4", raw / "clinic Zürich" / "single_face.mp4")
    whole = (DATA / "face" / "WolfgangLanger_Pexels.mp4").read_bytes()
    (raw / "truncated.mp4").write_bytes(whole[: len(whole) // 10])
    (raw / "notes.mp4").write_text("this is a text file, not a video\n")
    (raw / "readme.txt").write_text("not a recording, ignored\n")
    return raw


@pytest.fixture(scope="module")
def extracted(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """One CLI run of the audio stage; returns (store, config, CliRunner result)."""
    tmp = tmp_path_factory.mktemp("run")
    config, store = _config(tmp), tmp / "out.zarr"
    result = CliRunner().invoke(app, ["extract", str(raw_dir), "--out", str(store), "--config", str(config),
                                      "--pipeline", "audio", "--executor", "inline", "--quiet"])
    return store, config, result


def test_session_ids_are_stable_and_safe() -> None:
    a = session_id("clinic Zürich/week 1/séance à deux.mpg")
    assert a == session_id("clinic Zürich/week 1/séance à deux.mpg")
    assert a.startswith("clinic_Zurich__week_1__seance_a_deux-")
    assert a.isascii() and "/" not in a
    assert session_id("a.mp4") != session_id("a.wav")


def test_discovery_is_recursive_and_typed(raw_dir: Path) -> None:
    sessions = {s.relpath: s for s in discover_sessions(raw_dir)}
    assert set(sessions) == {"clinic Zürich/single_face.mp4", "clinic Zürich/week 1/client.wav",
                             "clinic Zürich/week 1/séance à deux.mpg", "jfk.flac", "notes.mp4", "truncated.mp4"}
    assert sessions["jfk.flac"].kind == "audio"
    assert sessions["clinic Zürich/week 1/séance à deux.mpg"].kind == "video"


def test_extract_audio_stores_every_sample(extracted: tuple[Path, Path, object]) -> None:
    store_path, _, result = extracted
    assert result.exit_code == 1, result.output
    store = Store(store_path, mode="r")
    assert store.attrs["schema_version"] == 1 and store.attrs["version"]
    done = 0
    for sid in store.session_ids():
        group = store.session(sid)
        state = group.stage_state("audio")
        if group.info["relpath"] in ("truncated.mp4", "notes.mp4"):
            continue
        assert state.state == "done", (sid, state)
        probe = group.stage_group("audio").attrs["probe"]
        wave = group.array("audio", "waveform")
        assert wave.dtype == np.float32
        expected = probe["duration"] * 16000
        frame = 16000 / (probe["video_fps"] or 25.0)  # "within one frame"
        assert abs(wave.shape[0] - expected) <= frame, (sid, wave.shape[0], expected)
        # provenance on the output
        assert state.info["libraries"]["av"] and state.info["params"]["sample_rate"] == 16000
        assert state.fingerprint
        done += 1
    assert done == 4


def test_bad_files_fail_with_clear_messages(extracted: tuple[Path, Path, object]) -> None:
    store_path, config, result = extracted
    store = Store(store_path, mode="r")
    by_path = {store.session(s).info["relpath"]: store.session(s).stage_state("audio") for s in store.session_ids()}
    assert by_path["notes.mp4"].state == "failed"
    assert "notes.mp4" in by_path["notes.mp4"].error and "not a readable media file" in by_path["notes.mp4"].error
    assert by_path["truncated.mp4"].state == "failed"
    assert "truncated.mp4" in by_path["truncated.mp4"].error
    assert "truncated" in by_path["truncated.mp4"].error or "not a readable" in by_path["truncated.mp4"].error
    assert "notes.mp4" in result.output and "truncated.mp4" in result.output

    status = CliRunner().invoke(app, ["status", "--out", str(store_path), "--config", str(config), "-p", "audio"])
    assert status.exit_code == 0, status.output
    lines = status.output.splitlines()
    failed = [ln for ln in lines if " failed " in ln]
    assert len(failed) == 2 and any("notes.mp4" in ln for ln in failed)
    assert sum(" done " in f"{ln} " for ln in lines[:-1]) == 4
    assert "6 session(s), pipeline 'audio': 4 done, 2 failed" in status.output


def test_rerun_does_no_work_and_a_changed_parameter_reruns_the_stage(raw_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    first = run_pipeline(load_pipeline("audio", _config(tmp_path)), raw_dir, store)
    assert first.counts("audio") == {"done": 4, "failed": 2}
    started = {sid: Store(store).session(sid).stage_state("audio").info.get("started_at")
               for sid in Store(store).session_ids()}
    again = run_pipeline(load_pipeline("audio", _config(tmp_path)), raw_dir, store)
    assert again.counts("audio") == {"cached": 4, "failed": 2}  # bad files are retried, good ones not re-entered
    assert again.ran("audio") == [o.session_id for o in again.failed]
    for sid, t in started.items():
        state = Store(store).session(sid).stage_state("audio")
        if state.state == "done":
            assert state.info["started_at"] == t
    changed = run_pipeline(load_pipeline("audio", _config(tmp_path, block=7.5)), raw_dir, store)
    assert changed.counts("audio") == {"done": 4, "failed": 2}
    chunks = Store(store).session(session_id("jfk.flac")).array("audio", "waveform").chunks
    assert chunks == (int(7.5 * 16000),)


def test_ray_executor_gives_identical_arrays(ray_instance, raw_dir: Path, tmp_path: Path,
                                             extracted: tuple[Path, Path, object]) -> None:
    store_path = tmp_path / "ray.zarr"
    summary = run_pipeline(load_pipeline("audio", _config(tmp_path)), raw_dir, store_path, executor="ray", workers=2)
    assert summary.counts("audio") == {"done": 4, "failed": 2}
    inline, ray_ = Store(extracted[0], mode="r"), Store(store_path, mode="r")
    assert inline.session_ids() == ray_.session_ids()
    for sid in inline.session_ids():
        if inline.session(sid).stage_state("audio").state == "done":
            np.testing.assert_array_equal(inline.session(sid).array("audio", "waveform")[:],
                                          ray_.session(sid).array("audio", "waveform")[:])


def test_killed_run_leaves_no_stage_counted_as_done(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    long_wav = raw / "long.wav"  # ~10 minutes: long enough to be caught mid-stage
    subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "19", "-i", str(DATA / "diarization" / "sample.wav"),
                    "-c", "copy", str(long_wav)], check=True)
    config, store = _config(tmp_path, block=0.25), tmp_path / "k.zarr"
    cmd = [sys.executable, "-m", "ether_prep.cli", "extract", str(raw), "--out", str(store), "--config", str(config),
           "-p", "audio", "-x", "inline", "-q"]
    proc = subprocess.Popen(cmd, cwd=tmp_path)
    marker = store / "sessions" / session_id("long.wav") / "audio" / "zarr.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if marker.exists() and "running" in marker.read_text(errors="ignore"):
            break
        time.sleep(0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = Store(store).session(session_id("long.wav")).stage_state("audio")
    assert state.state == "running" and not state.complete
    resumed = run_pipeline(load_pipeline("audio", config), raw, store)
    assert resumed.counts("audio") == {"done": 1}
    wave = Store(store).session(session_id("long.wav")).array("audio", "waveform")
    assert wave.shape[0] == 20 * 30 * 16000


def test_validate_rejects_a_misspelt_key(tmp_path: Path) -> None:
    bad = pipeline_file(tmp_path, "mine", [{"stage": "audio", "parmas": {}}])
    result = CliRunner().invoke(app, ["validate", "--config", str(bad)])
    assert result.exit_code == 2
    assert "'parmas'" in result.output and "mine" in result.output and str(bad) in result.output
    with pytest.raises(ConfigError, match="unknown parameter"):
        load_pipeline("audio", _config(tmp_path, block=1, blok_seconds=1))
    with pytest.raises(ConfigError, match="unknown stage 'audoi'"):
        load_config(pipeline_file(tmp_path, "audio", [{"stage": "audoi"}]))
    with pytest.raises(ConfigError, match="block_seconds"):
        load_config(_config(tmp_path, block="fast"))


def test_shipped_pipelines_validate() -> None:
    pipelines = load_config(ROOT / "pipelines.yaml")
    assert {"default", "cpu"} <= set(pipelines)
    result = CliRunner().invoke(app, ["validate", "--config", str(ROOT / "pipelines.yaml")])
    assert result.exit_code == 0, result.output


def test_validate_checks_inputs_without_computing(raw_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(raw_dir), "--config", str(_config(tmp_path))])
    assert result.exit_code == 1
    assert "6 recording(s), 2 unreadable" in result.output


def test_help_is_fast_and_imports_no_torch() -> None:
    code = ("import sys, time; t = time.perf_counter()\n"
            "from ether_prep.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            "import json; print(json.dumps({'torch': 'torch' in sys.modules, 'ray': 'ray' in sys.modules,"
            " 's': time.perf_counter() - t}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "100"})
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts["torch"] is False and facts["ray"] is False
    assert "extract" in out.stdout and "align" in out.stdout


def test_store_layout_is_plain_zarr(extracted: tuple[Path, Path, object]) -> None:
    root = zarr.open_group(str(extracted[0]), mode="r")
    assert root.attrs["ether_prep"]["schema_version"] == 1
    sid = session_id("jfk.flac")
    assert root[f"sessions/{sid}/audio/waveform"].shape == (176000,)
    assert root[f"sessions/{sid}"].attrs["session"]["relpath"] == "jfk.flac"


def test_sessions_csv_attaches_roles_and_notes(raw_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(raw_dir / "clinic Zürich" / "week 1", raw)
    (raw / "sessions.csv").write_text("file,client,counsellor,notes\nclient.wav,SPEAKER_01,SPEAKER_00,intake\n")
    sessions = {s.relpath: s for s in discover_sessions(raw)}
    assert sessions["client.wav"].meta == {"client": "SPEAKER_01", "counsellor": "SPEAKER_00", "notes": "intake"}
    assert sessions["séance à deux.mpg"].meta == {}
    (raw / "sessions.csv").write_text("name,client\nclient.wav,A\n")
    with pytest.raises(ConfigError, match="needs a 'file' column"):
        discover_sessions(raw)


def test_resources_schedule_only_and_stay_out_of_the_fingerprint() -> None:
    """Workers' CPUs and GPUs never change a result, so they never make a stage stale; a batch size is a
    parameter of the stage that batches, and is fingerprinted like any other."""
    import dataclasses

    from ether_prep.runner import stage_fingerprint
    from ether_prep.spec import Resources

    spec = pipeline("cpu").stage("transcribe")
    assert "resources" not in spec.identity() and spec.params.batch_size == 8
    rescheduled = dataclasses.replace(spec, resources=Resources(num_cpus=8, num_gpus=1))
    assert stage_fingerprint(rescheduled, {}) == stage_fingerprint(spec, {})
    rebatched = dataclasses.replace(spec, params=dataclasses.replace(spec.params, batch_size=16))
    assert stage_fingerprint(rebatched, {}) != stage_fingerprint(spec, {})
