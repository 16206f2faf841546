"""Running one stage on one session: plain Python, used by every executor (inline or Ray actors)."""

from __future__ import annotations

import errno
import os
import socket
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import logs
from .config import StageSpec
from .errors import EtherPrepError
from .lock import STORE_LOCK, describe, read_holder
from .records import Session
from .stages import stage_class
from .stages.base import Stage
from .store import Store

__all__ = ["Outcome", "StageWorker", "Task"]


@dataclass(frozen=True)
class Task:
    """A (session, stage) to compute, with the fingerprint and provenance its marker will carry."""

    session: Session
    fingerprint: str
    marker: dict[str, Any] = field(default_factory=dict)
    run_token: str | None = None  # the token of the store lock the run holds; None: unchecked


@dataclass(frozen=True)
class Outcome:
    """What happened to one (session, stage): done, skipped, cached, failed or blocked."""

    session_id: str
    stage: str
    state: str
    message: str | None = None
    elapsed_s: float = 0.0
    media_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state in ("done", "skipped", "cached")


def _where_am_i() -> dict[str, Any]:
    """Which host, process and accelerators (as Ray assigned them) computed an output: provenance."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _lock_lost(store_path: Path, token: str | None) -> str | None:
    """Why this worker must not write (its run no longer holds the store lock), or None.

    A worker outlives its driver for a moment when the driver is killed (Ray actors finish their task); once
    another run has taken the stale lock over, such a worker must not write into the store it now owns.
    """
    if token is None:
        return None
    holder = read_holder(store_path / STORE_LOCK)
    if holder and holder.get("token") == token:
        return None
    held = describe(holder) if holder else "nobody"
    return f"the run that started this stage no longer holds the store lock (now: {held}); stopped without writing"


def _os_error_message(exc: OSError, session: Session, stage: str, store_path: Path) -> str:
    """What a filesystem error while computing a stage means, and what to do."""
    where = exc.filename or store_path
    if exc.errno == errno.ENOSPC:
        why = f"no space left on the device holding {where}"
    elif exc.errno == errno.EROFS:
        why = f"{where} is on a read-only file system"
    elif exc.errno == errno.EACCES:
        why = f"permission denied writing {where}"
    else:
        return f"{session.relpath}: stage {stage!r} failed with {exc.strerror or exc} ({where})"
    return (f"{session.relpath}: stage {stage!r} stopped: {why}; free space or choose a writable --out (and TMPDIR),"
            f" then run again: finished stages are kept and this one is redone")


class StageWorker:
    """Holds one stage instance, loads its models once, and processes sessions one by one.

    Executors create one per worker (one per Ray actor); the worker opens the store itself so that it
    can run in another process or on another node with the store on a shared filesystem.
    """

    def __init__(self, spec: StageSpec, store_path: str | Path) -> None:
        self.spec = spec
        self.store_path = Path(store_path)
        self.stage: Stage = stage_class(spec.name)(spec)
        self._ready = False

    def process(self, task: Task) -> Outcome:
        session = task.session
        media_s = session.probe.duration if session.probe else 0.0
        t0 = time.perf_counter()
        if lost := _lock_lost(self.store_path, task.run_token):
            return Outcome(session.id, self.spec.name, "failed", lost, 0.0, media_s)
        group = Store(self.store_path).session(session.id)
        try:
            out = group.begin_stage(self.spec.name, task.marker)
            if not self._ready:
                self.stage.setup()
                self._ready = True
                logs.reapply()  # model libraries imported by setup may have installed console handlers
            note = self.stage.run(session, group, out)
            if lost := _lock_lost(self.store_path, task.run_token):
                return Outcome(session.id, self.spec.name, "failed", lost, time.perf_counter() - t0, media_s)
            group.finish_stage(self.spec.name, "done", task.fingerprint, note=note,
                               elapsed_s=round(time.perf_counter() - t0, 3), worker=_where_am_i())
            return Outcome(session.id, self.spec.name, "done", note, time.perf_counter() - t0, media_s)
        except EtherPrepError as exc:
            message = str(exc)
        except OSError as exc:  # the store or a temporary folder: full, read-only, gone
            message = _os_error_message(exc, session, self.spec.name, self.store_path)
        except Exception as exc:  # recorded in status with its traceback tail, and the batch goes on
            tail = "".join(traceback.format_exception(exc)[-3:]).strip()
            message = f"{session.relpath}: unexpected {type(exc).__name__} in stage {self.spec.name!r}: {exc}\n{tail}"
        elapsed = time.perf_counter() - t0
        if lost := _lock_lost(self.store_path, task.run_token):
            return Outcome(session.id, self.spec.name, "failed", f"{message}; {lost}", elapsed, media_s)
        try:
            # Partial outputs are dropped (they would only take space, e.g. on a full disk); the marker stays.
            group.begin_stage(self.spec.name, task.marker)
            group.finish_stage(self.spec.name, "failed", None, error=message, elapsed_s=round(elapsed, 3),
                               worker=_where_am_i())
        except OSError as exc:
            message += f" (the failure could not be recorded in the store either: {exc.strerror}; it shows as running)"
        return Outcome(session.id, self.spec.name, "failed", message, elapsed, media_s)

    def close(self) -> None:
        if self._ready:
            self.stage.teardown()
            self._ready = False
