"""Executors decide where stages run. The Ray executor is the only place in ether-prep that imports ray.

- :class:`InlineExecutor`: plain Python in this process, one worker; for tests, debugging and small jobs.
- :class:`RayExecutor`: a pool of Ray actors per stage, each holding a :class:`StageWorker` with its model
  loaded once, asking Ray for the stage's ``num_cpus``/``num_gpus``. Local by default (``ray.init()``), a
  cluster with ``--ray-address`` or ``RAY_ADDRESS``; the store must then be on a filesystem all nodes share.
  Actors are ended after each stage, so one model family is unloaded before the next loads.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

from .config import StageSpec
from .errors import ConfigError
from .worker import Outcome, StageWorker, Task

__all__ = ["Executor", "InlineExecutor", "RayExecutor", "make_executor"]


class Executor(Protocol):
    placements: dict[str, list[str]]

    def map(self, spec: StageSpec, store_path: Path, tasks: list[Task]) -> Iterator[Outcome]: ...

    def close(self) -> None: ...


class InlineExecutor:
    """Runs every task in this process, in order."""

    def __init__(self) -> None:
        self.placements: dict[str, list[str]] = {}

    def map(self, spec: StageSpec, store_path: Path, tasks: list[Task]) -> Iterator[Outcome]:
        if not tasks:
            return
        worker = StageWorker(spec, store_path)
        try:
            for task in tasks:
                yield worker.process(task)
        finally:
            worker.close()

    def close(self) -> None:
        pass


class RayExecutor:
    """Runs tasks on a pool of Ray actors, one stage at a time."""

    def __init__(self, address: str | None = None, workers: int | None = None, num_cpus: int | None = None,
                 num_gpus: int | None = None, worker_logs: bool = True) -> None:
        # Under `uv run`, Ray would otherwise copy the project and rebuild its venv for its workers; local
        # workers already share the driver's environment. Ray reads the flag when it is first imported.
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        import ray

        self.ray = ray
        self.workers = workers
        # Per stage, the accelerators Ray gave each actor when it was made (CUDA_VISIBLE_DEVICES).
        self.placements: dict[str, list[str]] = {}
        if not ray.is_initialized():
            kwargs: dict = {"include_dashboard": False, "log_to_driver": worker_logs,
                            "configure_logging": False}
            address = address or os.environ.get("RAY_ADDRESS")
            if address:
                kwargs["address"] = address
            else:
                kwargs.update(num_cpus=num_cpus, num_gpus=num_gpus)
            try:
                ray.init(**kwargs)
            except ConnectionError as exc:
                raise ConfigError(f"cannot reach the Ray cluster at {address!r} ({exc}); check --ray-address "
                                  "or RAY_ADDRESS, or leave both unset to run locally") from exc
            self._owns_ray = True
        else:
            self._owns_ray = False
        self._actor_cls = ray.remote(_RayWorker)

    def _pool_size(self, spec: StageSpec, n_tasks: int) -> int:
        if self.workers:
            return max(1, min(self.workers, n_tasks))
        total = self.ray.cluster_resources()
        slots = []
        if spec.resources.num_gpus > 0:
            slots.append(total.get("GPU", 0) / spec.resources.num_gpus)
        if spec.resources.num_cpus > 0:
            slots.append(total.get("CPU", 1) / spec.resources.num_cpus)
        return max(1, min(n_tasks, int(min(slots)) if slots else n_tasks))

    def map(self, spec: StageSpec, store_path: Path, tasks: list[Task]) -> Iterator[Outcome]:
        if not tasks:
            return
        from ray.util import ActorPool

        actor_opts = {"num_cpus": spec.resources.num_cpus, "num_gpus": spec.resources.num_gpus}
        actors = [self._actor_cls.options(**actor_opts).remote(spec, str(store_path))
                  for _ in range(self._pool_size(spec, len(tasks)))]
        # Ask every actor where it landed before handing out work: placement is Ray's decision at actor
        # creation, and this also waits until each actor is up.
        self.placements[spec.name] = self.ray.get([actor.devices.remote() for actor in actors])
        pool = ActorPool(actors)
        try:
            # Largest sessions first, so a long video does not start last and hold up the stage.
            order = sorted(tasks, key=lambda t: -(t.session.probe.duration if t.session.probe else 0.0))
            yield from pool.map_unordered(lambda actor, task: actor.process.remote(task), order)
        finally:
            for actor in actors:
                self.ray.kill(actor)

    def close(self) -> None:
        if self._owns_ray:
            self.ray.shutdown()


class _RayWorker(StageWorker):
    """A StageWorker living in a Ray actor; it also reports which accelerators Ray gave it."""

    def devices(self) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")


def make_executor(name: str, ray_address: str | None = None, workers: int | None = None,
                  num_cpus: int | None = None, worker_logs: bool = True) -> Executor:
    """``inline`` or ``ray``; a Ray address implies ``ray``. ``worker_logs=False`` keeps Ray workers' output
    (model libraries' chatter) out of this terminal."""
    if name == "inline" and not ray_address:
        return InlineExecutor()
    if name in ("ray", "inline"):
        return RayExecutor(ray_address, workers, num_cpus=num_cpus, worker_logs=worker_logs)
    raise ConfigError(f"unknown executor {name!r}; use 'inline' or 'ray'")
