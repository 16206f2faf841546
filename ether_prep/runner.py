"""Stage-by-stage execution with fingerprints, resume and a failure summary.

For each selected stage, over all sessions: compute the fingerprint of (stage version, backend, model,
parameters, upstream fingerprints); skip sessions whose stored marker matches; skip with a note those that
lack the stream the stage needs; hand the rest to the executor. A changed parameter therefore redoes that
stage and, through the fingerprints, every stage after it; ``force`` redoes all selected stages. Every
session runs to the end of every stage it can; failures are collected and summarised, never swallowed.
"""

from __future__ import annotations

import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Pipeline, StageSpec
from .errors import EtherPrepError, InputError, StoreError
from .executors import make_executor
from .provenance import fingerprint, library_versions
from .records import Session
from .sessions import discover_sessions, probe_session, session_from_info
from .stages import stage_class
from .stages.base import Stage
from .store import SessionGroup, StageState, Store
from .worker import Outcome, Task

__all__ = ["RunSummary", "load_sessions", "plan_stage", "run_pipeline", "stage_fingerprint", "status_table"]


@dataclass
class RunSummary:
    """Every (session, stage) outcome of a run, in the order they finished."""

    outcomes: list[Outcome] = field(default_factory=list)
    # stage -> accelerators (CUDA_VISIBLE_DEVICES) of each worker the executor made for it
    placements: dict[str, list[str]] = field(default_factory=dict)

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

    def report(self) -> str:
        lines = []
        for stage in dict.fromkeys(o.stage for o in self.outcomes):
            c = self.counts(stage)
            lines.append(f"{stage:12s} " + ", ".join(f"{n} {s}" for s, n in sorted(c.items())))
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
            raise StoreError(f"{store.path}: holds no sessions; run `ether-prep extract RAW_DIR --out {store.path}`")
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


def run_pipeline(
    pipeline: Pipeline,
    raw_dir: Path | None,
    store_path: Path,
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
    """Run the selected stages of ``pipeline`` over the recordings in ``raw_dir`` (or those in the store)."""
    from tqdm import tqdm

    specs = pipeline.select(family=family, only=only, start=start)
    store = Store(store_path)
    store.record_pipeline(pipeline.name, str(pipeline.source), pipeline.digest())
    sessions, probe_errors = load_sessions(store, raw_dir)
    summary = RunSummary()
    runner = make_executor(executor, ray_address=ray_address, workers=workers, worker_logs=progress)
    try:
        for spec in specs:
            cls = stage_class(spec.name)
            planner = cls(spec)  # describes the stage in the driver; workers build their own and load models
            model = planner.model_info()
            todo: list[Task] = []
            for session in sessions:
                group = store.session(session.id)
                try:
                    if session.id in probe_errors:
                        raise InputError(probe_errors[session.id])
                    fp, state, upstream = plan_stage(planner, session, group)
                except EtherPrepError as exc:  # this session cannot run this stage; the others go on
                    group.begin_stage(spec.name, {"stage": spec.name})
                    group.finish_stage(spec.name, "failed", None, error=str(exc))
                    summary.outcomes.append(Outcome(session.id, spec.name, "failed", str(exc)))
                    continue
                if isinstance(upstream, str):
                    summary.outcomes.append(Outcome(session.id, spec.name, "blocked", upstream))
                    continue
                if not force and state.complete and state.fingerprint == fp:
                    summary.outcomes.append(Outcome(session.id, spec.name, "cached", state.note))
                    continue
                marker = _marker(planner, upstream, model)
                stream = cls.needs_stream
                if stream and session.probe and not getattr(session.probe, f"has_{stream}"):
                    note = f"no {stream} stream in {session.relpath}: stage skipped"
                    group.begin_stage(spec.name, marker)
                    group.finish_stage(spec.name, "skipped", fp, note=note)
                    summary.outcomes.append(Outcome(session.id, spec.name, "skipped", note))
                    continue
                todo.append(Task(session, fp, marker))
            media = sum(t.session.probe.duration for t in todo if t.session.probe)
            with tqdm(total=len(todo), desc=f"{spec.name} sessions", unit="session", disable=not progress,
                      file=sys.stderr, leave=False, position=0) as bar_s, \
                 tqdm(total=round(media, 1), desc=f"{spec.name} media", unit="s", disable=not progress,
                      file=sys.stderr, position=1) as bar_m:
                for outcome in runner.map(spec, store.path, todo):
                    summary.outcomes.append(outcome)
                    bar_s.update(1)
                    bar_m.update(round(outcome.media_s, 1))
            planner.finalize(store)
    finally:
        summary.placements = dict(runner.placements)
        runner.close()
        store.consolidate()
    return summary


def status_table(store: Store, pipeline: Pipeline | None = None) -> list[dict[str, Any]]:
    """One row per (session, stage): state (done, skipped, stale, failed, running, pending) and message.

    ``stale`` means done, but with other parameters, model or upstream results than ``pipeline`` now asks for;
    a stage downstream of a stale one is stale too, since rerunning the upstream stage changes its input.
    """
    planners = {s.name: stage_class(s.name)(s) for s in pipeline.stages if s.enabled} if pipeline else {}
    rows = []
    for sid in store.session_ids():
        group = store.session(sid)
        session = session_from_info(group.info) if planners else None
        expected: dict[str, str] = {}  # stage -> the fingerprint this pipeline would give it now
        for name in planners or sorted(group.group.group_keys()):
            state = group.stage_state(name)
            shown = state.state
            if session is not None and state.complete:
                fp = _expected_fingerprint(planners[name], session, group, expected)
                expected[name] = fp or ""
                if fp != state.fingerprint:
                    shown = "stale"
            rows.append({"session": sid, "relpath": group.info.get("relpath", ""), "stage": name, "state": shown,
                         "message": state.error or state.note or ""})
    return rows


def _expected_fingerprint(stage: Stage, session: Session, group: SessionGroup, expected: dict[str, str]) -> str | None:
    """The fingerprint ``stage`` would get now, chaining the upstream stages' expected fingerprints."""
    upstream = {}
    for dep in stage.requires:
        if dep in expected:
            upstream[dep] = expected[dep]
        else:
            dep_state = group.stage_state(dep)
            if not dep_state.complete:
                return None
            upstream[dep] = dep_state.fingerprint or ""
    try:
        return stage_fingerprint(stage.spec, upstream, stage.fingerprint_inputs(session))
    except EtherPrepError:
        return None
