"""The runner over the audio stage: every sample stored with provenance, bad files failed with clear messages
while the rest completes, resume (nothing redone; a changed parameter redoes the stage), inline and Ray giving
the same arrays, a killed run leaving no stage counted as done, resources that only schedule, and a store that
is plain Zarr."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from ether_prep.cli import app
from ether_prep.config import load_pipeline
from ether_prep.runner import run_pipeline
from ether_prep.sessions import session_id
from ether_prep.stages.audio import read_audio
from ether_prep.stages.base import Stage
from ether_prep.store import Store, write_array

from . import trust_media as media
from .conftest import DATA, audio_config, pipeline


@pytest.fixture(scope="module")
def extracted(raw_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, object]:
    """One CLI run of the audio stage; returns (store, config, CliRunner result)."""
    tmp = tmp_path_factory.mktemp("run")
    config, store = audio_config(tmp), tmp / "out.zarr"
    result = CliRunner().invoke(app, ["extract", str(raw_dir), "--out", str(store), "--config", str(config),
                                      "--pipeline", "audio", "--executor", "inline", "--quiet"])
    return store, config, result


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
    first = run_pipeline(load_pipeline("audio", audio_config(tmp_path)), raw_dir, store)
    assert first.counts("audio") == {"done": 4, "failed": 2}
    started = {sid: Store(store).session(sid).stage_state("audio").info.get("started_at")
               for sid in Store(store).session_ids()}
    again = run_pipeline(load_pipeline("audio", audio_config(tmp_path)), raw_dir, store)
    assert again.counts("audio") == {"cached": 4, "failed": 2}  # bad files are retried, good ones not re-entered
    assert again.ran("audio") == [o.session_id for o in again.failed]
    for sid, t in started.items():
        state = Store(store).session(sid).stage_state("audio")
        if state.state == "done":
            assert state.info["started_at"] == t
    changed = run_pipeline(load_pipeline("audio", audio_config(tmp_path, block=7.5)), raw_dir, store)
    assert changed.counts("audio") == {"done": 4, "failed": 2}
    chunks = Store(store).session(session_id("jfk.flac")).array("audio", "waveform").chunks
    assert chunks == (int(7.5 * 16000),)


def test_ray_executor_gives_identical_arrays(ray_instance, raw_dir: Path, tmp_path: Path,
                                             extracted: tuple[Path, Path, object]) -> None:
    store_path = tmp_path / "ray.zarr"
    summary = run_pipeline(load_pipeline("audio", audio_config(tmp_path)), raw_dir, store_path, executor="ray",
                           workers=2)
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
    config, store = audio_config(tmp_path, block=0.25), tmp_path / "k.zarr"
    stage = store / "sessions" / session_id("long.wav") / "audio"

    def writing(_: int) -> bool:
        """The stage is marked running and has written some of its blocks."""
        try:
            running = json.loads((stage / "zarr.json").read_text())["attributes"]["stage"]["state"] == "running"
        except (OSError, ValueError, KeyError):  # not there yet, or being written
            return False
        return running and any((stage / "waveform" / "c").glob("*"))

    # Killed mid-write, with the run frozen inside the stage (holding the store lock), checked to have hit it live.
    media.run_and_kill(["extract", raw, "--out", store, "--config", config, "-p", "audio", "-x", "inline", "-q"],
                       writing, what="the audio stage running with blocks written", store=store)
    assert any((stage / "waveform" / "c").glob("*"))  # partial output on disk...
    state = Store(store).session(session_id("long.wav")).stage_state("audio")
    assert state.state == "running" and not state.complete  # ... and the stage not counted as done
    resumed = run_pipeline(load_pipeline("audio", config), raw, store)
    assert resumed.counts("audio") == {"done": 1}
    wave = Store(store).session(session_id("long.wav")).array("audio", "waveform")
    assert wave.shape[0] == 20 * 30 * 16000


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


def test_store_layout_is_plain_zarr(extracted: tuple[Path, Path, object]) -> None:
    root = zarr.open_group(str(extracted[0]), mode="r")
    assert root.attrs["ether_prep"]["schema_version"] == 1
    sid = session_id("jfk.flac")
    assert root[f"sessions/{sid}/audio/waveform"].shape == (176000,)
    assert root[f"sessions/{sid}"].attrs["session"]["relpath"] == "jfk.flac"


class _Level(Stage):
    """A toy stage reading the audio stage: the waveform's peak (one value)."""

    name, requires, needs_stream = "level", ("audio",), "audio"

    def run(self, session: Any, store: Any, out: Any) -> str | None:
        write_array(out, "peak", np.array([float(np.abs(read_audio(store).samples()).max(initial=0.0))]))
        return None


class _Both(_Level):
    """A toy stage reading two stages of which one reads the other (a diamond: audio -> level -> both)."""

    name, requires = "both", ("audio", "level")


def test_a_stage_reading_a_stage_and_its_upstream_is_planned_once(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from ether_prep.stages import STAGES

    from .conftest import pipeline_file

    monkeypatch.setitem(STAGES, "level", f"{__name__}:_Level")
    monkeypatch.setitem(STAGES, "both", f"{__name__}:_Both")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "jfk.flac").symlink_to(DATA / "speech" / "jfk.flac")
    stages = [{"stage": "audio", "params": {"sample_rate": 16000}}, {"stage": "level"}, {"stage": "both"}]
    pipe = load_pipeline("diamond", pipeline_file(tmp_path, "diamond", stages))
    assert run_pipeline(pipe, raw, tmp_path / "s.zarr").counts() == {"done": 3}
    # Everything cached at once: each stage settles the next in one go; the diamond's tip still runs once.
    assert run_pipeline(pipe, raw, tmp_path / "s.zarr").counts() == {"cached": 3}
