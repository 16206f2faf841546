"""Running one stage on one session: plain Python, used by every executor (inline or Ray actors)."""

from __future__ import annotations

import errno
import logging
import os
import socket
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import logs
from .errors import EtherPrepError
from .lock import STORE_LOCK, describe, read_holder
from .records import Session
from .spec import StageSpec
from .stages import stage_class
from .stages.base import Stage, Window
from .store import Store, local_path

__all__ = ["Outcome", "ProgressFn", "StageWorker", "Task"]

# (stage, session id, media seconds processed so far): how a worker tells the driver where it is in a session.
ProgressFn = Callable[[str, str, float], None]
# A worker forwards at most this many in-session progress reports a second.
_REPORTS_PER_S = 4.0


@dataclass(frozen=True)
class Task:
    """A (session, stage) to compute, with the fingerprint and provenance its marker will carry.

    A stage computed in time windows is several tasks: one per ``window`` (into scratch groups), then the
    join (``parts``: how many windows it stitches), which writes the stage's output and marker.
    """

    session: Session
    stage: str
    fingerprint: str
    marker: dict[str, Any] = field(default_factory=dict)
    run_token: str | None = None  # the token of the store lock the run holds; None: unchecked
    window: Window | None = None
    parts: int = 0

    @property
    def media_s(self) -> float:
        if self.window is not None:
            return self.window.end - self.window.start
        return self.session.probe.duration if self.session.probe else 0.0

    @property
    def part(self) -> int | None:
        """The window this task computes (None: a whole session, or a join)."""
        return None if self.window is None else self.window.index

    @property
    def part_marker(self) -> dict[str, Any] | None:
        """What a window's group records once it is computed in full, so that a later run can keep it: the
        window and the stage's fingerprint (None: not a window)."""
        if self.window is None:
            return None
        w = self.window
        return {"index": w.index, "count": w.count, "start": w.start, "end": w.end, "fingerprint": self.fingerprint}

    @property
    def key(self) -> str:
        """What progress reports are filed under: the session, or one window of it."""
        return self.session.id if self.window is None else f"{self.session.id}#{self.window.index}"


@dataclass(frozen=True)
class Outcome:
    """What happened to one (session, stage): done, skipped, cached, failed or blocked.

    ``retries`` counts the times the session was handed to a new worker because the one computing it was
    lost (a crashed process, a dead node); ``started_at`` is the wall-clock time (epoch seconds) it began;
    ``setup_s`` the part of ``elapsed_s`` its worker spent loading models first (0 when already loaded).
    """

    session_id: str
    stage: str
    state: str
    message: str | None = None
    elapsed_s: float = 0.0
    media_s: float = 0.0
    retries: int = 0
    started_at: float = 0.0
    setup_s: float = 0.0
    part: int | None = None  # the window computed, for a window task

    @property
    def key(self) -> str:
        return self.session_id if self.part is None else f"{self.session_id}#{self.part}"

    @property
    def ok(self) -> bool:
        return self.state in ("done", "skipped", "cached")


def _where_am_i() -> dict[str, Any]:
    """Which host, process and accelerators (as Ray assigned them) computed an output: provenance."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def _lock_lost(store_path: str | Path, token: str | None) -> str | None:
    """Why this worker must not write (its run no longer holds the store lock), or None.

    A worker outlives its driver for a moment when the driver is killed (Ray actors finish their task); once
    another run has taken the stale lock over, such a worker must not write into the store it now owns.
    """
    folder = local_path(store_path)
    if token is None or folder is None:  # unchecked, or a store behind a URL (no lock file there)
        return None
    holder = read_holder(folder / STORE_LOCK)
    if holder and holder.get("token") == token:
        return None
    held = describe(holder) if holder else "nobody"
    return f"the run that started this stage no longer holds the store lock (now: {held}); stopped without writing"


def _os_error_message(exc: OSError, session: Session, stage: str, store_path: str | Path) -> str:
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
    can run in another process or on another node with the store on a shared filesystem or behind an
    fsspec URL. ``stage_cls`` defaults to the registered class of ``spec.name``; ``report`` receives
    in-session progress (throttled here, so stages may report as often as they like).
    """

    def __init__(self, spec: StageSpec, store_path: str | Path, stage_cls: type[Stage] | None = None,
                 report: ProgressFn | None = None) -> None:
        self.spec = spec
        self.store_path = store_path
        self.stage: Stage = (stage_cls or stage_class(spec.name))(spec)
        self._report = report
        self._ready = False
        self._store: Store | None = None  # opened at the first task, in the process that runs it

    def _progress_for(self, key: str) -> Callable[[float], None] | None:
        if self._report is None:
            return None
        report, stage, last = self._report, self.spec.name, [0.0]

        def progress(media_s: float) -> None:
            now = time.monotonic()
            if now - last[0] >= 1.0 / _REPORTS_PER_S:
                last[0] = now
                report(stage, key, media_s)

        return progress

    def process(self, task: Task) -> Outcome:
        session = task.session
        started_at, t0 = time.time(), time.perf_counter()
        part = task.part
        logging.getLogger("ether_prep.progress").info("%s [%s]: started", task.key, self.spec.name)
        if lost := _lock_lost(self.store_path, task.run_token):
            return Outcome(session.id, self.spec.name, "failed", lost, 0.0, task.media_s, started_at=started_at,
                           part=part)
        if self._store is None:
            self._store = Store(self.store_path)
        group = self._store.session(session.id)
        self.stage.progress_hook = self._progress_for(task.key)
        setup_s = 0.0
        try:
            if task.window is not None:  # scratch output: the stage's own group is the join's to write
                out = self._store.begin_part(session.id, self.spec.name, task.window.index)
            else:
                out = group.begin_stage(self.spec.name, task.marker)
            if not self._ready:
                self.stage.setup()
                self._ready = True
                setup_s = time.perf_counter() - t0
                logs.reapply()  # model libraries imported by setup may have installed console handlers
            if task.window is not None:
                self.stage.run_part(session, group, task.window, out)
                # Written last: where it ran (the join lists it), and that the window is whole (a rerun keeps it).
                out.attrs.update({"worker": _where_am_i(), "window": task.part_marker})
                return Outcome(session.id, self.spec.name, "done", None, time.perf_counter() - t0, task.media_s,
                               started_at=started_at, setup_s=setup_s, part=part)
            if task.parts:
                note = self.stage.join(session, group, self._store.parts(session.id, self.spec.name, task.parts),
                                       out)
                self._store.drop_parts(session.id, self.spec.name)
            else:
                note = self.stage.run(session, group, out)
            elapsed = time.perf_counter() - t0
            if lost := _lock_lost(self.store_path, task.run_token):
                return Outcome(session.id, self.spec.name, "failed", lost, elapsed, task.media_s,
                               started_at=started_at, setup_s=setup_s)
            group.finish_stage(self.spec.name, "done", task.fingerprint, note=note, elapsed_s=round(elapsed, 3),
                               worker=_where_am_i())
            return Outcome(session.id, self.spec.name, "done", note, elapsed, task.media_s, started_at=started_at,
                           setup_s=setup_s)
        except EtherPrepError as exc:
            message = str(exc)
        except OSError as exc:  # the store or a temporary folder: full, read-only, gone
            message = _os_error_message(exc, session, self.spec.name, self.store_path)
        except Exception as exc:  # recorded in status with its traceback tail, and the batch goes on
            tail = "".join(traceback.format_exception(exc)[-3:]).strip()
            message = f"{session.relpath}: unexpected {type(exc).__name__} in stage {self.spec.name!r}: {exc}\n{tail}"
        finally:
            self.stage.progress_hook = None
        elapsed = time.perf_counter() - t0
        if lost := _lock_lost(self.store_path, task.run_token):
            return Outcome(session.id, self.spec.name, "failed", f"{message}; {lost}", elapsed, task.media_s,
                           started_at=started_at, setup_s=setup_s, part=part)
        if part is not None:  # the driver records the stage's failure (other windows may still be running)
            return Outcome(session.id, self.spec.name, "failed", message, elapsed, task.media_s,
                           started_at=started_at, setup_s=setup_s, part=part)
        try:
            # Partial outputs are dropped (they would only take space, e.g. on a full disk); the marker stays.
            group.begin_stage(self.spec.name, task.marker)
            group.finish_stage(self.spec.name, "failed", None, error=message, elapsed_s=round(elapsed, 3),
                               worker=_where_am_i())
        except OSError as exc:
            message += f" (the failure could not be recorded in the store either: {exc.strerror}; it shows as running)"
        return Outcome(session.id, self.spec.name, "failed", message, elapsed, task.media_s, started_at=started_at,
                       setup_s=setup_s)

    def close(self) -> None:
        if self._ready:
            self.stage.teardown()
            self._ready = False
