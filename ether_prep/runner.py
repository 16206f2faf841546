"""Stage-by-stage execution with fingerprints, resume and a failure summary.

For each selected stage, over all sessions: compute the fingerprint of (stage version, backend, model,
parameters, upstream fingerprints); skip sessions whose stored marker matches; skip with a note those that
lack the stream the stage needs; hand the rest to the executor. A changed parameter therefore redoes that
stage and, through the fingerprints, every stage after it; ``force`` redoes all selected stages. Every
session runs to the end of every stage it can; failures are collected and summarised, never swallowed.
"""

from __future__ import annotations

import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Pipeline, StageSpec
from .errors import EtherPrepError, InputError, StoreError
from .executors import make_executor
from .lock import store_lock
from .provenance import fingerprint, library_versions
from .records import Session
from .sessions import probe_session, scan, session_from_info
from .stages import stage_class
from .stages.base import Stage
from .store import SessionGroup, StageState, Store
from .worker import Outcome, Task

__all__ = ["RunSummary", "load_sessions", "models_are_local", "plan_stage", "run_pipeline", "stage_fingerprint",
           "status_table"]

_log = logging.getLogger(__name__)
# Hub libraries (huggingface_hub, transformers, pyannote) read these when imported: set before any stage loads.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# Usage reports that libraries send by default (Ray's hourly usage stats, pyannote's metrics, hub telemetry).
_NO_TELEMETRY = {"RAY_USAGE_STATS_ENABLED": "0", "PYANNOTE_METRICS_ENABLED": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}


@dataclass
class RunSummary:
    """Every (session, stage) outcome of a run, in the order they finished."""

    outcomes: list[Outcome] = field(default_factory=list)
    # stage -> accelerators (CUDA_VISIBLE_DEVICES) of each worker the executor made for it
    placements: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # run-level: recordings that could not even be looked at
    notes: list[str] = field(default_factory=list)  # run-level findings that lose nothing (a link loop skipped)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.state in ("failed", "blocked")]

    @property
    def ok(self) -> bool:
        return not self.failed and not self.errors

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
        # A file that cannot be read fails every stage with one message: said once, with the stages.
        grouped: dict[tuple[str, str, str | None], list[str]] = {}
        for o in self.failed:
            grouped.setdefault((o.state, o.session_id, o.message), []).append(o.stage)
        for (state, sid, message), stages in grouped.items():
            lines.append(f"  {state.upper()} {sid} [{', '.join(stages)}]: {message}")
        lines.extend(f"  ERROR {e}" for e in self.errors)
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def stage_fingerprint(spec: StageSpec, upstream: dict[str, str], inputs: dict[str, Any] | None = None) -> str:
    payload: dict[str, Any] = {"stage": spec.identity(), "upstream": upstream}
    if inputs:
        payload["inputs"] = inputs
    return fingerprint(payload)


def _probe_all(sessions: Sequence[Session], errors: dict[str, str]) -> list[Session]:
    probed = []
    for s in sessions:
        if s.id in errors:
            probed.append(s)
            continue
        try:
            probed.append(probe_session(s))
        except InputError as exc:
            probed.append(s)
            errors[s.id] = str(exc)
    return probed


def load_sessions(store: Store, raw_dir: Path | None,
                  summary: RunSummary | None = None) -> tuple[list[Session], dict[str, str]]:
    """Sessions of ``raw_dir`` (probed; unusable ones mapped to their error), or those already in the store.

    Run-level findings of discovery (folders that cannot be listed, link loops) go to ``summary``.
    """
    if raw_dir is None:
        sessions, errors = [], {}
        for sid in store.session_ids():
            info = store.session(sid).info
            try:
                sessions.append(session_from_info(info))
            except EtherPrepError as exc:  # e.g. its sessions.csv became malformed: that session fails alone
                sessions.append(session_from_info(info, refresh=False))
                errors[sid] = f"{info.get('relpath', sid)}: {exc}"
        for s in sessions:
            if s.id not in errors:
                store.session(s.id, info=s.to_dict())  # keeps refreshed sessions.csv metadata
        if not sessions:
            raise StoreError(f"{store.path}: holds no sessions; run `ether-prep extract RAW_DIR --out {store.path}`")
        errors.update({s.id: f"{s.relpath}: could not be probed" for s in sessions
                       if s.probe is None and s.id not in errors})
        return sessions, errors
    found = scan(raw_dir)
    if summary is not None:
        summary.errors.extend(found.errors)
        summary.notes.extend(found.notes)
    errors = dict(found.problems)
    sessions = _probe_all(found.sessions, errors)
    if not sessions:
        raise InputError(f"{raw_dir}: no recordings found (looked for video, audio and image files)")
    for s in sessions:
        store.session(s.id, info=s.to_dict())
    return sessions, errors


def models_are_local(stages: Sequence[Stage]) -> bool:
    """Whether every model these stages name resolves to a local file or a package (no model hub)."""
    for stage in stages:
        info = stage.model_info()
        source = info.get("source", "")
        if source and not (source.startswith("package ") or source in ("path", "ETHER_PREP_MODELS", "cache")
                           or (Path(source).is_absolute() and Path(source).exists())):
            return False
        # Secondary models (e.g. an aligner) named by hub id rather than by path.
        if any(k.endswith("_model") and v and not Path(str(v)).exists() for k, v in info.items()):
            return False
    return True


def _go_offline(stages: Sequence[Stage]) -> bool:
    """No usage metrics ever; hub libraries offline when no stage needs a hub. Set before any model loads and
    before Ray starts (local Ray workers inherit this environment). Returns whether hubs were switched off."""
    for key, value in _NO_TELEMETRY.items():
        os.environ.setdefault(key, value)
    if not models_are_local(stages):
        return False
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    return True


def _record_failure(group: SessionGroup, stage: str, marker: dict[str, Any], message: str) -> str:
    """Mark a stage failed without computing it; a store that cannot take even that is said in the message."""
    try:
        group.begin_stage(stage, marker)
        group.finish_stage(stage, "failed", None, error=message)
    except OSError as exc:
        return f"{message} (and the failure could not be recorded in the store: {exc.strerror})"
    return message


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
    wait: float = 0.0,
) -> RunSummary:
    """Run the selected stages of ``pipeline`` over the recordings in ``raw_dir`` (or those in the store).

    The store is locked for the whole run (``<store>/.ether-prep.lock``): a second run on the same store waits
    up to ``wait`` seconds for the first to end, then refuses with a :class:`~ether_prep.errors.LockError`
    naming the holder.
    """
    specs = pipeline.select(family=family, only=only, start=start)
    with store_lock(store_path, wait=wait) as lock:
        summary = RunSummary()
        if lock.took_over:
            summary.notes.append(f"took over the store lock left by a process that no longer runs "
                                 f"(pid {lock.took_over.get('pid')}, started {lock.took_over.get('started')})")
        store = Store(store_path)
        store.record_pipeline(pipeline.name, str(pipeline.source), pipeline.digest())
        _run_locked(specs, raw_dir, store, summary, lock.token, force=force, executor=executor, workers=workers,
                    ray_address=ray_address, progress=progress)
    return summary


def _run_locked(specs: list[StageSpec], raw_dir: Path | None, store: Store, summary: RunSummary,
                token: str | None, *, force: bool, executor: str, workers: int | None, ray_address: str | None,
                progress: bool) -> None:
    from tqdm import tqdm

    planners = {spec.name: stage_class(spec.name)(spec) for spec in specs}  # describe stages in the driver
    if _go_offline(list(planners.values())) and any(p.model_info() for p in planners.values()):
        _log.info("every model is local: model hubs switched off (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1)")
    sessions, probe_errors = load_sessions(store, raw_dir, summary)
    runner = make_executor(executor, ray_address=ray_address, workers=workers, worker_logs=progress)
    try:
        for spec in specs:
            cls = stage_class(spec.name)
            planner = planners[spec.name]  # workers build their own and load models
            model = planner.model_info()
            todo: list[Task] = []
            for session in sessions:
                group = store.session(session.id)
                try:
                    if session.id in probe_errors:
                        raise InputError(probe_errors[session.id])
                    fp, state, upstream = plan_stage(planner, session, group)
                except EtherPrepError as exc:  # this session cannot run this stage; the others go on
                    message = _record_failure(group, spec.name, {"stage": spec.name}, str(exc))
                    summary.outcomes.append(Outcome(session.id, spec.name, "failed", message))
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
                todo.append(Task(session, fp, marker, token))
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
        try:
            store.consolidate()
        except OSError as exc:  # readers open unconsolidated too: nothing is lost
            summary.errors.append(f"{store.path}: metadata not consolidated ({exc.strerror}); free space and "
                                  f"run again")


def status_table(store: Store, pipeline: Pipeline | None = None) -> list[dict[str, Any]]:
    """One row per (session, stage): state (done, skipped, stale, failed, running, pending) and message.

    ``stale`` means done, but with other parameters, model or upstream results than ``pipeline`` now asks for;
    a stage downstream of a stale one is stale too, since rerunning the upstream stage changes its input.
    """
    planners = {s.name: stage_class(s.name)(s) for s in pipeline.stages if s.enabled} if pipeline else {}
    rows = []
    for sid in store.session_ids():
        group = store.session(sid)
        try:
            session = session_from_info(group.info) if planners else None
        except EtherPrepError:  # its sessions.csv is malformed now: judge staleness on the stored metadata
            session = session_from_info(group.info, refresh=False)
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
