"""Executors decide where stages run: :class:`InlineExecutor` (``inline.py``) in this process, :class:`RayExecutor`
(``ray.py``, the only module that imports ray) on a Ray instance or cluster, whose pool sizes are the pure
decision of ``policy.py``.

The runner walks every session through the pipeline on its own and hands the executor one :class:`Task` per
(session, stage) as soon as that session's upstream stages are done; the executor returns outcomes as they
finish (:meth:`Executor.results`) and hears when a stage can get no more tasks (:meth:`Executor.stage_finished`).
Both executors run that same streaming plan. Nothing imports or starts Ray before the first task.

:func:`make_executor` also picks between them for ``auto``: inline for a small job on a machine without GPUs
(fewer than :data:`AUTO_RAY_MIN_SESSIONS` sessions or :data:`AUTO_RAY_MIN_MEDIA_S` seconds of media to
compute), Ray otherwise (a GPU here, a cluster address, or a larger job).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from ..errors import ConfigError
from ..spec import StageSpec
from ..worker import Outcome, ProgressFn, Task
from .inline import InlineExecutor
from .ray import ActorRecord, RayExecutor

__all__ = ["AUTO_RAY_MIN_MEDIA_S", "AUTO_RAY_MIN_SESSIONS", "ActorRecord", "Executor", "InlineExecutor",
           "RayExecutor", "local_gpus", "make_executor"]

# ``auto`` starts Ray (about 10 s here) only for at least this many sessions and seconds of media to compute.
AUTO_RAY_MIN_SESSIONS = 4
AUTO_RAY_MIN_MEDIA_S = 600.0


class Executor(Protocol):
    """Where tasks run. ``name``: ``inline`` or ``ray``, as the run summary names it."""

    name: str

    @property
    def placements(self) -> dict[str, list[str]]:
        """Per stage, the accelerators (CUDA_VISIBLE_DEVICES) each worker was given; empty inline."""
        ...

    @property
    def actor_log(self) -> list[ActorRecord]:
        """Every Ray actor made in this run and when it lived; empty inline."""
        ...

    def submit(self, task: Task) -> None: ...

    def results(self, timeout: float) -> list[Outcome]:
        """The executor's one step: it hands waiting tasks to free workers (Ray: after starting and stopping
        actors as :mod:`.policy` decides), waits up to ``timeout`` s for the first outcome, and returns the
        finished ones; empty when nothing is pending."""
        ...

    def stage_finished(self, stage: str) -> None:
        """No more tasks will come for ``stage``: its workers may go."""
        ...

    def close(self) -> None: ...


def local_gpus() -> int:
    """NVIDIA GPUs this process may use, without importing torch or ray (CUDA_VISIBLE_DEVICES, else the driver)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return sum(1 for d in visible.split(",") if d.strip() and d.strip() != "-1")
    try:
        return len(os.listdir("/proc/driver/nvidia/gpus"))
    except OSError:
        return 0


def make_executor(name: str, specs: Sequence[StageSpec], store_path: str | Path, *, ray_address: str | None = None,
                  workers: int | None = None, worker_logs: bool = True, progress: ProgressFn | None = None,
                  sessions: int = 0, media_s: float = 0.0) -> Executor:
    """``inline``, ``ray`` or ``auto`` (see the module docstring; ``sessions`` and ``media_s`` are the work to
    do). A Ray address implies ``ray``. ``worker_logs=False`` keeps Ray workers' output (model libraries'
    chatter) out of this terminal."""
    if name not in ("auto", "inline", "ray"):
        raise ConfigError(f"unknown executor {name!r}; use 'auto', 'inline' or 'ray'")
    address = ray_address or os.environ.get("RAY_ADDRESS")
    if name == "auto":
        big = sessions >= AUTO_RAY_MIN_SESSIONS and media_s >= AUTO_RAY_MIN_MEDIA_S
        name = "ray" if address or local_gpus() or big else "inline"
    if name == "inline" and not ray_address:
        return InlineExecutor(specs, store_path, progress)
    return RayExecutor(specs, store_path, address=ray_address, workers=workers, worker_logs=worker_logs,
                       progress=progress)
