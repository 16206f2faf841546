"""Running one stage on one session: plain Python, used by every executor (inline or Ray actors)."""

from __future__ import annotations

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
        group = Store(self.store_path).session(session.id)
        out = group.begin_stage(self.spec.name, task.marker)
        try:
            if not self._ready:
                self.stage.setup()
                self._ready = True
                logs.reapply()  # model libraries imported by setup may have installed console handlers
            note = self.stage.run(session, group, out)
        except EtherPrepError as exc:
            message = str(exc)
        except Exception as exc:  # recorded in status with its traceback tail, and the batch goes on
            tail = "".join(traceback.format_exception(exc)[-3:]).strip()
            message = f"{session.relpath}: unexpected {type(exc).__name__} in stage {self.spec.name!r}: {exc}\n{tail}"
        else:
            elapsed = time.perf_counter() - t0
            group.finish_stage(self.spec.name, "done", task.fingerprint, note=note, elapsed_s=round(elapsed, 3),
                               worker=_where_am_i())
            return Outcome(session.id, self.spec.name, "done", note, elapsed, media_s)
        elapsed = time.perf_counter() - t0
        group.finish_stage(self.spec.name, "failed", None, error=message, elapsed_s=round(elapsed, 3),
                           worker=_where_am_i())
        return Outcome(session.id, self.spec.name, "failed", message, elapsed, media_s)

    def close(self) -> None:
        if self._ready:
            self.stage.teardown()
            self._ready = False
