"""Streaming executors. Ray tests share one local Ray instance (conftest) with two declared GPUs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ether_prep.cli import app
from ether_prep.config import load_pipeline
from ether_prep.executors import InlineExecutor, RayExecutor, make_executor
from ether_prep.runner import run_pipeline
from ether_prep.sessions import discover_sessions, probe_session, session_id
from ether_prep.store import Store
from ether_prep.worker import Task

from ..conftest import DATA, pipeline, pipeline_file
from ..ray_helpers import registered_test_stages, store_digest

_AUDIO = {"stage": "audio", "resources": {"num_cpus": 1}}
_GPU_HALF_CPU = {"num_cpus": 0.5, "num_gpus": 1}
PIPELINES = {
    "audio": [_AUDIO],
    "nap": [_AUDIO, {"stage": "nap", "params": {"seconds_per_session": 1.0}, "resources": {"num_cpus": 1}}],
    "gpu": [_AUDIO, {"stage": "face_nap", "params": {"seconds_per_session": 1.0}, "resources": _GPU_HALF_CPU},
            {"stage": "asr_nap", "params": {"seconds_per_session": 1.0}, "resources": _GPU_HALF_CPU}],
}
# Repeat the placement test (e.g. ETHER_PREP_REPEAT=20) to check that it holds every time.
REPEAT = int(os.environ.get("ETHER_PREP_REPEAT", "1"))


@pytest.fixture(scope="module")
def test_stages() -> None:
    with registered_test_stages():
        yield


def _pipeline(tmp: Path, name: str, nap: float = 1.0) -> Path:
    """pipelines.yaml holding pipeline ``name`` only (a process without the test stages can read it)."""
    return pipeline_file(tmp, name, PIPELINES[name], **({"nap": {"seconds_per_session": nap}} if name == "nap" else {}))


def _raw(tmp: Path, names: list[str], clip: str = "speech/jfk.flac") -> Path:
    raw = tmp / "raw"
    raw.mkdir()
    for name in names:
        shutil.copy(DATA / clip, raw / name)
    return raw


@pytest.mark.parametrize("round_", range(REPEAT))
def test_gpu_actors_get_a_gpu_of_their_own(ray_instance, test_stages: None, tmp_path: Path, round_: int) -> None:
    """face_nap and asr_nap each ask for a whole GPU of the two declared: every actor Ray makes for them gets
    exactly one, and no two actors alive at the same time share one. Placement is read where each actor is
    made (its CUDA_VISIBLE_DEVICES once it is up), whichever actor then got work."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name, clip in (("a.flac", "speech/jfk.flac"), ("b.wav", "speech/librispeech_1272-128104-0000.wav"),
                       ("c.flac", "speech/jfk.flac")):
        shutil.copy(DATA / clip, raw / name)
    store = tmp_path / "g.zarr"
    summary = run_pipeline(load_pipeline("gpu", _pipeline(tmp_path, "gpu")), raw, store, executor="ray")
    assert summary.ok, summary.report()
    assert summary.counts("face_nap") == {"done": 3} and summary.counts("asr_nap") == {"done": 3}
    gpu_actors = [a for a in summary.actors if a.stage in ("face_nap", "asr_nap") and a.devices is not None]
    assert {a.stage for a in gpu_actors} == {"face_nap", "asr_nap"}
    assert all(a.devices in ("0", "1") for a in gpu_actors), summary.placements
    for i, a in enumerate(gpu_actors):
        for b in gpu_actors[i + 1:]:
            if a.created < b.ended and b.created < a.ended:  # alive at the same time
                assert a.devices != b.devices, (a, b)
    got = Store(store, mode="r")
    for sid in got.session_ids():
        for stage in ("face_nap", "asr_nap"):
            devices = got.session(sid).stage_state(stage).info["worker"]["cuda_visible_devices"]
            assert devices in summary.placements[stage]  # provenance: the GPU of the actor that computed it


def test_lost_workers_are_replaced_and_the_store_matches_an_undisturbed_run(ray_instance, test_stages: None,
                                                                            tmp_path: Path) -> None:
    """One worker process dies mid-session (Ray restarts it), another actor is ray.kill-ed mid-session (it is
    replaced); both sessions are handed on and complete. A session failing in the stage is not retried."""
    raw = _raw(tmp_path, ["a.flac", "b.flac", "c.flac", "bad.flac"])
    config = _pipeline(tmp_path, "nap", nap=1.0)
    reference = run_pipeline(load_pipeline("nap", config), raw, tmp_path / "inline.zarr", executor="inline")
    assert reference.counts("nap") == {"done": 3, "failed": 1}

    Path(f"{raw / 'a.flac'}.crash").touch()  # the first nap of a.flac kills its worker process
    store = tmp_path / "ray.zarr"
    victim = session_id("c.flac")
    killed: list[str] = []

    def kill_the_worker_of_c() -> None:
        ray = ray_instance
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                running = Store(store, mode="r").session(victim).stage_state("nap").state == "running"
            except Exception:  # the store or the session is not there yet
                running = False
            if running:
                for name in ray.util.list_named_actors():
                    if "-nap-" in name:
                        ray.kill(ray.get_actor(name))
                        killed.append(name)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_worker_of_c)
    killer.start()
    summary = run_pipeline(load_pipeline("nap", config), raw, store, executor="ray", workers=1)
    killer.join()
    assert killed, "the nap worker of c.flac was never seen running"
    nap = {o.session_id: o for o in summary.outcomes if o.stage == "nap"}
    assert nap[session_id("a.flac")].state == "done" and nap[session_id("a.flac")].retries == 1
    assert nap[victim].state == "done" and nap[victim].retries == 1
    assert nap[session_id("b.flac")].state == "done" and nap[session_id("b.flac")].retries == 0
    bad = nap[session_id("bad.flac")]
    assert bad.state == "failed" and bad.retries == 0 and "refused by the nap stage" in bad.message
    assert "RETRIED" in summary.report()
    assert store_digest(store) == store_digest(tmp_path / "inline.zarr")


@pytest.mark.parametrize("executor", ["inline", "ray"])
def test_progress_moves_within_a_session(request, executor: str, tmp_path: Path, test_stages: None) -> None:
    """Workers report media seconds while a session runs; the driver sees them before its outcome."""
    if executor == "ray":
        request.getfixturevalue("ray_instance")
    raw = _raw(tmp_path, ["a.flac", "b.flac"])
    store = tmp_path / "p.zarr"
    pipe = load_pipeline("nap", _pipeline(tmp_path, "nap", nap=1.5))
    assert run_pipeline(pipe, raw, store, only=["audio"]).ok
    events: list[tuple[str, str, float]] = []
    report = lambda stage, sid, media_s: events.append(("progress", sid, media_s))  # noqa: E731
    specs = [pipe.stage("audio"), pipe.stage("nap")]
    runner = (InlineExecutor(specs, store, report) if executor == "inline"
              else RayExecutor(specs, store, progress=report))
    sessions = [probe_session(s) for s in discover_sessions(raw)]
    try:
        for s in sessions:
            runner.submit(Task(s, "nap", "test", {"stage": "nap"}))
        done = 0
        while done < len(sessions):
            for outcome in runner.results(timeout=0.5):
                assert outcome.state == "done", outcome.message
                events.append(("outcome", outcome.session_id, outcome.media_s))
                done += 1
    finally:
        runner.close()
    for s in sessions:
        mine = [e for e in events if e[1] == s.id]
        assert mine[-1][0] == "outcome"
        within = [m for kind, _, m in mine if kind == "progress"]
        assert within and all(0 < m < s.probe.duration for m in within), mine


def test_a_stage_no_node_can_hold_fails_its_sessions_with_the_reason(ray_instance, tmp_path: Path) -> None:
    config = pipeline_file(tmp_path, "audio", [{"stage": "audio", "resources": {"num_cpus": 1, "num_gpus": 4}}])
    summary = run_pipeline(load_pipeline("audio", config), _raw(tmp_path, ["a.flac"]), tmp_path / "u.zarr",
                           executor="ray")
    [outcome] = summary.outcomes
    assert outcome.state == "failed" and "no node of the Ray cluster has that much" in outcome.message
    assert "2 GPU" in outcome.message and not summary.actors
    state = Store(tmp_path / "u.zarr", mode="r").session(outcome.session_id).stage_state("audio")
    assert state.state == "failed" and state.error == outcome.message  # `status` shows why


def test_fully_cached_rerun_does_not_start_ray(tmp_path: Path) -> None:
    raw = _raw(tmp_path, ["a.flac", "b.flac"])
    config, store = _pipeline(tmp_path, "audio"), tmp_path / "c.zarr"
    assert run_pipeline(load_pipeline("audio", config), raw, store).ok
    ray_tmp = tmp_path / "ray_tmp"
    ray_tmp.mkdir()
    code = ("import sys, json\nfrom ether_prep.cli import app\n"
            f"args = ['extract', {str(raw)!r}, '--out', {str(store)!r}, '-c', {str(config)!r}, '-p', 'audio', "
            "'-x', 'ray', '-q']\n"
            "try:\n    app(args)\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print(json.dumps({'ray': 'ray' in sys.modules, 'code': code}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "RAY_TMPDIR": str(ray_tmp), "TMPDIR": str(ray_tmp)})
    facts = json.loads(out.stdout.strip().splitlines()[-1])
    assert facts == {"ray": False, "code": 0}, out.stdout + out.stderr
    assert "audio        2 cached" in out.stdout and "no executor" in out.stdout
    assert not list(ray_tmp.rglob("session_*")), "a Ray session directory appeared"


def test_auto_runs_small_jobs_inline_without_gpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    specs = list(load_pipeline("audio", _pipeline(tmp_path, "audio")).stages)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert isinstance(make_executor("auto", specs, tmp_path, sessions=1, media_s=60.0), InlineExecutor)
    assert isinstance(make_executor("auto", specs, tmp_path, sessions=40, media_s=3600.0 * 30), RayExecutor)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    assert isinstance(make_executor("auto", specs, tmp_path, sessions=1, media_s=60.0), RayExecutor)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert isinstance(make_executor("auto", specs, tmp_path, ray_address="auto", sessions=1), RayExecutor)


def test_store_behind_a_file_url_equals_a_folder_store(tmp_path: Path) -> None:
    raw = _raw(tmp_path, ["a.flac", "b.flac"])
    config = _pipeline(tmp_path, "audio")
    url = f"file://{tmp_path / 'url.zarr'}"
    result = CliRunner().invoke(app, ["extract", str(raw), "--out", url, "-c", str(config), "-p", "audio", "-q"])
    assert result.exit_code == 0, result.output
    assert run_pipeline(load_pipeline("audio", config), raw, tmp_path / "dir.zarr").ok
    assert store_digest(url) == store_digest(tmp_path / "dir.zarr")
    status = CliRunner().invoke(app, ["status", "--out", url, "-c", str(config), "-p", "audio"])
    assert status.exit_code == 0 and "2 session(s), pipeline 'audio': 2 done" in status.output, status.output


CPU_SESSIONS = {  # six recordings: audio-only speech, a two-speaker conversation, talking faces
    "speech/jfk.flac": "jfk.flac",
    "speech/librispeech_1272-128104-0000.wav": "libri.wav",
    "diarization/sample.wav": "conversation.wav",
    "video/bbaf2n.mpg": "grid.mpg",
    "video/lwbsza.mpg": "grid2.mpg",
    "face/single_face.mp4": "single_face.mp4",
}


@pytest.mark.slow
def test_ray_store_equals_inline_store_for_the_cpu_pipeline(ray_instance, tmp_path: Path) -> None:
    """The whole `cpu` pipeline (extract and align) on six sessions: through Ray, into a store behind a
    file:// URL, and inline into a folder; the two stores hold the same values."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for src, name in CPU_SESSIONS.items():
        shutil.copy(DATA / src, raw / name)
    pipe = pipeline("cpu")
    inline = run_pipeline(pipe, raw, tmp_path / "inline.zarr", family=None, executor="inline")
    url = f"file://{tmp_path / 'ray.zarr'}"
    ray_run = run_pipeline(pipe, raw, url, family=None, executor="ray")
    assert ray_run.counts() == inline.counts(), (ray_run.report(), inline.report())
    assert len(Store(url, mode="r").session_ids()) == 6
    assert store_digest(url) == store_digest(tmp_path / "inline.zarr")
