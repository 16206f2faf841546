"""Concurrency: one writing run per store (a lock with the holder's host and pid, taken over when
its process is dead, waited for with --wait), and one download per model file."""

from __future__ import annotations

import ctypes
import io
import json
import os
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ether_prep.config import load_pipeline
from ether_prep.errors import LockError, ModelError
from ether_prep.lock import STORE_LOCK, FileLock, read_holder
from ether_prep.runner import run_pipeline
from ether_prep.sessions import session_id
from ether_prep.store import Store

from . import trust_media as media
from .conftest import DATA, MODELS, pipeline_file


def _config(tmp: Path, block: float = 5.0) -> Path:
    return pipeline_file(tmp, "audio", [{"stage": "audio", "params": {"block_s": block}}])


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_lock_records_its_holder_and_refuses_a_second_holder(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with FileLock(path, purpose="the test lock", command="first") as lock:
        holder = read_holder(path)
        assert holder["host"] == socket.gethostname() and holder["pid"] == lock_pid()
        assert holder["command"] == "first" and holder["token"] == lock.token and holder["started"]
        with pytest.raises(LockError) as info:
            FileLock(path, purpose="the test lock").acquire(wait=0)
        message = str(info.value)
        assert f"pid {lock_pid()} on host {socket.gethostname()}" in message and "first" in message
    assert not path.exists()  # released


def lock_pid() -> int:
    import os

    return os.getpid()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    dead = {"host": socket.gethostname(), "pid": _dead_pid(), "started": "earlier", "token": "old"}
    path.write_text(json.dumps(dead))
    lock = FileLock(path, purpose="the test lock").acquire(wait=0)
    assert lock.took_over == dead and read_holder(path)["token"] == lock.token
    lock.release()
    # A lock file left empty (its writer died between creating and filling it) is stale after a while.
    path.write_text("")
    stale = time.time() - 60
    import os

    os.utime(path, (stale, stale))
    FileLock(path, purpose="the test lock").acquire(wait=0).release()


def test_a_lock_from_another_host_is_never_guessed_stale(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.write_text(json.dumps({"host": "other-node", "pid": _dead_pid(), "started": "earlier", "token": "t"}))
    with pytest.raises(LockError, match=rf"host other-node.*delete {path}"):
        FileLock(path, purpose="the test lock").acquire(wait=0.2, poll=0.05)
    assert read_holder(path)["host"] == "other-node"  # untouched


def test_waiting_for_a_lock_ends_when_its_holder_releases_it(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    first = FileLock(path, purpose="the test lock").acquire()
    order: list[str] = []

    def second() -> None:
        with FileLock(path, purpose="the test lock").acquire(wait=30, poll=0.05):
            order.append("second")

    thread = threading.Thread(target=second)
    thread.start()
    time.sleep(0.5)
    order.append("first released")
    first.release()
    thread.join(timeout=30)
    assert order == ["first released", "second"]


@pytest.fixture(scope="module")
def long_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 10-minute recording (a loop of the telephone call): decoding it in 0.25 s blocks takes seconds."""
    raw = tmp_path_factory.mktemp("long_raw")
    media.ffmpeg("-stream_loop", "19", "-i", DATA / "diarization" / "sample.wav", "-c", "copy", raw / "long.wav")
    return raw


class _Opens:
    """Counts the opens of one file (inotify ``IN_OPEN``): to see another process read it."""

    IN_OPEN = 0x20

    def __init__(self, path: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        assert self._libc.inotify_add_watch(self.fd, os.fsencode(path), self.IN_OPEN) >= 0, \
            os.strerror(ctypes.get_errno())

    def seen(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        return bool(ready) and len(os.read(self.fd, 4096)) > 0

    def close(self) -> None:
        os.close(self.fd)


def test_a_second_run_on_one_store_refuses_or_waits_and_never_interleaves(long_raw: Path, tmp_path: Path) -> None:
    # The first run is frozen (SIGSTOP) inside its stage while the others start: it is alive and holds the
    # lock however fast this machine is, until the waiting run has provably read the lock and is waiting.
    store, config = tmp_path / "s.zarr", _config(tmp_path, block=0.25)
    args = ["run", long_raw, "--out", store, "-c", config, "-p", "audio", "-x", "inline", "-q"]
    marker = store / "sessions" / session_id("long.wav") / "audio" / "zarr.json"
    first = subprocess.Popen(media.cli_argv(*args), cwd=media.ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    waiting = None
    try:
        deadline = time.monotonic() + 120
        while True:
            assert first.poll() is None, f"the first run ended before its stage was seen running: {first.stderr.read()}"
            assert time.monotonic() < deadline, "the first run never marked its stage running"
            if (read_holder(store / STORE_LOCK) or {}).get("pid") == first.pid and "running" in _state(marker):
                media.freeze(first)
                if "running" in _state(marker):
                    break
                media.thaw(first)
            time.sleep(0.02)
        refused = media.cli(*args)
        status = media.cli("status", "--out", store, "-c", config, "-p", "audio")
        opens = _Opens(store / STORE_LOCK)  # armed now: only the waiting run opens the lock file from here
        try:
            waiting = subprocess.Popen(media.cli_argv(*args, "--wait", "300"), cwd=media.ROOT,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 120
            while not opens.seen(timeout=1.0):
                assert waiting.poll() is None, f"the waiting run ended, never reading the lock: {waiting.stderr.read()}"
                assert time.monotonic() < deadline, "the waiting run never read the lock"
        finally:
            opens.close()
        assert waiting.poll() is None  # it saw the lock held by the frozen first run, and waits
        assert (read_holder(store / STORE_LOCK) or {}).get("pid") == first.pid and first.poll() is None
        media.thaw(first)
        assert first.wait(timeout=300) == 0, first.stderr.read()
        waited_out, waited_err = waiting.communicate(timeout=300)
    finally:
        for proc in (first, waiting):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert f"held by pid {first.pid} on host {socket.gethostname()}" in refused.stderr
    assert f"cli.py run {long_raw} --out {store}" in refused.stderr  # the holder's command line
    assert "wait for that run to finish, or pass --wait SECONDS" in refused.stderr
    assert f"a run is writing this store now: pid {first.pid}" in status.stdout
    # The waiting run, started while the first held the lock, went on only after the first ended: it found the
    # stage done and computed nothing.
    assert waiting.returncode == 0, waited_err
    assert "audio        1 cached" in waited_out
    state = Store(store, mode="r").session(session_id("long.wav")).stage_state("audio")
    assert state.state == "done" and state.info["worker"]["pid"] == first.pid
    assert not (store / STORE_LOCK).exists()


def _state(marker: Path) -> str:
    """The state in a stage marker, or "" while it is missing or being written."""
    try:
        return json.loads(marker.read_text())["attributes"]["stage"]["state"]
    except (OSError, ValueError, KeyError):
        return ""


def test_a_run_takes_over_the_lock_of_a_killed_run(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.wav").symlink_to(media.LIBRI)
    store = tmp_path / "s.zarr"
    store.mkdir()
    dead = _dead_pid()
    (store / STORE_LOCK).write_text(json.dumps({"host": socket.gethostname(), "pid": dead, "started": "earlier",
                                                "command": "ether-prep run (killed)", "token": "old"}))
    summary = run_pipeline(load_pipeline("audio", _config(tmp_path)), raw, store)
    assert summary.ok and summary.counts("audio") == {"done": 1}
    assert any(f"took over the store lock left by a process that no longer runs (pid {dead}" in n
               for n in summary.notes)
    # A worker of the killed run (a Ray actor outliving its driver) may not write once the lock changed hands.
    from ether_prep.worker import StageWorker, Task

    pipeline = load_pipeline("audio", _config(tmp_path))
    session = Store(store).session(session_id("a.wav")).info
    from ether_prep.sessions import session_from_info

    with FileLock(store / STORE_LOCK, purpose="the store lock"):
        outcome = StageWorker(pipeline.stage("audio"), store).process(
            Task(session_from_info(session), "audio", "fp", {"stage": "audio"}, run_token="the killed run's token"))
    assert outcome.state == "failed" and "no longer holds the store lock" in outcome.message
    assert Store(store).session(session_id("a.wav")).stage_state("audio").state == "done"  # untouched


def test_a_lock_held_from_another_host_refuses_the_run_with_the_way_out(tmp_path: Path) -> None:
    store = tmp_path / "s.zarr"
    store.mkdir()
    (store / STORE_LOCK).write_text(json.dumps({"host": "gpu-node-7", "pid": 4242, "started": "2026-01-01T00:00",
                                                "command": "ether-prep run /shared/raw", "token": "t"}))
    res = media.cli("run", DATA / "speech", "--out", store, "-c", _config(tmp_path), "-p", "audio", "-x", "inline")
    assert res.returncode == 2
    assert "pid 4242 on host gpu-node-7" in res.stderr and f"delete {store / STORE_LOCK}" in res.stderr
    assert not (store / "sessions").exists()  # nothing written


class _SlowModelResponse(io.BytesIO):
    """A fake HTTP response serving ``data`` slowly, counting how many were opened."""

    opened = 0

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        type(self).opened += 1

    def read(self, n: int = -1) -> bytes:
        time.sleep(0.05)
        return super().read(min(n, 256 * 1024) if n and n > 0 else 256 * 1024)

    def __enter__(self) -> _SlowModelResponse:
        return self


def test_the_model_download_takes_a_lock_and_checks_the_sha256(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from ether_prep.adapters import mediapipe_face

    real = (MODELS / "face_landmarker.task").read_bytes()
    monkeypatch.delenv("ETHER_PREP_MODELS", raising=False)
    monkeypatch.setenv("ETHER_PREP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mediapipe_face.urllib.request, "urlopen", lambda url, timeout: _SlowModelResponse(real))
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(mediapipe_face.resolve_model(None)[0]))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert _SlowModelResponse.opened == 1  # one download; the others waited for it and found it
    assert len(results) == 3 and len(set(results)) == 1 and results[0].read_bytes() == real
    assert sorted(p.name for p in results[0].parent.iterdir()) == ["face_landmarker.task"]  # no lock, no .part
    # A download that is not the published file is refused, and nothing is left in the cache.
    results[0].unlink()
    monkeypatch.setattr(mediapipe_face.urllib.request, "urlopen",
                        lambda url, timeout: _SlowModelResponse(real[:-10] + b"tampered!!"))
    with pytest.raises(ModelError, match=f"not the published {mediapipe_face.MODEL_SHA256}"):
        mediapipe_face.resolve_model(None)
    assert not list((tmp_path / "cache" / "models").iterdir())
