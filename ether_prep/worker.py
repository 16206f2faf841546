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
from typing import TYPE_CHECKING, Any

from . import logs
from .errors import EtherPrepError
from .lock import STORE_LOCK, describe, read_holder
from .records import Session
from .spec import StageSpec
from .stages import stage_class
from .stages.base import Stage, Window
from .store import SessionGroup, Store, local_path

if TYPE_CHECKING:
    import zarr

__all__ = ["Outcome", "ProgressFn", "StageWorker", "Task"]

# (stage, session id, media seconds processed so far): how a worker tells the driver where it is in a session.
ProgressFn = Callable[[str, str, float], None]
# A worker forwards at most this many in-session progress reports a second.
_REPORTS_PER_S = 4.0


@dataclass(frozen=True)
class Task:
    """A (session, stage) to compute, with the fingerprint and provenance its marker will carry.

    A stage computed in time windows is several tasks: one per ``window`` (into scratch groups), then the
    join (``n_windows``: how many windows it stitches), which writes the stage's output and marker.
    """

    session: Session
    stage: str
    fingerprint: str
    marker: dict[str, Any] = field(default_factory=dict)
    run_token: str | None = None  # the token of the store lock the run holds; None: unchecked
    window: Window | None = None
    n_windows: int = 0

    @property
    def media_s(self) -> float:
        if self.window is not None:
            return self.window.end - self.window.start
        return self.session.probe.duration if self.session.probe else 0.0

    @property
    def window_index(self) -> int | None:
        """The window this task computes (None: a whole session, or a join)."""
        return None if self.window is None else self.window.index

    @property
    def window_marker(self) -> dict[str, Any] | None:
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
    window_index: int | None = None  # the window computed, for a window task

    @property
    def key(self) -> str:
        return self.session_id if self.window_index is None else f"{self.session_id}#{self.window_index}"

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

    def _progress_for(self, key: str, media_s: float) -> Callable[[float], None] | None:
        """The stage's progress hook for one task of ``media_s`` seconds: at most ``_REPORTS_PER_S`` reports a
        second, and every report that passes another tenth of the task (what a batch log shows, see runner)."""
        if self._report is None:
            return None
        report, stage, last, tenth = self._report, self.spec.name, [0.0], [0]

        def progress(done_s: float) -> None:
            now = time.monotonic()
            reached = int(10 * done_s / media_s) if media_s > 0 else 0
            if now - last[0] >= 1.0 / _REPORTS_PER_S or reached > tenth[0]:
                last[0], tenth[0] = now, max(tenth[0], reached)
                report(stage, key, done_s)

        return progress

    def process(self, task: Task) -> Outcome:
        """Compute ``task`` (a whole session, one window, or a join) and record its marker; never raises for a
        session's own failure, which is recorded in the store and returned as a failed outcome."""
        started_at, t0 = time.time(), time.perf_counter()
        logging.getLogger("ether_prep.progress").info("%s [%s]: started", task.key, self.spec.name)
        if lost := _lock_lost(self.store_path, task.run_token):
            return self._outcome(task, "failed", lost, 0.0, started_at, 0.0)
        if self._store is None:
            self._store = Store(self.store_path)
        group = self._store.session(task.session.id)
        self.stage.progress_hook = self._progress_for(task.key, task.media_s)
        setup_s = 0.0
        try:
            if task.window is not None:  # scratch output: the stage's own group is the join's to write
                out = self._store.begin_window(task.session.id, self.spec.name, task.window.index)
            else:
                out = group.begin_stage(self.spec.name, task.marker)
            setup_s = self._setup(t0)
            if task.window is not None:
                self.stage.run_window(task.session, group, task.window, out)
                # Written last: where it ran (the join lists it), and that the window is whole (a rerun keeps it).
                out.attrs.update({"worker": _where_am_i(), "window": task.window_marker})
                return self._outcome(task, "done", None, time.perf_counter() - t0, started_at, setup_s)
            note = self._compute(task, group, out)
            elapsed = time.perf_counter() - t0
            if lost := _lock_lost(self.store_path, task.run_token):
                return self._outcome(task, "failed", lost, elapsed, started_at, setup_s)
            group.finish_stage(self.spec.name, "done", task.fingerprint, note=note, elapsed_s=round(elapsed, 3),
                               worker=_where_am_i())
            return self._outcome(task, "done", note, elapsed, started_at, setup_s)
        except EtherPrepError as exc:
            message = str(exc)
        except OSError as exc:  # the store or a temporary folder: full, read-only, gone
            message = _os_error_message(exc, task.session, self.spec.name, self.store_path)
        except Exception as exc:  # recorded in status with its traceback tail, and the batch goes on
            tail = "".join(traceback.format_exception(exc)[-3:]).strip()
            message = (f"{task.session.relpath}: unexpected {type(exc).__name__} in stage {self.spec.name!r}: "
                       f"{exc}\n{tail}")
        finally:
            self.stage.progress_hook = None
        return self._failed(task, group, message, time.perf_counter() - t0, started_at, setup_s)

    def _outcome(self, task: Task, state: str, message: str | None, elapsed: float, started_at: float,
                 setup_s: float) -> Outcome:
        return Outcome(task.session.id, self.spec.name, state, message, elapsed, task.media_s,
                       started_at=started_at, setup_s=setup_s, window_index=task.window_index)

    def _setup(self, t0: float) -> float:
        """Load the stage's models before its first task; the seconds that took since ``t0`` (0: loaded)."""
        if self._ready:
            return 0.0
        self.stage.setup()
        self._ready = True
        setup_s = time.perf_counter() - t0
        logs.reapply()  # model libraries imported by setup may have installed console handlers
        return setup_s

    def _compute(self, task: Task, group: SessionGroup, out: zarr.Group) -> str | None:
        """A whole session, or the join of its windows (whose scratch groups go once joined)."""
        assert self._store is not None
        if not task.n_windows:
            return self.stage.run(task.session, group, out)
        windows = self._store.window_groups(task.session.id, self.spec.name, task.n_windows)
        note = self.stage.join(task.session, group, windows, out)
        self._store.drop_windows(task.session.id, self.spec.name)
        return note

    def _failed(self, task: Task, group: SessionGroup, message: str, elapsed: float, started_at: float,
                setup_s: float) -> Outcome:
        """Record a failure in the store (a window's: the driver records it, other windows may still run)."""
        if lost := _lock_lost(self.store_path, task.run_token):
            return self._outcome(task, "failed", f"{message}; {lost}", elapsed, started_at, setup_s)
        if task.window is not None:
            return self._outcome(task, "failed", message, elapsed, started_at, setup_s)
        try:
            # Partial outputs are dropped (they would only take space, e.g. on a full disk); the marker stays.
            group.begin_stage(self.spec.name, task.marker)
            group.finish_stage(self.spec.name, "failed", None, error=message, elapsed_s=round(elapsed, 3),
                               worker=_where_am_i())
        except OSError as exc:
            message += f" (the failure could not be recorded in the store either: {exc.strerror}; it shows as running)"
        return self._outcome(task, "failed", message, elapsed, started_at, setup_s)

    def close(self) -> None:
        if self._ready:
            self.stage.teardown()
            self._ready = False
