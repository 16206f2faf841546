"""The inline executor: every task in this process, the reference the Ray executor is tested against."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..spec import StageSpec
from ..worker import Outcome, ProgressFn, StageWorker, Task

if TYPE_CHECKING:
    from .ray import ActorRecord


class InlineExecutor:
    """Runs every task in this process: the earliest stage first, the longest session first within it, so
    stages run one after another with one model loaded at a time (tests, debugging, small jobs)."""

    name = "inline"

    def __init__(self, specs: Sequence[StageSpec], store_path: str | Path, progress: ProgressFn | None = None) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._index = {spec.name: i for i, spec in enumerate(specs)}
        self._store = store_path
        self._progress = progress
        self._queue: list[tuple[int, float, int, Task]] = []
        self._seq = itertools.count()
        self._workers: dict[str, StageWorker] = {}

    @property
    def placements(self) -> dict[str, list[str]]:
        return {}

    @property
    def actor_log(self) -> list[ActorRecord]:
        return []  # no actors: every task runs here

    def submit(self, task: Task) -> None:
        heapq.heappush(self._queue, (self._index[task.stage], -task.media_s, next(self._seq), task))

    def results(self, timeout: float) -> list[Outcome]:
        """Runs the first task of the queue (``timeout`` aside: it runs to its end) and returns its outcome."""
        if not self._queue:
            return []
        task = heapq.heappop(self._queue)[-1]
        worker = self._workers.get(task.stage)
        if worker is None:
            worker = self._workers[task.stage] = StageWorker(self._specs[task.stage], self._store,
                                                             report=self._progress)
        return [worker.process(task)]

    def stage_finished(self, stage: str) -> None:
        worker = self._workers.pop(stage, None)
        if worker is not None:
            worker.close()  # unload this stage's model before the next family loads

    def close(self) -> None:
        for stage in list(self._workers):
            self.stage_finished(stage)
