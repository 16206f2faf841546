"""The Ray executor: the only module of ether-prep that imports ray (inside :meth:`RayExecutor._start`, so that
importing this module costs nothing and a cached run never starts Ray).

One pool of actors per stage, each actor holding a :class:`StageWorker` with its model loaded once and asking
Ray for the stage's ``num_cpus``/``num_gpus``; Ray places the actors (GPUs, nodes) and restarts lost ones.
Pools run side by side: a session enters ``transcribe`` while others are still in ``audio`` and ``face`` has
the GPUs it does not need. A task goes to an actor only when that actor is free, so queues wait in the driver
(backpressure) and a long session never holds a short one behind it. How many actors each pool has is
:func:`.policy.decide`'s decision; this module describes the pools to it, applies what it returns (Ray calls)
and hands tasks to free actors. A worker lost mid-session (process or node) is restarted by Ray or replaced,
and the session handed to another, at most ``max_attempts`` times; an error inside the stage is that session's
failure and never retried. A window task (``Stage.windowed``) is scheduled like a session.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import re
import signal
import socket
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import ExecutorError
from ..spec import StageSpec
from ..stages import stage_class
from ..stages.base import Stage
from ..worker import Outcome, ProgressFn, StageWorker, Task
from .policy import ActorState, ActorView, PoolView, Resources, decide, fits

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
    def state(self) -> ActorState:
        if self.ping is not None:
            return ActorState.STARTING
        return ActorState.IDLE if self.job is None else ActorState.BUSY


class _Pool:
    """One stage's actors and the tasks waiting for one of them."""

    def __init__(self, spec: StageSpec, cls: type[Stage], upstream: list[str]) -> None:
        self.spec, self.name, self.cls, self.upstream = spec, spec.name, cls, upstream
        self.need = Resources(spec.resources.num_cpus, spec.resources.num_gpus)
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

    def per_task_s(self) -> float:
        """What one task takes: the mean of the finished ones; before any, at least the oldest running one's age."""
        if self.tasks_done:
            return self.task_s / self.tasks_done
        return max((time.time() - a.job.started for a in self.actors if a.job), default=0.0)

    def view(self, cap: int | None, expecting: bool) -> PoolView:
        """This pool as :func:`.policy.decide` sees it; actors are named by their position in :attr:`actors`."""
        now = time.monotonic()
        actors = tuple(ActorView(i, a.state, now - a.idle_since if a.state is ActorState.IDLE else 0.0)
                       for i, a in enumerate(self.actors))
        return PoolView(self.name, self.need, queued=len(self.queue), actors=actors, per_task_s=self.per_task_s(),
                        setup_s=self.setup_s, cap=cap, finished=self.finished, expecting=expecting,
                        placeable=self.unplaceable is None)


def _failed(task: Task, message: str, started_at: float = 0.0) -> Outcome:
    """A task's failure decided in the driver (no worker's outcome): the message starts with the recording."""
    return Outcome(task.session.id, task.stage, "failed", f"{task.session.relpath}: {message}", media_s=task.media_s,
                   started_at=started_at, window_index=task.window_index)


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
    where = os.path.join(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir(), "ray")
    return (f"a local Ray instance did not start ({cause}); check free space and memory, and that {where} (Ray's "
            "session files and sockets, under RAY_TMPDIR or TMPDIR) is a short path on a local disk, or run "
            "without Ray: --executor inline")


def _why(exc: BaseException) -> str:
    """One line on a Ray error: its first, or for an actor whose ``__init__`` raised, the exception's own."""
    lines = [ln.strip() for ln in re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines() if ln.strip()]
    line = (lines[-1] if getattr(exc, "actor_init_failed", False) else lines[0]) if lines else ""
    return f"{type(exc).__name__}: {line}"


def _init_ray(ray: Any, address: str | None, worker_logs: bool) -> None:
    """``ray.init`` on ``address`` (else a local instance with this machine's resources), its failure in our
    words. ray.init installs a SIGTERM handler of its own (sys.exit); one the application set (the CLI's, which
    stops a run like Ctrl-C) is put back."""
    kwargs: dict[str, Any] = {"include_dashboard": False, "configure_logging": False, "log_to_driver": worker_logs}
    if address:
        _check_reachable(address)
        kwargs["address"] = address
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


class RayExecutor:
    """Streams tasks through one pool of Ray actors per stage (see the module docstring).

    ``address``: a Ray cluster (``auto``, ``HOST:PORT``; default ``RAY_ADDRESS``, else a local instance with
    this machine's resources); an instance already initialised in this process is used as it is. ``workers``
    caps the actors of each stage. :attr:`actor_log` records every actor made.
    """

    name = "ray"

    def __init__(self, specs: Sequence[StageSpec], store_path: str | Path, *, address: str | None = None,
                 workers: int | None = None, worker_logs: bool = True, progress: ProgressFn | None = None,
                 max_attempts: int = 3) -> None:
        self.store_path = str(store_path)
        self.address, self.workers, self.max_attempts = address, workers, max_attempts
        self._worker_logs = worker_logs
        self._progress = progress
        names = {spec.name for spec in specs}
        self._pools = {spec.name: _Pool(spec, stage_class(spec.name),
                                        [d for d in stage_class(spec.name).requires if d in names])
                       for spec in specs}
        self._actor_log: list[ActorRecord] = []
        self._failed: list[Outcome] = []  # outcomes decided in the driver, handed out by the next results()
        self.ray: Any = None  # set once Ray is up (see _start)
        self._owns_ray = False
        self._board: Any = None  # set once Ray is up: close() after a failed start must not hide its error
        self._total = Resources()

    @property
    def placements(self) -> dict[str, list[str]]:
        """Per stage, the accelerators (CUDA_VISIBLE_DEVICES) Ray gave each actor when it was made."""
        out: dict[str, list[str]] = {}
        for rec in self._actor_log:
            if rec.devices is not None:
                out.setdefault(rec.stage, []).append(rec.devices)
        return out

    @property
    def actor_log(self) -> list[ActorRecord]:
        """Every actor made in this run (one record per placement: a restarted actor gets a new one)."""
        return list(self._actor_log)

    # -------------------------------------------------------------------------------------------- lifecycle
    def _start(self) -> None:
        # Under `uv run`, Ray would otherwise copy the project and rebuild its venv for its workers; local
        # workers already share the driver's environment. Ray reads the flag when it is first imported.
        os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
        import ray
        from ray.exceptions import RayError, RayTaskError

        self._RayError, self._RayTaskError = RayError, RayTaskError
        if not ray.is_initialized():
            _init_ray(ray, self.address or os.environ.get("RAY_ADDRESS"), self._worker_logs)
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
        nodes = [Resources(float(n.get("CPU", 0.0)), float(n.get("GPU", 0.0))) for n in nodes]
        self._total = sum(nodes, Resources())
        for pool in self._pools.values():
            if any(fits(Resources(), pool.need, n) for n in nodes):
                pool.unplaceable = None
            else:
                pool.unplaceable = (f"stage {pool.name!r} asks each worker for {pool.need.cpu:g} CPU and "
                                    f"{pool.need.gpu:g} GPU, but no node of the Ray cluster has that much (the "
                                    f"whole cluster: {self._total.cpu:g} CPU, {self._total.gpu:g} GPU); lower "
                                    "`resources` in pipelines.yaml, use a pipeline for this hardware (e.g. "
                                    "--pipeline cpu), or add nodes")

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
        """Marks the pool finished: the next :meth:`_schedule` stops its actors without a task."""
        self._pools[stage].finished = True

    def results(self, timeout: float) -> list[Outcome]:
        """One step of the executor, in this order: refresh the cluster's resources (every 10 s) and fail the
        queues no node can hold; :meth:`_schedule` (start and stop actors, hand out tasks); wait up to
        ``timeout`` s for the first actor to answer or finish, and take every other one ready by then;
        :meth:`_schedule` again, so that the actors just freed get their next task before the caller plans
        more. Returns the outcomes finished (and failures decided here); empty when nothing is pending."""
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
        self._schedule()
        return outcomes

    # ----------------------------------------------------------------------------------------- scheduling
    def _schedule(self) -> None:
        """Applies :func:`.policy.decide` to the pools as they are now (stops first, so that their resources
        are free for the starts), then hands each idle actor the longest task of its stage's queue."""
        pools = list(self._pools.values())
        views = [pool.view(self.workers, any(self._pools[up].busy for up in pool.upstream)) for pool in pools]
        ups = [a.up - a.created for a in self._actor_log if a.up is not None]
        decision = decide(views, self._total, start_s=sum(ups) / len(ups) if ups else _START_S)
        ending = [(self._pools[stage], self._pools[stage].actors[i]) for stage, i in decision.stops]
        for pool, actor in ending:  # looked up before any is removed: keys are positions
            self._end(pool, actor)
        for stage in decision.starts:
            self._create(self._pools[stage])
        for pool in pools:
            for actor in pool.actors:
                if actor.state is ActorState.IDLE and pool.queue:
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
        self._actor_log.append(record)
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
        except self._RayError as exc:  # it could not start, or is gone for good: the policy replaces it
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
            self._actor_log.append(actor.record)
        actor.up, actor.record.devices, pool.start_failures = True, devices, 0
        actor.record.up = actor.idle_since = time.monotonic()

    def _on_result(self, pool: _Pool, actor: _Actor) -> list[Outcome]:
        job, actor.job = actor.job, None
        assert job is not None
        task = job.task
        try:
            outcome: Outcome = self.ray.get(job.ref)
        except self._RayTaskError as exc:  # raised by the worker outside the stage (e.g. store unreachable)
            cause = exc.cause if exc.cause is not None else exc
            outcome = _failed(task, f"{type(cause).__name__} in the worker of stage {task.stage!r}: {cause}",
                              job.started)
        except self._RayError as exc:  # the worker was lost (process or node): another one takes the session
            job.losses.append(_why(exc))
            actor.ping = actor.handle.devices.remote()  # answers once Ray has restarted it, fails if it is gone
            if len(job.losses) < self.max_attempts:
                pool.push(job, first=True)
                return []
            outcome = _failed(task, f"the worker computing it was lost {len(job.losses)} times "
                                    f"({'; '.join(job.losses)}); not retried further", job.started)
        pool.task_s += outcome.elapsed_s - outcome.setup_s
        pool.tasks_done += 1
        pool.setup_s = max(pool.setup_s, outcome.setup_s)
        actor.idle_since = time.monotonic()
        if job.losses:
            outcome = replace(outcome, retries=len(job.losses))
        return [outcome]

    def _fail_queue(self, pool: _Pool, why: str) -> None:
        while pool.queue:
            task = pool.pop().task
            self._failed.append(_failed(task, f"stage {task.stage!r} cannot run: {why}"))

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
