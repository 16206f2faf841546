"""Streaming execution with fingerprints, resume and a failure summary.

Every session walks through the selected stages on its own: a stage is planned for a session as soon as
the stages it reads (its ``requires`` within the selection) have an outcome for that session. Planning, in
this process: compute the fingerprint of (stage version, backend, model, parameters, upstream
fingerprints, per-session inputs); a stored marker that matches makes the stage ``cached`` and the walk
goes straight on; a session lacking the stream the stage needs is ``skipped`` with a note; a failed
upstream makes it ``blocked``; anything else becomes a task for the executor, whose outcome moves the
walk on. A changed parameter therefore redoes that stage and, through the fingerprints, every stage after
it; ``force`` redoes all selected stages. When a stage has an outcome for every session its
``finalize`` runs, once. Nothing is handed to an executor (nor Ray started) when everything is cached. At the
end of a run that selected a stage feeding the root manifests (one declaring ``manifest_columns``: ``align``,
``qc``) one collect step, after every stage's ``finalize``, rebuilds the manifests if what they are built from
changed (:func:`ether_prep.manifest.refresh_manifests`), and the metadata is
consolidated if anything was written: a fully cached rerun writes nothing.
Every session runs to the end of every stage it can; failures are collected and summarised, never
swallowed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .config import Pipeline
from .errors import EtherPrepError, InputError, StoreError
from .executors import ActorRecord, Executor, make_executor
from .lock import store_lock
from .provenance import fingerprint, library_versions
from .records import RecordingIdentity, Session
from .sessions import probe_session, recording_identity, scan, session_from_info
from .spec import StageSpec
from .stages import stage_class
from .stages.base import Stage
from .store import SessionGroup, StageState, Store, absolute_location, local_path
from .worker import Outcome, Task

__all__ = ["RunSummary", "gone_note", "load_sessions", "missing_recordings", "models_are_local", "plan_stage",
           "recording_change", "run_pipeline", "stage_fingerprint", "status_table"]

_log = logging.getLogger(__name__)
# A line per session and stage ("started", "done in 3.1 s", "failed: why"), at INFO: shown with -v, and by default
# on a run with its stderr off a terminal (a batch job's log, where no bars are drawn); --quiet leaves it to -v.
_progress = logging.getLogger("ether_prep.progress")


def _outcome_line(o: Outcome) -> str:
    said = {"done": f"done in {o.elapsed_s:.1f} s", "cached": "cached (already done with these inputs)"}
    return f"{o.session_id} [{o.stage}]: {said.get(o.state) or f'{o.state}: {o.message}'}"
# Hub libraries (huggingface_hub, transformers, pyannote) read these when imported: set before any stage loads.
_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
# Usage reports that libraries send by default (Ray's hourly usage stats, pyannote's metrics, hub telemetry).
_NO_TELEMETRY = {"RAY_USAGE_STATS_ENABLED": "0", "PYANNOTE_METRICS_ENABLED": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
# How long the driver waits for an outcome before it looks at progress again (seconds).
_POLL_S = 0.5


@dataclass
class RunSummary:
    """Every (session, stage) outcome of a run, in the order they finished."""

    outcomes: list[Outcome] = field(default_factory=list)
    # stage -> accelerators (CUDA_VISIBLE_DEVICES) of each worker the executor made for it
    placements: dict[str, list[str]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)  # run-level: recordings that could not even be looked at
    notes: list[str] = field(default_factory=list)  # run-level findings that lose nothing (a link loop skipped)
    executor: str = "none"  # what ran the tasks: inline, ray, or none (nothing to compute)
    manifests_written: bool = False  # the root manifests were rebuilt (they were missing or out of date)
    wall_s: float = 0.0
    actors: list[ActorRecord] = field(default_factory=list)  # Ray only: every actor made, and its lifetime

    @property
    def wrote(self) -> bool:
        """Whether any stage of any session was computed, failed or skipped in this run (False: everything was
        cached or blocked, and the stages' outputs in the store are as the run found them)."""
        return any(o.state not in ("cached", "blocked") for o in self.outcomes)

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


def _inputs(stage: Stage, session: Session) -> dict[str, Any]:
    """A stage's per-session fingerprint inputs; the recording's identity for a stage that reads the file."""
    inputs = stage.fingerprint_inputs(session)
    if stage.reads_recording and session.identity is not None:
        inputs = {**inputs, "recording": session.identity.to_dict()}
    return inputs


def recording_change(state: StageState, now: RecordingIdentity | None) -> str | None:
    """Why a completed stage that read the recording is out of date with the file as it is ``now``: "recording
    changed since ..." (None: unchanged, not known, or a stage that does not read the file)."""
    then = state.info.get("recording")
    if not then or now is None:
        return None
    change = RecordingIdentity(**then).change(now)
    when = state.info.get("finished_at") or state.info.get("started_at") or "?"
    return f"recording changed since {state.stage} read it ({when}): {change}" if change else None


def missing_recordings(store: Store, raw_dir: Path | str | None = None,
                       found: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(session id, path) of the stored sessions whose recording is gone: with ``raw_dir``, those that a scan of it
    did not ``found`` and whose file is missing or lay under it; without, those whose stored file is missing."""
    found_ids = set(found)
    root = Path(raw_dir).absolute() if raw_dir is not None else None
    gone = []
    for sid in store.session_ids():
        if sid in found_ids:
            continue
        info = store.session(sid).info
        path = Path(info.get("path", ""))
        if not info.get("path") or not os.path.lexists(path) or (root is not None and path.is_relative_to(root)):
            gone.append((sid, info.get("relpath") or str(path)))
    return gone


def gone_note(gone: list[tuple[str, str]], where: str) -> str:
    """What a run or ``status`` says about stored sessions without a recording (:func:`missing_recordings`)."""
    listed = ", ".join(f"{sid} ({rel})" for sid, rel in gone)
    return (f"{len(gone)} stored session(s) have no recording {where}: {listed}; their results stay in the store "
            f"and its manifests: `ether-prep remove ID` deletes them")


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
            raise StoreError(f"{store.url}: holds no sessions; run `ether-prep extract RAW_DIR --out {store.url}`")
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
    if summary is not None and (gone := missing_recordings(store, raw_dir, [s.id for s in sessions])):
        summary.notes.append(gone_note(gone, f"under {raw_dir}"))
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
    fp = stage_fingerprint(spec, upstream, _inputs(stage, session))
    return fp, group.stage_state(spec.name), upstream


class _Walk:
    """Each session's way through the selected stages (see the module docstring); planning happens here, in
    the driver, because a stage's fingerprint depends on the upstream fingerprints just written."""

    def __init__(self, planners: dict[str, Stage], store: Store, sessions: Sequence[Session],
                 probe_errors: dict[str, str], force: bool, summary: RunSummary, token: str | None,
                 redo: Collection[tuple[str, str]] = ()) -> None:
        self.store, self.probe_errors, self.force, self.summary = store, probe_errors, force, summary
        self.redo = set(redo)  # (session, stage) to compute again though cached: damage found by `verify`
        self.repaired: dict[str, set[str]] = {s.id: set() for s in sessions}  # recomputed for damage, per session
        self.token = token  # of the store lock this run holds: workers check it before writing
        self.planners = planners  # describe each stage in the driver; workers build their own and load models
        self.models = {name: planner.model_info() for name, planner in self.planners.items()}
        self.deps = {name: [d for d in planner.requires if d in self.planners]
                     for name, planner in self.planners.items()}
        self.downstream = {name: [n for n in self.planners if name in self.deps[n]] for name in self.planners}
        self.sessions = {s.id: s for s in sessions}
        self.settled: dict[str, set[str]] = {s.id: set() for s in sessions}
        self.planned: set[tuple[str, str]] = set()  # (session, stage) planned once, whatever unblocked it
        self.waiting = {name: set(self.sessions) for name in self.planners}  # sessions without an outcome
        self.groups: dict[str, SessionGroup] = {}
        self.ready: list[Task] = []
        self.running = 0
        self.windowed: dict[tuple[str, str], _Windowed] = {}  # (session, stage) computed in windows, until joined
        self.finished: list[str] = []  # stages with an outcome for every session, in the order they got there
        self.executor: Executor | None = None
        self.changed: set[str] = set()  # sessions whose recording changed since it was computed (noted once)

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
        windowed = self.windowed.get((outcome.session_id, outcome.stage))
        if outcome.window_index is not None:
            if windowed is None or windowed.failed:
                return  # a window of a stage that already failed
            windowed.started = min(windowed.started, outcome.started_at or windowed.started)
            windowed.retries += outcome.retries
            if outcome.state == "done":
                windowed.left -= 1
                if windowed.left == 0:  # every window is in: the join
                    self.ready.append(windowed.task)
                return
            # One window failed: so does the stage for this session; its other windows are ignored. They may
            # still be writing their groups on other workers, so those are dropped at the end of the run.
            windowed.failed = True
            message = _record_failure(self._group(outcome.session_id), outcome.stage, windowed.task.marker,
                                      f"window {outcome.window_index + 1} of {windowed.task.n_windows}: "
                                      f"{outcome.message}")
            self._record(replace(outcome, window_index=None, message=message))
            return
        if windowed is not None:  # the join: the stage's outcome, timed from its first window
            del self.windowed[(outcome.session_id, outcome.stage)]
            first = min(windowed.started, outcome.started_at or windowed.started)  # every window kept: the join's
            end = (outcome.started_at or first) + outcome.elapsed_s
            outcome = replace(outcome, started_at=first, elapsed_s=end - first,
                              retries=outcome.retries + windowed.retries)
        if outcome.state == "failed":
            # Failed in the executor (a worker lost for good, no room for one): the marker still says
            # 'running', or nothing; make it say why.
            group = self._group(outcome.session_id)
            if group.stage_state(outcome.stage).state in ("pending", "running"):
                message = _record_failure(group, outcome.stage, {"stage": outcome.stage}, outcome.message or "")
                outcome = replace(outcome, message=message)
        self._record(outcome)

    def _group(self, session_id: str) -> SessionGroup:
        if session_id not in self.groups:
            self.groups[session_id] = self.store.session(session_id)
        return self.groups[session_id]

    def _record(self, outcome: Outcome) -> None:
        sid, name = outcome.session_id, outcome.stage
        self.summary.outcomes.append(outcome)
        _progress.info(_outcome_line(outcome))
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

    def _damaged(self, session: Session, name: str, group: SessionGroup) -> str | None:
        """Why a stage whose fingerprint matches is computed again (None: it is cached): its stored outputs are
        damaged (the fast check; ``verify`` found it with the full one), or a stage it reads was recomputed for
        that reason in this run (as for a stale one: its input was rewritten)."""
        if (session.id, name) in self.redo:
            return f"{session.relpath}: {name}: damaged outputs recomputed"
        if upstream := [d for d in self.deps[name] if d in self.repaired[session.id]]:
            return f"{session.relpath}: {name}: recomputed because {', '.join(upstream)}, which it reads, was"
        if found := group.damage(name):
            more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
            return f"{session.relpath}: {name}: array {found[0].array!r}: {found[0].problem}{more}: recomputed"
        return None

    def _plan(self, session: Session, name: str) -> None:
        """Cached, skipped, failed or blocked at once; otherwise a task, or one task per time window (a
        ``windowed`` stage on a long recording; the join is queued when every window is in)."""
        # A stage reading two stages of which one reads the other (timing: diarize and utterances) is unblocked
        # twice when both settle in one go (cached, skipped): it is planned the first time only.
        if (session.id, name) in self.planned:
            return
        self.planned.add((session.id, name))
        planner, group = self.planners[name], self._group(session.id)
        try:
            if session.id in self.probe_errors:
                raise InputError(self.probe_errors[session.id])
            fp, state, upstream = plan_stage(planner, session, group)
        except EtherPrepError as exc:  # this session cannot run this stage; the others go on
            self._record(Outcome(session.id, name, "failed", _record_failure(group, name, {"stage": name}, str(exc))))
            return
        if isinstance(upstream, str):
            self._record(Outcome(session.id, name, "blocked", upstream))
            return
        if not self.force and state.complete and state.fingerprint == fp:
            why = self._damaged(session, name, group)
            if why is None:
                self._record(Outcome(session.id, name, "cached", state.note))
                return
            self.repaired[session.id].add(name)
            self.summary.notes.append(why)
        if state.complete and session.id not in self.changed and (change := recording_change(state, session.identity)):
            self.changed.add(session.id)
            self.summary.notes.append(f"{session.relpath}: {change}: its stages are computed again")
        marker = _marker(planner, upstream, self.models[name])
        if planner.reads_recording and session.identity is not None:
            marker["recording"] = session.identity.to_dict()  # what status compares the file with
        stream = planner.needs_stream
        if stream and session.probe and not getattr(session.probe, f"has_{stream}"):
            art = " (only cover art, an attached picture)" if stream == "video" and session.probe.cover_art else ""
            note = f"no {stream} stream in {session.relpath}{art}: stage skipped"
            group.begin_stage(name, marker)
            group.finish_stage(name, "skipped", fp, note=note)
            self._record(Outcome(session.id, name, "skipped", note))
            return
        task = Task(session, name, fp, marker, self.token)
        try:
            windows = planner.windows(session, group) if planner.windowed else []
        except EtherPrepError as exc:
            self._record(Outcome(session.id, name, "failed", _record_failure(group, name, marker, str(exc))))
            return
        if len(windows) > 1:
            group.begin_stage(name, marker)  # running from its first window on, as a whole task would be
            tasks = [replace(task, window=w) for w in windows]
            # Windows an interrupted run computed in full for this very fingerprint are kept.
            todo = [t for t in tasks if self.force or not self.store.window_done(session.id, name, t.window_marker)]
            windowed = _Windowed(replace(task, n_windows=len(windows)), len(todo))
            self.windowed[(session.id, name)] = windowed
            if kept := len(tasks) - len(todo):
                self.summary.notes.append(f"{session.relpath}: {name}: {kept} of {len(windows)} windows kept from "
                                          "an interrupted run")
            self.ready.extend(todo or [windowed.task])  # every window kept: the join at once
        else:
            self.ready.append(task)


@dataclass
class _Windowed:
    """A (session, stage) computed as time windows: the join task, the windows still out, when the first began."""

    task: Task
    left: int
    started: float = float("inf")
    failed: bool = False
    retries: int = 0  # windows handed to another worker because theirs was lost


class _Bars:
    """Per-stage progress bars on stderr in media seconds; they move within a session as workers report. Off a
    terminal (``log``), a line at INFO instead each time a session's stage passes another tenth of its media
    (``SESSION [face]: 40% (12/30 s media)``), so a batch log shows a long session moving."""

    def __init__(self, specs: Sequence[StageSpec], enabled: bool, log: bool = False) -> None:
        self.bars: dict[str, Any] = {}
        self.shown: dict[tuple[str, str], float] = {}  # (stage, task key) -> media seconds on its bar so far
        self.planned: dict[tuple[str, str], float] = {}  # (stage, task key) -> media seconds added to its total
        self.log = log and not enabled
        if enabled:
            from tqdm import tqdm

            self.bars = {spec.name: tqdm(total=0.0, desc=f"{spec.name:12s}", unit="s", file=sys.stderr,
                                         position=i, leave=False, dynamic_ncols=True,
                                         bar_format="{desc} {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s media "
                                                    "[{elapsed}<{remaining}, {rate_fmt}]")
                         for i, spec in enumerate(specs)}

    @property
    def active(self) -> bool:
        return bool(self.bars) or self.log

    def add(self, task: Task) -> None:
        if self.active and not task.n_windows:  # a join's media was counted by its windows
            if self.bars:
                bar = self.bars[task.stage]
                bar.total += task.media_s
                bar.refresh()
            self.shown[(task.stage, task.key)] = 0.0
            self.planned[(task.stage, task.key)] = task.media_s

    def advance(self, stage: str, task_key: str, media_s: float) -> None:
        key = (stage, task_key)
        # a worker's clock can pass the probed duration (last frame, padding): the bar never overshoots
        planned = self.planned.get(key, 0.0)
        media_s = min(media_s, planned)
        if key not in self.shown or media_s <= self.shown[key]:
            return
        if self.bars:
            _move(self.bars[stage], media_s - self.shown[key])
        elif planned > 0 and int(10 * media_s / planned) > int(10 * self.shown[key] / planned) \
                and media_s < planned:
            _progress.info("%s [%s]: %d%% (%.1f/%.1f s media)", task_key, stage, 10 * int(10 * media_s / planned),
                           media_s, planned)
        self.shown[key] = media_s

    def finish(self, outcome: Outcome) -> None:
        key = (outcome.stage, outcome.key)
        if key in self.shown:
            left = max(self.planned.pop(key) - self.shown.pop(key), 0.0)
            if self.bars:
                # the bar's total counted the planned seconds: finishing adds what is left of those, no more
                bar = self.bars[outcome.stage]
                _move(bar, left)
                bar.refresh()  # a session's end is always drawn, however soon after the last update it comes

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()


def _move(bar: Any, media_s: float) -> None:
    """Advance ``bar`` by ``media_s``, never past its total (many small float steps may sum a hair over it)."""
    bar.update(max(min(media_s, bar.total - bar.n), 0.0))


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
    wait: float = 0.0,
    session_ids: Collection[str] | None = None,
    redo: Collection[tuple[str, str]] = (),
) -> RunSummary:
    """Run the selected stages of ``pipeline`` over the recordings in ``raw_dir`` (or those in the store).

    ``store_path``: a folder, or an fsspec URL (``file://``, ``s3://``, ``gs://``). ``executor``: ``inline``,
    ``ray`` or ``auto`` (see :mod:`ether_prep.executors`). ``progress``: bars on a terminal and Ray workers'
    logs; False keeps both quiet. The store is locked for the whole run (``<store>/.ether-prep.lock``): a
    second run on the same store waits up to ``wait`` seconds for the first to end, then refuses with a
    :class:`~ether_prep.errors.LockError` naming the holder. A store behind an object-store URL (``s3://``,
    ``gs://``) has no lock file: one run at a time on it is up to you. ``session_ids`` limits the run to those
    sessions; ``redo`` lists (session, stage) pairs to compute again though cached (``ether-prep verify
    --repair``: damage the fast check does not see), with the stages downstream of them.
    """
    t0 = time.perf_counter()
    specs = pipeline.select(family=family, only=only, start=start)
    store_path = absolute_location(store_path)  # what every worker opens, whatever its working directory
    folder = local_path(store_path)
    with store_lock(folder, wait=wait) if folder is not None else contextlib.nullcontext() as lock:
        summary = RunSummary()
        if lock is not None and lock.took_over:
            summary.notes.append(f"took over the store lock left by a process that no longer runs "
                                 f"(pid {lock.took_over.get('pid')}, started {lock.took_over.get('started')})")
        store = Store(store_path)
        if lock is not None and lock.took_over:  # that run was killed: its metadata may not be consolidated
            store.dirty = True
        store.record_pipeline(pipeline.name, str(pipeline.source), pipeline.digest())
        try:
            _run_locked(specs, raw_dir, store, summary, lock.token if lock is not None else None, force=force,
                        executor=executor, workers=workers, ray_address=ray_address, progress=progress,
                        session_ids=session_ids, redo=redo)
        finally:
            summary.wall_s = time.perf_counter() - t0
    return summary


def _run_locked(specs: list[StageSpec], raw_dir: Path | None, store: Store, summary: RunSummary,
                token: str | None, *, force: bool, executor: str, workers: int | None, ray_address: str | None,
                progress: bool, session_ids: Collection[str] | None = None,
                redo: Collection[tuple[str, str]] = ()) -> None:
    planners = {spec.name: stage_class(spec.name)(spec) for spec in specs}  # describe stages in the driver
    if _go_offline(list(planners.values())) and any(p.model_info() for p in planners.values()):
        _log.info("every model is local: model hubs switched off (HF_HUB_OFFLINE=1, TRANSFORMERS_OFFLINE=1)")
    sessions, probe_errors = load_sessions(store, raw_dir, summary)
    if session_ids is not None:
        sessions = [s for s in sessions if s.id in set(session_ids)]
    walk = _Walk(planners, store, sessions, probe_errors, force, summary, token, redo)
    _progress.setLevel(logging.INFO if progress and not sys.stderr.isatty() else logging.NOTSET)
    bars = _Bars(specs, enabled=progress and sys.stderr.isatty(), log=_progress.isEnabledFor(logging.INFO))
    runner: Executor | None = None
    try:
        walk.start()
        if walk.ready:  # something to compute: only now is an executor (and perhaps Ray) needed
            store.dirty = True  # consolidated at the end even when interrupted before a first outcome
            todo = {t.session.id: t.media_s for t in walk.ready}
            runner = make_executor(executor, specs, store.url, ray_address=ray_address, workers=workers,
                                   worker_logs=progress, progress=bars.advance if bars.active else None,
                                   sessions=len(todo), media_s=sum(todo.values()))
            summary.executor = runner.name
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
        if any(p.feeds_manifests() for p in planners.values()):
            from .manifest import refresh_manifests

            # The one collect step, the one writer of the manifests (from every registered stage's declared
            # columns); a cached rerun finds them current and leaves them alone.
            summary.manifests_written = refresh_manifests(store)
    finally:
        bars.close()
        if runner is not None:
            summary.placements = dict(runner.placements)
            summary.actors = runner.actor_log
            runner.close()
        try:
            # Windows of a joined or failed stage, or left by an earlier run and not kept, go; an interrupted
            # run keeps those of the stages it did not get to join, for the next run.
            store.drop_windows(keep=[key for key, w in walk.windowed.items() if not w.failed])
        except OSError as exc:
            summary.notes.append(f"{store.url}: scratch windows under parts/ not removed ({exc.strerror}); "
                                 f"the next run removes them")
        try:
            if summary.wrote or store.dirty:  # a fully cached rerun leaves the root zarr.json alone
                store.consolidate()
        except OSError as exc:  # readers open unconsolidated too: nothing is lost
            summary.errors.append(f"{store.url}: metadata not consolidated ({exc.strerror}); free space and "
                                  f"run again")


def status_table(store: Store, pipeline: Pipeline | None = None) -> list[dict[str, Any]]:
    """One row per (session, stage): state (done, skipped, stale, damaged, failed, running, pending) and message.

    ``stale`` means done, but with other parameters, model or upstream results than ``pipeline`` now asks for,
    or on a recording that has changed since (the message says how); a stage downstream of a stale one is stale
    too, since rerunning the upstream stage changes its input.
    """
    planners = {s.name: stage_class(s.name)(s) for s in pipeline.stages if s.enabled} if pipeline else {}
    rows = []
    for sid in store.session_ids():
        group = store.session(sid)
        try:
            session = session_from_info(group.info) if planners else None
        except EtherPrepError:  # its sessions.csv is malformed now: judge staleness on the stored metadata
            session = session_from_info(group.info, refresh=False)
        change = None  # how the recording changed since a stage read it
        if session is not None and any(p.reads_recording for p in planners.values()):
            # gone or unreadable: judged on what was stored (status says it is gone)
            with contextlib.suppress(EtherPrepError):
                session = replace(session, identity=recording_identity(session.path))
        expected: dict[str, str] = {}  # stage -> the fingerprint this pipeline would give it now
        damaged: set[str] = set()  # stages found damaged, and those downstream of them
        for name in planners or sorted(group.group.group_keys()):
            state = group.stage_state(name)
            shown, message = state.state, state.error or state.note or ""
            if session is not None and state.complete:
                fp = _expected_fingerprint(planners[name], session, group, expected)
                expected[name] = fp or ""
                if planners[name].reads_recording:
                    change = recording_change(state, session.identity) or change
                if fp != state.fingerprint:
                    shown, message = "stale", change or message
            shown, message = _damage_state(group, name, shown, message, damaged,
                                           planners[name].requires if planners else ())
            rows.append({"session": sid, "relpath": group.info.get("relpath", ""), "stage": name, "state": shown,
                         "message": message})
    return rows


def _damage_state(group: SessionGroup, name: str, shown: str, message: str, damaged: set[str],
                  requires: Sequence[str]) -> tuple[str, str]:
    """A completed stage's shown state and message, given the fast check of its stored outputs: ``damaged``
    (naming each array and what is wrong), or ``stale`` downstream of a damaged stage (a rerun recomputes
    both)."""
    if shown not in ("done", "skipped", "stale"):
        return shown, message
    if found := group.damage(name):
        damaged.add(name)
        listed = "; ".join(f"array {d.array!r}: {d.problem}" if d.array else d.problem for d in found[:4])
        more = f"; and {len(found) - 4} more" if len(found) > 4 else ""
        return "damaged", f"{listed}{more}; a rerun or `ether-prep verify --repair` recomputes it"
    if upstream := [d for d in requires if d in damaged]:
        damaged.add(name)
        return "stale", f"upstream stage {', '.join(upstream)} is damaged; a rerun recomputes this one too"
    return shown, message


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
        return stage_fingerprint(stage.spec, upstream, _inputs(stage, session))
    except EtherPrepError:
        return None
