"""Isolation: runs never share temporary files, signals stop a run cleanly, workers find the store.

- Two runs started together in two folders, default ``--out``, the same file name ``session01.mp4`` holding
  different recordings: each store equals that folder's solo run, array for array.
- Temporary folders are private (0700, files 0600), gone after the run (after SIGTERM too), and a symlink
  planted at the old fixed spool path is not followed; leftovers of a SIGKILLed process are swept, a live
  process's never.
- SIGTERM mid-run (sent once the face stage is in its frame loop): exit 143, a message, no lock left, the face
  stage still ``running``; the rerun completes and equals an uninterrupted run.
- ``status`` says a lock of a dead process of this host is stale, not that a run "is writing".
- A relative ``--out`` reaches Ray's workers resolved; a Ray address where nothing listens fails at once with
  the fix, not an AttributeError.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from ether_prep.lock import STORE_LOCK
from ether_prep.scratch import PREFIX, ScratchDir, remove_stale
from ether_prep.store import Store, absolute_location

from .. import trust_media as media
from ..conftest import DATA, ROOT
from ..ray_helpers import store_digest
from .test_interrupt import _stage_running, _states

CLIPS = {"a": DATA / "video" / "bbaf2n.mpg", "b": DATA / "video" / "lwbsza.mpg"}  # two GRID speakers
NAME = "session01.mp4"
STAGES = ("--only", "audio", "--only", "face")


def _env(tmpdir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmpdir)}


def _start(folder: Path, *args: str, out: Path | None = None, tmpdir: Path | None = None) -> subprocess.Popen[str]:
    """``ether-prep run raw --pipeline cpu`` in ``folder`` (TMPDIR ``tmpdir``, default ``folder/tmp``; output
    to files), default --out."""
    tmpdir = tmpdir or folder / "tmp"
    tmpdir.mkdir(exist_ok=True)
    argv = media.cli_argv("run", "raw", "-p", "cpu", "-q", *STAGES, *args, *(("--out", out) if out else ()))
    with open(folder / "stdout.txt", "w") as stdout, open(folder / "stderr.txt", "w") as stderr:
        return subprocess.Popen(argv, cwd=folder, env=_env(tmpdir), text=True, start_new_session=True,
                                stdout=stdout, stderr=stderr)


def _finish(proc: subprocess.Popen[str], folder: Path, timeout: float = 300) -> tuple[int, str]:
    rc = proc.wait(timeout=timeout)
    return rc, (folder / "stdout.txt").read_text() + (folder / "stderr.txt").read_text()


def _scratch(tmpdir: Path) -> list[Path]:
    return sorted(p for p in tmpdir.iterdir() if p.name.startswith(PREFIX))


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two project folders, each ``raw/session01.mp4`` (a different speaker), each with its solo run's store
    moved to ``solo.zarr`` (the folders, and so the recordings' paths, stay those of the later runs)."""
    out = {}
    for key, clip in CLIPS.items():
        folder = tmp_path_factory.mktemp(f"project_{key}")
        (folder / "raw").mkdir()
        # 8 s (the 3 s clip looped): long enough a face stage that the two runs' stages overlap.
        media.ffmpeg("-stream_loop", "2", "-i", clip, "-t", "8", "-c:v", "libx264", "-preset", "ultrafast",
                     "-c:a", "aac", folder / "raw" / NAME)
        rc, log = _finish(_start(folder), folder)
        assert rc == 0, log
        (folder / "ether_prep.zarr").rename(folder / "solo.zarr")
        out[key] = folder
    return out


@pytest.mark.slow
def test_two_runs_at_once_in_two_folders_keep_their_own_faces(folders: dict[str, Path]) -> None:
    a, b = folders["a"], folders["b"]
    machine_tmp = a.parent / "machine_tmp"  # one TMPDIR for both, as on any machine
    machine_tmp.mkdir()
    # Planted at the fixed spool path of earlier versions (predictable): a run must not write through it.
    victim = a.parent / "victim"
    victim.mkdir()
    (machine_tmp / "ether-prep-spool").symlink_to(victim, target_is_directory=True)
    runs = [(folder, _start(folder, tmpdir=machine_tmp)) for folder in (a, b)]  # started together
    for folder, proc in runs:
        rc, log = _finish(proc, folder)
        assert rc == 0, log
    solo_a, solo_b = store_digest(a / "solo.zarr"), store_digest(b / "solo.zarr")
    assert solo_a != solo_b  # different recordings: mixing would show
    assert store_digest(a / "ether_prep.zarr") == solo_a
    assert store_digest(b / "ether_prep.zarr") == solo_b
    assert list(victim.iterdir()) == []
    assert [p.name for p in _scratch(machine_tmp)] == ["ether-prep-spool"]  # every temporary folder removed


@pytest.mark.slow
def test_sigterm_mid_face_stops_cleanly_and_the_rerun_completes(folders: dict[str, Path]) -> None:
    folder = folders["a"]
    store, tmpdir = folder / "term.zarr", folder / "tmp"
    before = set(_scratch(tmpdir))
    proc = _start(folder, out=store)
    deadline = time.monotonic() + 300
    spool: list[Path] = []
    while not (spool and _stage_running(store, "face")):  # the face stage is in its frame loop
        assert proc.poll() is None, _finish(proc, folder)[1]
        assert time.monotonic() < deadline, "the face stage never started"
        spool = [p for p in _scratch(tmpdir) if p not in before and p.name.startswith(f"{PREFIX}face-")]
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGSTOP)  # held still while its temporary folder is looked at
    try:
        assert proc.poll() is None  # alive when signalled
        folder_mode = stat.S_IMODE(spool[0].lstat().st_mode)
        files = [p for p in spool[0].rglob("*") if p.is_file()]
        file_modes = {stat.S_IMODE(p.lstat().st_mode) for p in files}
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        os.kill(proc.pid, signal.SIGCONT)
    assert folder_mode == 0o700 and files and file_modes == {0o600}, (folder_mode, file_modes)
    rc, log = _finish(proc, folder, timeout=120)
    assert rc == 143, log
    assert "interrupted by SIGTERM" in log and "run the same command again" in log, log
    assert not (store / STORE_LOCK).exists()
    assert not spool[0].exists()  # removed on the way out
    assert _stage_running(store, "face")  # not done: the rerun redoes it
    rerun = _start(folder, out=store)
    rc, log = _finish(rerun, folder)
    assert rc == 0, log
    assert "took over" not in log  # the lock was released, not left for the next run to take over
    assert sorted(_states(store)) == ["done", "done"]
    assert store_digest(store) == store_digest(folder / "solo.zarr")


def test_scratch_folders_are_private_and_leftovers_of_dead_processes_are_swept(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # TMPDIR of this process, as the children's
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("mine")
    (tmp_path / f"{PREFIX}planted").symlink_to(victim, target_is_directory=True)
    hold = ("import sys, time; from ether_prep.scratch import ScratchDir; s = ScratchDir('face'); "
            "print(s.path, flush=True); time.sleep(600)")
    env = _env(tmp_path)
    killed = subprocess.Popen([sys.executable, "-c", hold], env=env, stdout=subprocess.PIPE, text=True)
    live = subprocess.Popen([sys.executable, "-c", hold], env=env, stdout=subprocess.PIPE, text=True)
    try:
        dead_path, live_path = Path(killed.stdout.readline().strip()), Path(live.stdout.readline().strip())
        assert dead_path.parent == live_path.parent == tmp_path
        killed.send_signal(signal.SIGKILL)
        killed.wait()
        assert dead_path.is_dir()  # SIGKILL: nothing could remove it
        removed = remove_stale(tmp_path)
        assert removed == [dead_path] and not dead_path.exists()
        assert live_path.is_dir()  # its process holds it: never touched
        assert (victim / "keep.txt").read_text() == "mine"  # a planted link is never followed
    finally:
        live.kill()
        killed.kill()
        live.wait()
    with ScratchDir("spool") as scratch:  # a new folder sweeps first: the live one is gone now too
        assert stat.S_IMODE(scratch.path.stat().st_mode) == 0o700
        assert not live_path.exists()
        assert _scratch(tmp_path) == sorted([scratch.path, tmp_path / f"{PREFIX}planted"])
    assert not scratch.path.exists()


def _status(store: Path) -> str:
    result = media.cli("status", "--out", store, "-p", "cpu")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_status_says_a_lock_of_a_dead_process_is_stale(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    Store(store)  # an empty store
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a pid of this host that no longer runs
    lock = {"host": socket.gethostname(), "pid": gone.pid, "pid_start": None, "started": "2026-01-01T00:00:00",
            "command": "ether-prep run raw", "purpose": "the store lock", "token": "x"}
    (store / STORE_LOCK).write_text(json.dumps(lock))
    out = _status(store)
    assert "stale store lock" in out and f"pid {gone.pid}" in out and "a run is writing" not in out, out
    (store / STORE_LOCK).write_text(json.dumps({**lock, "pid": os.getpid()}))  # this test process: alive
    out = _status(store)
    assert "a run is writing this store now" in out and "stale" not in out, out


def test_a_ray_address_where_nothing_listens_fails_at_once_with_the_fix(tmp_path: Path) -> None:
    folder = tmp_path / "project"
    (folder / "raw").mkdir(parents=True)
    media.ffmpeg("-i", CLIPS["a"], "-t", "2", "-vn", "-c:a", "flac", folder / "raw" / "session01.flac")
    with socket.socket() as s:  # a port of this host where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead = subprocess.run(media.cli_argv("run", "raw", "-p", "cpu", "-q", "--only", "audio", "--ray-address",
                                         f"127.0.0.1:{port}"), cwd=folder, env=_env(tmp_path), capture_output=True,
                          text=True, timeout=120)  # Ray itself would retry for minutes
    assert dead.returncode == 2, dead.stdout + dead.stderr
    assert f"cannot reach the Ray cluster at '127.0.0.1:{port}'" in dead.stderr, dead.stderr
    assert "--ray-address" in dead.stderr and "AttributeError" not in dead.stderr + dead.stdout
    assert not (folder / "ether_prep.zarr" / STORE_LOCK).exists()


def _cwd() -> str:
    return os.getcwd()


def test_a_relative_out_is_resolved_in_the_driver_for_ray_workers(ray_instance, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from ether_prep.config import load_pipeline
    from ether_prep.runner import run_pipeline

    assert absolute_location("s3://bucket/x.zarr") == "s3://bucket/x.zarr"
    (tmp_path / "raw").mkdir()
    media.ffmpeg("-i", CLIPS["a"], "-t", "2", "-vn", "-c:a", "flac", tmp_path / "raw" / "session01.flac")
    monkeypatch.chdir(tmp_path)
    assert absolute_location("ether_prep.zarr") == tmp_path / "ether_prep.zarr"
    workers_cwd = ray_instance.get(ray_instance.remote(_cwd).remote())
    assert Path(workers_cwd) != tmp_path  # so a relative path would name another folder there
    summary = run_pipeline(load_pipeline("cpu"), Path("raw"), "ether_prep.zarr", only=["audio"], executor="ray",
                           workers=1)
    assert summary.ok and summary.executor == "ray" and summary.counts() == {"done": 1}, summary.report()
    assert _states(tmp_path / "ether_prep.zarr", "audio") == ["done"]
    assert not (Path(workers_cwd) / "ether_prep.zarr").exists()
