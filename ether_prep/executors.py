"""Executors decide where stages run. The Ray executor is the only place in ether-prep that imports ray.

The runner walks every session through the pipeline on its own and hands the executor one :class:`Task`
per (session, stage) as soon as that session's upstream stages are done; the executor returns outcomes as
they finish (:meth:`Executor.results`) and hears when a stage can get no more tasks
(:meth:`Executor.stage_finished`). Both executors run that same streaming plan:

- :class:`InlineExecutor`: plain Python in this process, the reference. The earliest stage's task goes
  first, so stages run one after another with one model loaded at a time (tests, debugging, small jobs).
- :class:`RayExecutor`: Ray Core. One pool of actors per stage, each actor holding a :class:`StageWorker`
  with its model loaded once and asking Ray for the stage's ``num_cpus``/``num_gpus``; Ray places the
  actors (GPUs, nodes) and restarts lost ones. Pools run side by side: a session enters ``transcribe`` while
  others are still in ``audio`` and ``face`` has the GPUs it does not need. A task goes to an actor only
  when that actor is free, so queues wait in the driver (backpressure) and a long session never holds a
  short one behind it. Pool sizes follow the work (see :meth:`RayExecutor._schedule`): every stage with
  tasks waiting gets an actor, pools grow where their queue outlasts an actor's start, idle actors make way
  for backlogs, and spare resources start the next stages' actors early. A worker lost mid-session
  (process or node) is restarted by Ray or replaced, and the session handed to another, at most
  ``max_attempts`` times; an error inside the stage is that session's failure and never retried. A long
  recording that its stage computes in time windows (``Stage.windowed``) comes as one task per window,
  spread over the stage's actors like sessions (a lost window is retried like a task), then a join task.
  Nothing imports or starts Ray before the first task.

:func:`make_executor` also picks between them for ``auto``: inline for a small job on a machine without
GPUs (fewer than :data:`AUTO_RAY_MIN_SESSIONS` sessions or :data:`AUTO_RAY_MIN_MEDIA_S` seconds of media
to compute), Ray otherwise (a GPU here, a cluster address, or a larger job).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from .errors import ConfigError, ExecutorError
from .spec import StageSpec
from .stages import stage_class
from .stages.base import Stage
from .worker import Outcome, ProgressFn, StageWorker, Task

__all__ = ["AUTO_RAY_MIN_MEDIA_S", "AUTO_RAY_MIN_SESSIONS", "ActorRecord", "Executor", "InlineExecutor",
           "RayExecutor", "local_gpus", "make_executor"]

# ``auto`` starts Ray (about 10 s here) only for at least this many sessions and seconds of media to compute.
AUTO_RAY_MIN_SESSIONS = 4
AUTO_RAY_MIN_MEDIA_S = 600.0
# Ray restarts a crashed actor process this often before the actor counts as gone (then it is replaced).
_MAX_RESTARTS = 2
# What starting an actor is assumed to cost until one has started (seconds).
_START_S = 2.0
# How often the driver asks Ray for in-session progress and for the cluster's resources (seconds).
_PROGRESS_EVERY_S = 0.5
_RESOURCES_EVERY_S = 10.0
# How long the driver tries to open a TCP connection to a cluster address before ray.init (which, with nothing
# there, retries for many minutes before it gives up).
_REACH_S = 5.0


class Executor(Protocol):
    """Where tasks run. ``placements``: per stage, the accelerators each worker was given."""

    @property
    def placements(self) -> dict[str, list[str]]: ...

    def submit(self, task: Task) -> None: ...

    def results(self, timeout: float) -> list[Outcome]:
        """Outcomes of finished tasks: waits up to ``timeout`` s for the first; empty when nothing is pending."""
        ...

    def stage_finished(self, stage: str) -> None:
        """No more tasks will come for ``stage``: its workers may go."""
        ...

    def close(self) -> None: ...


def _order(specs: Sequence[StageSpec]) -> dict[str, int]:
    return {spec.name: i for i, spec in enumerate(specs)}


class InlineExecutor:
    """Runs every task in this process: the earliest stage first, the longest session first within it."""

    def __init__(self, specs: Sequence[StageSpec], store_path: str | Path, progress: ProgressFn | None = None) -> None:
        self._specs = {spec.name: spec for spec in specs}
        self._index = _order(specs)
        self._store = store_path
        self._progress = progress
        self._queue: list[tuple[int, float, int, Task]] = []
        self._seq = itertools.count()
        self._workers: dict[str, StageWorker] = {}

    @property
    def placements(self) -> dict[str, list[str]]:
        return {}

    def submit(self, task: Task) -> None:
        heapq.heappush(self._queue, (self._index[task.stage], -task.media_s, next(self._seq), task))

    def results(self, timeout: float) -> list[Outcome]:
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


# ----------------------------------------------------------------------------------------------------- Ray
@dataclass
class ActorRecord:
    """One Ray actor of a run: its stage, the accelerators Ray gave it, and when it lived (driver clock)."""

    stage: str
    name: str
    created: float
    devices: str | None = None  # CUDA_VISIBLE_DEVICES as the actor found it once up; None until then
    up: float | None = None  # when it first answered
    ended: float | None = None


@dataclass
class _Job:
    task: Task
    losses: list[str] = field(default_factory=list)  # why earlier attempts were lost
    ref: Any = None
    started: float = 0.0


@dataclass
class _Actor:
    handle: Any
    record: ActorRecord
    ping: Any = None  # devices() call in flight: the actor is starting or restarting
    job: _Job | None = None
    up: bool = False  # has answered a ping at least once
    idle_since: float = 0.0  # driver clock

    @property
    def idle(self) -> bool:
        return self.ping is None and self.job is None


class _Pool:
    """One stage's actors and the tasks waiting for one of them."""

    def __init__(self, spec: StageSpec, index: int, cls: type[Stage], upstream: list[str]) -> None:
        self.spec, self.name, self.index, self.cls, self.upstream = spec, spec.name, index, cls, upstream
        self.need = {"CPU": spec.resources.num_cpus, "GPU": spec.resources.num_gpus}
        self.queue: list[tuple[float, int, _Job]] = []
        self._seq = itertools.count()
        self.actors: list[_Actor] = []
        self.finished = False
        self.start_failures = 0
        self.unplaceable: str | None = None  # why no node of the cluster can hold one of its actors
        self.made = 0
        self.task_s, self.tasks_done = 0.0, 0  # time its finished tasks took, model loads excluded
        self.setup_s = 0.0  # the longest model load one of its actors took

    def push(self, job: _Job, first: bool = False) -> None:
        # Longest session first, so a long recording does not start last; a retried one goes before all.
        heapq.heappush(self.queue, (-float("inf") if first else -job.task.media_s, next(self._seq), job))

    def pop(self) -> _Job:
        return heapq.heappop(self.queue)[-1]

    @property
    def busy(self) -> bool:
        return bool(self.queue) or any(a.job for a in self.actors)

    def wants_actor(self, cap: int | None, start_s: float) -> bool:
        """Whether one more actor would pay: tasks wait beyond the free actors, and the queue would keep each
        actor busy longer than starting one takes (``start_s``). A task takes what this stage's finished
        tasks took on average; before any has finished, at least as long as the oldest running one."""
        free = sum(1 for a in self.actors if a.job is None)
        if len(self.queue) <= free or (cap is not None and len(self.actors) >= cap):
            return False
        if self.tasks_done:
            per_task = self.task_s / self.tasks_done
        else:
            per_task = max((time.time() - a.job.started for a in self.actors if a.job), default=0.0)
        return per_task * len(self.queue) / len(self.actors) > start_s


def _add(a: dict[str, float], b: dict[str, float], sign: float = 1.0) -> dict[str, float]:
    return {k: a.get(k, 0.0) + sign * b.get(k, 0.0) for k in a.keys() | b.keys()}


def _fits(used: dict[str, float], need: dict[str, float], total: dict[str, float]) -> bool:
    return all(used.get(k, 0.0) + v <= total.get(k, 0.0) + 1e-9 for k, v in need.items() if v > 0)


def _check_reachable(address: str) -> None:
    """Fail at once, with the fix, when nothing listens at a ``HOST:PORT`` (or ``ray://HOST:PORT``) cluster
    address; other forms (``auto``, ``local``) are Ray's to resolve."""
    match = re.fullmatch(r"(?:ray://)?\[?([^\[\]/]+?)\]?:(\d+)/?", address.strip())
    if match is None:
        return
    host, port = match.group(1), int(match.group(2))
    try:
        socket.create_connection((host, port), timeout=_REACH_S).close()
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ExecutorError(f"cannot reach the Ray cluster at {address!r}: nothing answers at {host}:{port} "
                            f"({why}); start it there (`ray start --head --port {port}`), correct --ray-address "
                            "or RAY_ADDRESS, or leave both unset to run on a local Ray instance") from exc


def _start_failed(address: str | None, exc: BaseException) -> str:
    """What a failed ``ray.init`` means, with Ray's own first line, and what to do."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    cause = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    if address:
        return (f"cannot connect to the Ray cluster at {address!r} ({cause}); check that the cluster runs and that "
                "its Ray version is this one's, correct --ray-address or RAY_ADDRESS, or leave both unset to run "
                "on a local Ray instance")
    import tempfile

    where = os.path.join(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray")
    return (f"a local Ray instance did not start ({cause}); check free space and memory, and that {where} (Ray's "
            "session files and sockets, under RAY_TMPDIR or TMPDIR) is a short path on a local disk, or run "
            "without Ray: --executor inline")


def _why(exc: BaseException) -> str:
    """One line on a Ray error: its first, or for an actor whose ``__init__`` raised, the exception's own."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    line = (lines[-1] if getattr(exc, "actor_init_failed", False) else lines[0]) if lines else ""
    return f"{type(exc).__name__}: {line}"


class RayExecutor:
    """Streams tasks through one pool of Ray actors per stage (see the module docstring).

    ``address``: a Ray cluster (``auto``, ``HOST:PORT``; default ``RAY_ADDRESS``, else a local instance
    with ``num_cpus``/``num_gpus``); an instance already initialised in this process is used as it is.
    ``workers`` caps the actors of each stage. ``actor_log`` records every actor made.
    """

    def __init__(self, specs: Sequence[StageSpec], store_path: str | Path, *, address: str | None = None,
                 workers: int | None = None, num_cpus: int | None = None, num_gpus: int | None = None,
                 worker_logs: bool = True, progress: ProgressFn | None = None, max_attempts: int = 3) -> None:
        self.store_path = str(store_path)
        self.address, self.workers, self.max_attempts = address, workers, max_attempts
        self._init_args = {"num_cpus": num_cpus, "num_gpus": num_gpus, "log_to_driver": worker_logs}
        self._progress = progress
        names = {spec.name for spec in specs}
        self._pools = {spec.name: _Pool(spec, i, stage_class(spec.name),
                                        [d for d in stage_class(spec.name).requires if d in names])
                       for i, spec in enumerate(specs)}
        self.actor_log: list[ActorRecord] = []
        self._failed: list[Outcome] = []  # outcomes decided in the driver, handed out by the next results()
        self.ray: Any = None  # set once Ray is up (see _start)
        self._owns_ray = False
        self._board: Any = None  # set once Ray is up: close() after a failed start must not hide its error

    @property
    def placements(self) -> dict[str, list[str]]:
        """Per stage, the accelerators (CUDA_VISIBLE_DEVICES) Ray gave each actor when it was made."""
        out: dict[str, list[str]] = {}
        for rec in self.actor_log:
            if rec.devices is not None:
                out.setdefault(rec.stage, []).append(rec.devices)
        return out

    # -------------------------------------------------------------------------------------------- lifecycle
    def _start(self) -> None:
        # Under `uv run`, Ray would otherwise copy the project and rebuild its venv for its workers; local
        # workers already share the driver's environment. Ray reads the flag when it is first imported.
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        import ray
        from ray.exceptions import RayError, RayTaskError

        self._RayError, self._RayTaskError = RayError, RayTaskError
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False,
                                      "log_to_driver": self._init_args["log_to_driver"]}
            address = self.address or os.environ.get("RAY_ADDRESS")
            if address:
                _check_reachable(address)
                kwargs["address"] = address
            else:
                kwargs.update(num_cpus=self._init_args["num_cpus"], num_gpus=self._init_args["num_gpus"])
            # ray.init installs a SIGTERM handler of its own (sys.exit); one the application set (the CLI's,
            # which stops a run like Ctrl-C) is put back.
            term = signal.getsignal(signal.SIGTERM)
            try:
                ray.init(**kwargs)
            except Exception as exc:  # ConnectionError, RuntimeError, TimeoutError, ValueError: Ray's own words
                with contextlib.suppress(Exception):  # whatever it had started of a local instance
                    ray.shutdown()
                raise ExecutorError(_start_failed(address, exc)) from exc
            finally:
                if callable(term) and threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGTERM, term)
            self._owns_ray = True
        self.ray = ray  # only once Ray is up: close() has something to end
        self._actor_cls = ray.remote(_RayWorker)
        self._run = uuid.uuid4().hex[:8]
        self._board_name = f"ether-prep-{self._run}-progress" if self._progress is not None else None
        self._board = (ray.remote(_ProgressBoard).options(num_cpus=0, name=self._board_name).remote()
                       if self._board_name else None)
        self._next_progress = 0.0
        self._next_resources = 0.0
        self._refresh_resources()

    def _refresh_resources(self) -> None:
        """The cluster's CPUs and GPUs now (nodes join and leave), and which pools no node can hold."""
        now = time.monotonic()
        if now < self._next_resources:
            return
        self._next_resources = now + _RESOURCES_EVERY_S
        nodes = [n.get("Resources", {}) for n in self.ray.nodes() if n.get("Alive")]
        self._total = {k: sum(float(n.get(k, 0.0)) for n in nodes) for k in ("CPU", "GPU")}
        for pool in self._pools.values():
            if any(_fits({}, pool.need, n) for n in nodes):
                pool.unplaceable = None
            else:
                pool.unplaceable = (f"stage {pool.name!r} asks each worker for {pool.spec.resources.num_cpus:g} "
                                    f"CPU and {pool.spec.resources.num_gpus:g} GPU, but no node of the Ray cluster "
                                    f"has that much (the whole cluster: {self._total['CPU']:g} CPU, "
                                    f"{self._total['GPU']:g} GPU); lower `resources` in pipelines.yaml, use a "
                                    "pipeline for this hardware (e.g. --pipeline cpu), or add nodes")

    def close(self) -> None:
        if self.ray is None:
            return
        for pool in self._pools.values():
            for actor in list(pool.actors):
                self._end(pool, actor)
        if self._board is not None:
            self.ray.kill(self._board)
        if self._owns_ray:
            self.ray.shutdown()

    # ------------------------------------------------------------------------------------------ interface
    def submit(self, task: Task) -> None:
        if self.ray is None:
            self._start()
        self._pools[task.stage].push(_Job(task))

    def stage_finished(self, stage: str) -> None:
        pool = self._pools[stage]
        pool.finished = True
        for actor in [a for a in pool.actors if a.job is None]:
            self._end(pool, actor)

    def results(self, timeout: float) -> list[Outcome]:
        if self.ray is None:
            return []
        self._refresh_resources()
        for pool in self._pools.values():
            if pool.unplaceable and pool.queue:
                self._fail_queue(pool, pool.unplaceable)
        self._schedule()
        outcomes, self._failed = self._failed, []
        waiting = {}
        for pool in self._pools.values():
            for actor in pool.actors:
                if actor.ping is not None:
                    waiting[actor.ping] = (pool, actor)
                elif actor.job is not None:
                    waiting[actor.job.ref] = (pool, actor)
        if not waiting:
            return outcomes + self._fail_unplaceable()
        done, _ = self.ray.wait(list(waiting), num_returns=1, timeout=0 if outcomes else timeout)
        if done:  # and every other one that is ready by now
            done, _ = self.ray.wait(list(waiting), num_returns=len(waiting), timeout=0)
        for ref in done:
            pool, actor = waiting[ref]
            if ref is actor.ping:
                self._on_ping(pool, actor)
            else:
                outcomes.extend(self._on_result(pool, actor))
        self._poll_progress()
        self._schedule()  # hand the actors just freed their next task before the caller plans more
        return outcomes

    # ----------------------------------------------------------------------------------------- scheduling
    def _held(self) -> dict[str, float]:
        held: dict[str, float] = {}
        for pool in self._pools.values():
            for _ in pool.actors:
                held = _add(held, pool.need)
        return held

    def _expecting(self, pool: _Pool) -> bool:
        """Whether tasks are on their way: a stage it reads is at work."""
        return any(self._pools[up].busy for up in pool.upstream)

    def _victims(self, pool: _Pool, held: dict[str, float], first: bool, start_s: float) -> list[tuple[_Pool, _Actor]]:
        """Idle actors of other stages to end so that one of ``pool`` fits, or none if that cannot be done.

        Any stage that has finished gives its actors up. For a stage's first actor (``first``), so that every
        stage with work has one: also the idle actor of a stage with nothing queued, or, between two of its
        tasks, one of a stage that has several. For one more actor: only an actor idle, with nothing queued,
        for longer than replacing it would take (an actor start plus its stage's model load).
        """
        now = time.monotonic()
        candidates = []
        for other in self._pools.values():
            if other is pool:
                continue
            for actor in other.actors:
                if not actor.idle:
                    continue
                if other.finished:
                    rank = 0
                elif first and (not other.queue or len(other.actors) > 1):
                    rank = 1 if not other.queue else 2
                elif not other.queue and now - actor.idle_since > start_s + other.setup_s:
                    rank = 1
                else:
                    continue
                candidates.append((rank, actor.idle_since, other, actor))
        chosen, freed = [], held
        for _, _, other, actor in sorted(candidates, key=lambda c: (c[0], c[1])):
            if _fits(freed, pool.need, self._total):
                break
            if any(other.need.get(k, 0.0) > 0 and freed.get(k, 0.0) + v > self._total.get(k, 0.0) + 1e-9
                   for k, v in pool.need.items() if v > 0):
                chosen.append((other, actor))
                freed = _add(freed, other.need, -1.0)
        return chosen if _fits(freed, pool.need, self._total) else []

    def _schedule(self) -> None:
        """Start actors, then hand out tasks. First the first actor of each stage with tasks waiting (every
        stage with work gets one, at the next task boundary of a stage with several if need be); then more
        actors where queues justify them (see :meth:`_Pool.wants_actor`), largest backlog per actor first;
        last, with resources nobody else wants, the first actor of a stage whose tasks are on their way, so
        that its start overlaps the upstream work."""
        held, stuck = self._held(), set()
        ups = [a.up - a.created for a in self.actor_log if a.up is not None]
        start_s = sum(ups) / len(ups) if ups else _START_S
        while True:
            options: list[tuple[tuple[float, ...], _Pool]] = []
            for p in self._pools.values():
                if p.name in stuck or p.finished or p.unplaceable:
                    continue
                if not p.actors and p.queue:
                    options.append(((0, p.index), p))
                elif p.actors and p.wants_actor(self.workers, start_s):
                    options.append(((1, -len(p.queue) / len(p.actors), p.index), p))
                elif not p.actors and self._expecting(p):
                    options.append(((2, p.index), p))
            if not options:
                break
            rank, pool = min(options, key=lambda o: o[0])
            if not _fits(held, pool.need, self._total):
                victims = self._victims(pool, held, rank[0] == 0, start_s) if rank[0] < 2 else []
                if not victims:
                    stuck.add(pool.name)
                    continue
                for other, actor in victims:
                    self._end(other, actor)
                    held = _add(held, other.need, -1.0)
            self._create(pool)
            held = _add(held, pool.need)
        for pool in self._pools.values():
            for actor in pool.actors:
                if actor.idle and pool.queue:
                    job = pool.pop()
                    job.started = time.time()
                    job.ref = actor.handle.process.remote(job.task)
                    actor.job = job

    def _create(self, pool: _Pool) -> None:
        pool.made += 1
        name = f"ether-prep-{self._run}-{pool.name}-{pool.made}"
        res = pool.spec.resources
        handle = self._actor_cls.options(
            name=name, num_cpus=res.num_cpus, num_gpus=res.num_gpus, max_restarts=_MAX_RESTARTS, max_task_retries=0,
        ).remote(pool.spec, self.store_path, pool.cls, self._board_name)
        record = ActorRecord(pool.name, name, time.monotonic())
        self.actor_log.append(record)
        # Ask every actor where it landed before handing it work: placement is Ray's decision at creation,
        # and the answer also says the actor is up.
        pool.actors.append(_Actor(handle, record, ping=handle.devices.remote()))

    def _end(self, pool: _Pool, actor: _Actor) -> None:
        pool.actors.remove(actor)
        actor.record.ended = time.monotonic()
        self.ray.kill(actor.handle)

    # ----------------------------------------------------------------------------------------- completion
    def _on_ping(self, pool: _Pool, actor: _Actor) -> None:
        try:
            devices = self.ray.get(actor.ping)
        except self._RayError as exc:  # it could not start, or is gone for good: replaced by _schedule
            self._end(pool, actor)
            if not actor.up:
                pool.start_failures += 1
                if pool.start_failures >= self.max_attempts:
                    self._fail_queue(pool, f"its workers could not start ({_why(exc)})")
            return
        actor.ping = None
        if actor.up:  # restarted by Ray after its process died: possibly elsewhere, so a new placement
            actor.record.ended = time.monotonic()
            actor.record = ActorRecord(pool.name, actor.record.name, time.monotonic())
            self.actor_log.append(actor.record)
        actor.up, actor.record.devices, pool.start_failures = True, devices, 0
        actor.record.up = actor.idle_since = time.monotonic()
        if pool.finished and not pool.queue:
            self._end(pool, actor)

    def _on_result(self, pool: _Pool, actor: _Actor) -> list[Outcome]:
        job, actor.job = actor.job, None
        assert job is not None
        task = job.task
        try:
            outcome: Outcome = self.ray.get(job.ref)
        except self._RayTaskError as exc:  # raised by the worker outside the stage (e.g. store unreachable)
            cause = exc.cause if exc.cause is not None else exc
            outcome = Outcome(task.session.id, task.stage, "failed",
                              f"{task.session.relpath}: {type(cause).__name__} in the worker of stage "
                              f"{task.stage!r}: {cause}", media_s=task.media_s, started_at=job.started,
                              window_index=task.window_index)
        except self._RayError as exc:  # the worker was lost (process or node): another one takes the session
            job.losses.append(_why(exc))
            actor.ping = actor.handle.devices.remote()  # answers once Ray has restarted it, fails if it is gone
            if len(job.losses) < self.max_attempts:
                pool.push(job, first=True)
                return []
            outcome = Outcome(task.session.id, task.stage, "failed",
                              f"{task.session.relpath}: the worker computing it was lost {len(job.losses)} times "
                              f"({'; '.join(job.losses)}); not retried further", media_s=task.media_s,
                              started_at=job.started, window_index=task.window_index)
        pool.task_s += outcome.elapsed_s - outcome.setup_s
        pool.tasks_done += 1
        pool.setup_s = max(pool.setup_s, outcome.setup_s)
        actor.idle_since = time.monotonic()
        if job.losses:
            outcome = replace(outcome, retries=len(job.losses))
        if pool.finished and not pool.queue:
            self._end(pool, actor)
        return [outcome]

    def _fail_queue(self, pool: _Pool, why: str) -> None:
        while pool.queue:
            task = pool.pop().task
            self._failed.append(Outcome(task.session.id, task.stage, "failed",
                                        f"{task.session.relpath}: stage {task.stage!r} cannot run: {why}",
                                        media_s=task.media_s, window_index=task.window_index))

    def _fail_unplaceable(self) -> list[Outcome]:
        """Nothing runs and tasks still wait, so no actor can be placed for them: those sessions fail."""
        for pool in self._pools.values():
            if pool.queue:
                self._fail_queue(pool, "the Ray cluster has no room for one of its workers")
        outcomes, self._failed = self._failed, []
        return outcomes

    def _poll_progress(self) -> None:
        if self._board is None or time.monotonic() < self._next_progress:
            return
        self._next_progress = time.monotonic() + _PROGRESS_EVERY_S
        running = {(p.name, a.job.task.key) for p in self._pools.values() for a in p.actors if a.job}
        for key, media_s in self.ray.get(self._board.take.remote()).items():
            if key in running:  # a late report of a session already finished would move its bar back
                self._progress(*key, media_s)


class _RayWorker(StageWorker):
    """A StageWorker living in a Ray actor: it reports its progress to the driver's board (a named actor,
    looked up by name: a handle among the constructor's arguments would not survive a restart) and which
    accelerators Ray gave it."""

    def __init__(self, spec: StageSpec, store_path: str, stage_cls: type[Stage], board: str | None) -> None:
        super().__init__(spec, store_path, stage_cls, None if board is None else self._report_to_board)
        self._board_name, self._board = board, None

    def _report_to_board(self, stage: str, session_id: str, media_s: float) -> None:
        if self._board is None:
            import ray

            self._board = ray.get_actor(self._board_name)
        self._board.report.remote(stage, session_id, media_s)

    def devices(self) -> str:
        return os.environ.get("CUDA_VISIBLE_DEVICES", "")


class _ProgressBoard:
    """An actor holding the latest in-session progress of every running task, for the driver to collect."""

    def __init__(self) -> None:
        self._latest: dict[tuple[str, str], float] = {}

    def report(self, stage: str, session_id: str, media_s: float) -> None:
        self._latest[(stage, session_id)] = media_s

    def take(self) -> dict[tuple[str, str], float]:
        latest, self._latest = self._latest, {}
        return latest


# ---------------------------------------------------------------------------------------------- choosing
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
                  workers: int | None = None, num_cpus: int | None = None, worker_logs: bool = True,
                  progress: ProgressFn | None = None, sessions: int = 0, media_s: float = 0.0) -> Executor:
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
    return RayExecutor(specs, store_path, address=ray_address, workers=workers, num_cpus=num_cpus,
                       worker_logs=worker_logs, progress=progress)
