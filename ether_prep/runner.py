"""Streaming execution with fingerprints, resume and a failure summary.

Every session walks through the selected stages on its own: a stage is planned for a session as soon as
the stages it reads (its ``requires`` within the selection) have an outcome for that session. Planning, in
this process: compute the fingerprint of (stage version, backend, model, parameters, upstream
fingerprints, per-session inputs); a stored marker that matches makes the stage ``cached`` and the walk
goes straight on; a session lacking the stream the stage needs is ``skipped`` with a note; a failed
upstream makes it ``blocked``; anything else becomes a task for the executor, whose outcome moves the
walk on. A changed parameter therefore redoes that stage and, through the fingerprints, every stage after
it; ``force`` redoes all selected stages. When a stage has an outcome for every session its
``finalize`` runs, once. Nothing is handed to an executor (nor Ray started) when everything is cached.
Every session runs to the end of every stage it can; failures are collected and summarised, never
swallowed.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Pipeline, StageSpec
from .errors import EtherPrepError, InputError, StoreError
from .executors import ActorRecord, Executor, make_executor
from .provenance import fingerprint, library_versions
from .records import Session
from .sessions import discover_sessions, probe_session, session_from_info
from .stages import stage_class
from .stages.base import Stage
from .store import SessionGroup, StageState, Store
from .worker import Outcome, Task

__all__ = ["RunSummary", "load_sessions", "plan_stage", "run_pipeline", "stage_fingerprint", "status_table"]

# How long the driver waits for an outcome before it looks at progress again (seconds).
_POLL_S = 0.5


@dataclass
class RunSummary:
    """Every (session, stage) outcome of a run, in the order they finished."""

    outcomes: list[Outcome] = field(default_factory=list)
    # stage -> accelerators (CUDA_VISIBLE_DEVICES) of each worker the executor made for it
    placements: dict[str, list[str]] = field(default_factory=dict)
    executor: str = "none"  # what ran the tasks: inline, ray, or none (nothing to compute)
    wall_s: float = 0.0
    actors: list[ActorRecord] = field(default_factory=list)  # Ray only: every actor made, and its lifetime

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.state in ("failed", "blocked")]

    @property
    def ok(self) -> bool:
        return not self.failed

    def counts(self, stage: str | None = None) -> Counter[str]:
        return Counter(o.state for o in self.outcomes if stage is None or o.stage == stage)

    def ran(self, stage: str) -> list[str]:
        """Ids of the sessions whose ``stage`` was actually computed in this run."""
        return [o.session_id for o in self.outcomes if o.stage == stage and o.state in ("done", "failed")]

    def throughput(self, stage: str) -> tuple[float, float]:
        """(media seconds computed, wall seconds from the stage's first start to its last end) in this run."""
        runs = [o for o in self.outcomes if o.stage == stage and o.state in ("done", "failed") and o.started_at]
        if not runs:
            return 0.0, 0.0
        span = max(o.started_at + o.elapsed_s for o in runs) - min(o.started_at for o in runs)
        return sum(o.media_s for o in runs), span

    def report(self) -> str:
        lines = []
        for stage in dict.fromkeys(o.stage for o in self.outcomes):
            c = self.counts(stage)
            line = f"{stage:12s} " + ", ".join(f"{n} {s}" for s, n in sorted(c.items()))
            media, span = self.throughput(stage)
            if span > 0:
                line = f"{line:44s} {media:8.1f} media s in {span:7.1f} s: {media / span:7.1f}x real time"
            lines.append(line)
        how = f"{self.executor} executor" if self.executor != "none" else "nothing to compute: no executor started"
        lines.append(f"{len({o.session_id for o in self.outcomes})} session(s) in {self.wall_s:.1f} s ({how})")
        for o in self.outcomes:
            if o.retries:
                lines.append(f"  RETRIED {o.session_id} [{o.stage}]: its worker was lost {o.retries}x; then {o.state}")
        for o in self.failed:
            lines.append(f"  {o.state.upper()} {o.session_id} [{o.stage}]: {o.message}")
        return "\n".join(lines)


def stage_fingerprint(spec: StageSpec, upstream: dict[str, str], inputs: dict[str, Any] | None = None) -> str:
    payload: dict[str, Any] = {"stage": spec.identity(), "upstream": upstream}
    if inputs:
        payload["inputs"] = inputs
    return fingerprint(payload)


def _probe_all(sessions: Sequence[Session]) -> tuple[list[Session], dict[str, str]]:
    probed, errors = [], {}
    for s in sessions:
        try:
            probed.append(probe_session(s))
        except InputError as exc:
            probed.append(s)
            errors[s.id] = str(exc)
    return probed, errors


def load_sessions(store: Store, raw_dir: Path | None) -> tuple[list[Session], dict[str, str]]:
    """Sessions of ``raw_dir`` (probed; unreadable ones mapped to their error), or those already in the store."""
    if raw_dir is None:
        sessions = [session_from_info(store.session(sid).info) for sid in store.session_ids()]
        for s in sessions:
            store.session(s.id, info=s.to_dict())  # keeps refreshed sessions.csv metadata
        if not sessions:
            raise StoreError(f"{store.url}: holds no sessions; run `ether-prep extract RAW_DIR --out {store.url}`")
        return sessions, {s.id: f"{s.relpath}: could not be probed" for s in sessions if s.probe is None}
    sessions, errors = _probe_all(discover_sessions(raw_dir))
    if not sessions:
        raise InputError(f"{raw_dir}: no recordings found (looked for video, audio and image files)")
    for s in sessions:
        store.session(s.id, info=s.to_dict())
    return sessions, errors


def _marker(stage: Stage, upstream: dict[str, str], model: dict[str, str]) -> dict[str, Any]:
    spec = stage.spec
    return {"stage": spec.name, "version": stage.version, "backend": spec.backend, "model": model,
            "params": spec.params_dict(), "resources": vars(spec.resources).copy(), "upstream": upstream,
            "libraries": library_versions(*stage.library_names())}


def plan_stage(stage: Stage, session: Session, group: SessionGroup) -> tuple[str, StageState, dict[str, str] | str]:
    """(fingerprint, stored state, upstream fingerprints) for one session, or a blocking reason."""
    spec = stage.spec
    upstream: dict[str, str] = {}
    for dep in stage.requires:
        state = group.stage_state(dep)
        if not state.complete:
            return "", group.stage_state(spec.name), f"needs stage {dep!r}, which is {state.state}"
        upstream[dep] = state.fingerprint or ""
    fp = stage_fingerprint(spec, upstream, stage.fingerprint_inputs(session))
    return fp, group.stage_state(spec.name), upstream


class _Walk:
    """Each session's way through the selected stages (see the module docstring); planning happens here, in
    the driver, because a stage's fingerprint depends on the upstream fingerprints just written."""

    def __init__(self, specs: Sequence[StageSpec], store: Store, sessions: Sequence[Session],
                 probe_errors: dict[str, str], force: bool, summary: RunSummary) -> None:
        self.store, self.probe_errors, self.force, self.summary = store, probe_errors, force, summary
        # Planners describe each stage in the driver; workers build their own and load the models.
        self.planners = {spec.name: stage_class(spec.name)(spec) for spec in specs}
        self.models = {name: planner.model_info() for name, planner in self.planners.items()}
        self.deps = {name: [d for d in planner.requires if d in self.planners]
                     for name, planner in self.planners.items()}
        self.downstream = {name: [n for n in self.planners if name in self.deps[n]] for name in self.planners}
        self.sessions = {s.id: s for s in sessions}
        self.settled: dict[str, set[str]] = {s.id: set() for s in sessions}
        self.waiting = {name: set(self.sessions) for name in self.planners}  # sessions without an outcome
        self.groups: dict[str, SessionGroup] = {}
        self.ready: list[Task] = []
        self.running = 0
        self.finished: list[str] = []  # stages with an outcome for every session, in the order they got there
        self.executor: Executor | None = None

    def start(self) -> None:
        """Plan every session as far as it goes without computing anything."""
        for session in self.sessions.values():
            for name in self.planners:
                if not self.deps[name]:
                    self._plan(session, name)

    @property
    def busy(self) -> bool:
        return bool(self.ready) or self.running > 0

    def take_ready(self) -> list[Task]:
        tasks, self.ready = self.ready, []
        self.running += len(tasks)
        return tasks

    def settle(self, outcome: Outcome) -> None:
        """An executor's outcome: record it and plan what it unblocks."""
        self.running -= 1
        if outcome.state == "failed":
            # Failed in the executor (a worker lost for good, no room for one): the marker still says
            # 'running', or nothing; make it say why.
            group = self._group(outcome.session_id)
            if group.stage_state(outcome.stage).state in ("pending", "running"):
                group.finish_stage(outcome.stage, "failed", None, error=outcome.message)
        self._record(outcome)

    def _group(self, session_id: str) -> SessionGroup:
        if session_id not in self.groups:
            self.groups[session_id] = self.store.session(session_id)
        return self.groups[session_id]

    def _record(self, outcome: Outcome) -> None:
        sid, name = outcome.session_id, outcome.stage
        self.summary.outcomes.append(outcome)
        self.settled[sid].add(name)
        self.waiting[name].discard(sid)
        for nxt in self.downstream[name]:
            if all(d in self.settled[sid] for d in self.deps[nxt]):
                self._plan(self.sessions[sid], nxt)
        if not self.waiting[name]:
            self.planners[name].finalize(self.store)
            self.finished.append(name)
            if self.executor is not None:
                self.executor.stage_finished(name)

    def _plan(self, session: Session, name: str) -> None:
        """Cached, skipped, failed or blocked at once; otherwise a task. (A stage declaring ``window_split``
        would be planned here as several window tasks plus a join; not done yet: one task per session.)"""
        planner, group = self.planners[name], self._group(session.id)
        try:
            if session.id in self.probe_errors:
                raise InputError(self.probe_errors[session.id])
            fp, state, upstream = plan_stage(planner, session, group)
        except EtherPrepError as exc:  # this session cannot run this stage; the others go on
            group.begin_stage(name, {"stage": name})
            group.finish_stage(name, "failed", None, error=str(exc))
            self._record(Outcome(session.id, name, "failed", str(exc)))
            return
        if isinstance(upstream, str):
            self._record(Outcome(session.id, name, "blocked", upstream))
            return
        if not self.force and state.complete and state.fingerprint == fp:
            self._record(Outcome(session.id, name, "cached", state.note))
            return
        marker = _marker(planner, upstream, self.models[name])
        stream = planner.needs_stream
        if stream and session.probe and not getattr(session.probe, f"has_{stream}"):
            note = f"no {stream} stream in {session.relpath}: stage skipped"
            group.begin_stage(name, marker)
            group.finish_stage(name, "skipped", fp, note=note)
            self._record(Outcome(session.id, name, "skipped", note))
            return
        self.ready.append(Task(session, name, fp, marker))


class _Bars:
    """Per-stage progress bars on stderr in media seconds; they move within a session as workers report."""

    def __init__(self, specs: Sequence[StageSpec], enabled: bool) -> None:
        self.bars: dict[str, Any] = {}
        self.shown: dict[tuple[str, str], float] = {}  # (stage, session) -> media seconds on its bar so far
        if enabled:
            from tqdm import tqdm

            self.bars = {spec.name: tqdm(total=0.0, desc=f"{spec.name:12s}", unit="s", file=sys.stderr,
                                         position=i, leave=False, dynamic_ncols=True,
                                         bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s media "
                                                    "[{elapsed}<{remaining}, {rate_fmt}]")
                         for i, spec in enumerate(specs)}

    def add(self, task: Task) -> None:
        if self.bars:
            bar = self.bars[task.stage]
            bar.total += task.media_s
            bar.refresh()
            self.shown[(task.stage, task.session.id)] = 0.0

    def advance(self, stage: str, session_id: str, media_s: float) -> None:
        key = (stage, session_id)
        if key in self.shown and media_s > self.shown[key]:
            self.bars[stage].update(media_s - self.shown[key])
            self.shown[key] = media_s

    def finish(self, outcome: Outcome) -> None:
        key = (outcome.stage, outcome.session_id)
        if key in self.shown:
            self.bars[outcome.stage].update(max(outcome.media_s - self.shown.pop(key), 0.0))

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def run_pipeline(
    pipeline: Pipeline,
    raw_dir: Path | None,
    store_path: Path | str,
    *,
    family: str | None = "extract",
    only: list[str] | None = None,
    start: str | None = None,
    force: bool = False,
    executor: str = "inline",
    workers: int | None = None,
    ray_address: str | None = None,
    progress: bool = False,
) -> RunSummary:
    """Run the selected stages of ``pipeline`` over the recordings in ``raw_dir`` (or those in the store).

    ``store_path``: a folder, or an fsspec URL (``file://``, ``s3://``, ``gs://``). ``executor``: ``inline``,
    ``ray`` or ``auto`` (see :mod:`ether_prep.executors`). ``progress``: bars on a terminal and Ray workers'
    logs; False keeps both quiet.
    """
    t0 = time.perf_counter()
    specs = pipeline.select(family=family, only=only, start=start)
    store = Store(store_path)
    sessions, probe_errors = load_sessions(store, raw_dir)
    summary = RunSummary()
    walk = _Walk(specs, store, sessions, probe_errors, force, summary)
    bars = _Bars(specs, enabled=progress and sys.stderr.isatty())
    runner: Executor | None = None
    try:
        walk.start()
        if walk.ready:  # something to compute: only now is an executor (and perhaps Ray) needed
            todo = {t.session.id: t.media_s for t in walk.ready}
            runner = make_executor(executor, specs, store.url, ray_address=ray_address, workers=workers,
                                   worker_logs=progress, progress=bars.advance if bars.bars else None,
                                   sessions=len(todo), media_s=sum(todo.values()))
            summary.executor = type(runner).__name__.removesuffix("Executor").lower()
            walk.executor = runner
            for name in walk.finished:
                runner.stage_finished(name)
        while walk.busy:
            assert runner is not None
            for task in walk.take_ready():
                bars.add(task)
                runner.submit(task)
            for outcome in runner.results(timeout=_POLL_S):
                bars.finish(outcome)
                walk.settle(outcome)
    finally:
        bars.close()
        if runner is not None:
            summary.placements = dict(runner.placements)
            summary.actors = list(getattr(runner, "actor_log", []))
            runner.close()
        store.consolidate()
        summary.wall_s = time.perf_counter() - t0
    return summary


def status_table(store: Store, pipeline: Pipeline | None = None) -> list[dict[str, Any]]:
    """One row per (session, stage): state (done, skipped, stale, failed, running, pending) and message.

    ``stale`` means done, but with other parameters, model or upstream results than ``pipeline`` now asks for.
    """
    planners = {s.name: stage_class(s.name)(s) for s in pipeline.stages if s.enabled} if pipeline else {}
    rows = []
    for sid in store.session_ids():
        group = store.session(sid)
        session = session_from_info(group.info) if planners else None
        for name in planners or sorted(group.group.group_keys()):
            state = group.stage_state(name)
            shown = state.state
            if session is not None and state.complete:
                fp, _, upstream = plan_stage(planners[name], session, group)
                if isinstance(upstream, str) or fp != state.fingerprint:
                    shown = "stale"
            rows.append({"session": sid, "relpath": group.info.get("relpath", ""), "stage": name, "state": shown,
                         "message": state.error or state.note or ""})
    return rows
