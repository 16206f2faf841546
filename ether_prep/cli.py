"""The ``ether-prep`` command line. Heavy libraries are imported inside commands, so ``--help`` stays fast."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import inspect
import os
import signal
import typing
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from .errors import ConfigError, EtherPrepError, Interrupted


class _App(typer.Typer):
    """The command line; ``-v``/``--verbose`` is taken anywhere before ``--`` (``ether-prep run raw/ -v``), as
    users type it, though it is an option of ``ether-prep`` itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        import sys

        argv = sys.argv[1:]
        end = argv.index("--") if "--" in argv else len(argv)
        verbose = [a for a in argv[:end] if a in ("-v", "--verbose")]
        if verbose:
            sys.argv[1:] = ["-v", *(a for a in argv[:end] if a not in verbose), *argv[end:]]
        return super().__call__(*args, **kwargs)


def _secho(message: str, colour: str, err: bool = False) -> None:
    """A line in ``colour``, plain when NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        typer.echo(message, err=err)
    else:
        typer.secho(message, fg=colour, err=err)


app = _App(
    name="ether-prep",
    help="Turn recorded counselling sessions into speech, face and per-utterance features in a Zarr store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,  # --install-completion, --show-completion (README: Shell completion)
    rich_markup_mode=None,  # help texts say "[default: ...]" literally; rich markup would swallow it
    epilog="Environment: ETHER_PREP_MODELS, a folder of local model files (face_landmarker.task for the cpu "
           "pipeline's MediaPipe face stage); HF_TOKEN, a Hugging Face token for the hub models the default "
           "pipeline loads (pyannote's gated diarization pipeline); ETHER_PREP_PIPELINE, ETHER_PREP_CONFIG, "
           "ETHER_PREP_EXECUTOR, RAY_ADDRESS, ETHER_PREP_LOG_LEVEL for the options of those names; NO_COLOR "
           "turns colours off. -v works anywhere on the line.",
)


class ExecutorName(StrEnum):
    auto = "auto"
    ray = "ray"
    inline = "inline"


Out = Annotated[Path, typer.Option("--out", "-o", help="The Zarr store to write or read.")]
OutUrl = Annotated[str, typer.Option("--out", "-o", help="The Zarr store: a folder, or an fsspec URL "
                                                          "(file://, s3://, gs://).")]
PipelineOpt = Annotated[str, typer.Option("--pipeline", "-p", envvar="ETHER_PREP_PIPELINE",
                                          help="Pipeline name in pipelines.yaml (e.g. default, cpu).",
                                          autocompletion=lambda incomplete: _complete_pipeline(incomplete))]
RunPipelineOpt = Annotated[str | None, typer.Option(
    "--pipeline", "-p", envvar="ETHER_PREP_PIPELINE", show_default=False,
    autocompletion=lambda incomplete: _complete_pipeline(incomplete),
    help="Pipeline name in pipelines.yaml (e.g. default, cpu) [default: the one that last ran on the store; on a "
         "new store 'default' with an NVIDIA GPU here or a Ray cluster, else 'cpu'].")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", envvar="ETHER_PREP_CONFIG",
                                                help="pipelines.yaml to use [default: ./pipelines.yaml if "
                                                     "present, else the one shipped with ether-prep].")]
RayAddress = Annotated[str | None, typer.Option("--ray-address", envvar="RAY_ADDRESS",
                                                help="Ray cluster address ('auto': the cluster this node belongs "
                                                     "to; set for you under `ray job submit`); implies "
                                                     "--executor ray.")]
Workers = Annotated[int | None, typer.Option("--workers", "-w", min=1,
                                             help="Workers (Ray actors) per stage [default: what resources allow].")]
Force = Annotated[bool, typer.Option("--force", help="Recompute even what is already done.")]
def _complete_stage(incomplete: str) -> list[str]:
    """Stage names, for shell completion of --only and --from."""
    from .stages import STAGES

    return [name for name in STAGES if name.startswith(incomplete)]


def _complete_format(incomplete: str) -> list[str]:
    """Export formats, for shell completion of --format."""
    from .exports import FORMATS

    return [name for name in (*FORMATS, "all") if name.startswith(incomplete)]


def _complete_pipeline(incomplete: str) -> list[str]:
    """Pipeline names of ./pipelines.yaml (else the shipped one), for shell completion of --pipeline."""
    import yaml

    from .config import DEFAULT_CONFIG

    path = Path("pipelines.yaml") if Path("pipelines.yaml").is_file() else DEFAULT_CONFIG
    try:
        names = list((yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("pipelines") or {})
    except (OSError, yaml.YAMLError, AttributeError):
        return []
    return [str(n) for n in names if str(n).startswith(incomplete)]


Only = Annotated[list[str] | None, typer.Option("--only", help="Run only this stage (repeatable).",
                                                autocompletion=_complete_stage)]
From = Annotated[str | None, typer.Option("--from", help="Run from this stage on.", autocompletion=_complete_stage)]
Executor = Annotated[ExecutorName, typer.Option("--executor", "-x", envvar="ETHER_PREP_EXECUTOR",
                                                help="auto (inline for a small job on a machine without GPUs, "
                                                     "else ray), ray (a local cluster unless --ray-address) or "
                                                     "inline (this process).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, no Ray worker logs (bars show only "
                                                           "on a terminal anyway).")]
Wait = Annotated[float, typer.Option("--wait", min=0, metavar="SECONDS",
                                     help="If another run is writing the store, wait up to this long for it "
                                          "[default: refuse at once]. 'inf' waits as long as it takes.")]
DEFAULT_STORE = Path("ether_prep.zarr")
DEFAULT_STORE_URL = str(DEFAULT_STORE)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"ether-prep {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details (INFO) to stderr.")] = False,
    log_level: Annotated[str | None, typer.Option("--log-level", envvar="ETHER_PREP_LOG_LEVEL",
                                                  help="DEBUG, INFO, WARNING (default), ERROR.")] = None,
) -> None:
    """Turn recorded counselling sessions into speech, face and per-utterance features in a Zarr store.

    Results go to stdout; logs and warnings (ether-prep's and every library's) go to stderr; -v (anywhere on the
    line) adds a line per session and stage, which a run whose stderr is not a terminal writes anyway.
    """
    from .logs import configure

    try:
        configure(log_level or ("INFO" if verbose else "WARNING"))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-level") from exc


def _config_path(config: Path | None) -> Path | None:
    if config is not None:
        return config
    local = Path("pipelines.yaml")
    return local if local.is_file() else None


def _known_sessions(store: Any, wanted: list[str] | None, out: object) -> None:
    """A usage error (exit 2) naming the ids given with --session that the store does not hold."""
    known = set(store.session_ids())
    if unknown := [sid for sid in wanted or () if sid not in known]:
        raise ConfigError(f"no session {', '.join(map(repr, unknown))} in {out}; `ether-prep status --out {out}` "
                          f"lists the session ids")


def _fail(exc: EtherPrepError) -> typer.Exit:
    _secho(f"error: {exc}", typer.colors.RED, err=True)
    return typer.Exit(2)


_stopped_by: int | None = None  # the signal that stopped the run, when SIGTERM did


@contextlib.contextmanager
def _stoppable() -> Iterator[None]:
    """SIGTERM (``timeout``, ``scancel``, ``docker stop``, systemd) stops a run as Ctrl-C does: an
    :class:`Interrupted` raised in the main thread unwinds every ``finally`` (workers ended, the store lock
    released). Later SIGTERMs are ignored while that cleanup runs; a second Ctrl-C still cuts it short."""
    def on_term(signum: int, frame: object) -> None:
        global _stopped_by
        _stopped_by = signum  # Ray turns exceptions raised inside its calls into a bare KeyboardInterrupt
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signum)

    global _stopped_by
    _stopped_by = None
    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread (an embedding application): its own handling stays
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupted(exc: KeyboardInterrupt, out: str) -> typer.Exit:
    """The message for a run stopped by a signal, and the shell's exit code for it (130, 143)."""
    signum = exc.signum if isinstance(exc, Interrupted) else _stopped_by or signal.SIGINT
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
    _secho(f"interrupted by {name}: stopped; the store lock is released, finished stages are kept and the "
           f"stages that were computing stay 'running'; run the same command again to complete them "
           f"(`ether-prep status --out {out}` shows where it stopped)", typer.colors.RED, err=True)
    return typer.Exit(128 + int(signum))


@dataclass(frozen=True)
class RunOptions:
    """The options ``extract``, ``align`` and ``run`` share, declared once: :func:`_with_run_options` shows
    them to typer as each command's own options and hands the command one ``RunOptions``."""

    out: OutUrl = DEFAULT_STORE_URL
    pipeline: RunPipelineOpt = None
    config: ConfigOpt = None
    ray_address: RayAddress = None
    workers: Workers = None
    force: Force = False
    only: Only = None
    start: From = None
    executor: Executor = ExecutorName.auto
    quiet: Quiet = False
    wait: Wait = 0.0


def _with_run_options(command: Callable[..., None]) -> Callable[..., None]:
    """``command(..., options: RunOptions)`` as typer needs it: its own parameters, then every RunOptions
    field as a keyword option (same names, defaults and help everywhere)."""
    hints = typing.get_type_hints(RunOptions, include_extras=True)
    shared = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=hints[f.name])
              for f in dataclasses.fields(RunOptions)]
    own = [p for name, p in inspect.signature(command, eval_str=True).parameters.items() if name != "options"]

    @functools.wraps(command)
    def with_options(**kwargs: Any) -> None:
        options = RunOptions(**{p.name: kwargs.pop(p.name) for p in shared})
        command(**kwargs, options=options)

    with_options.__signature__ = inspect.Signature([*own, *shared])  # type: ignore[attr-defined]
    with_options.__annotations__ = {p.name: p.annotation for p in (*own, *shared)}
    return with_options


def _pipeline_name(o: RunOptions) -> str:
    """``--pipeline``; else the pipeline that last ran on the store; else the one this machine can run: ``default``
    (GPU models from the hub) with an NVIDIA GPU here or a Ray cluster to run on, ``cpu`` otherwise (said)."""
    from .config import load_config
    from .executors import local_gpus
    from .store import Store

    if o.pipeline:
        return o.pipeline
    with contextlib.suppress(EtherPrepError, OSError, ValueError):  # no store there yet
        if recorded := Store(o.out, mode="r").attrs.get("pipeline"):
            return str(recorded)
    if o.ray_address or os.environ.get("RAY_ADDRESS") or local_gpus() or "cpu" not in load_config(
            _config_path(o.config)):
        return "default"
    typer.echo("note: no --pipeline given and no NVIDIA GPU here: using the 'cpu' pipeline (offline models); give "
               "--pipeline default on a GPU machine, or --pipeline cpu to choose it yourself", err=True)
    return "cpu"


def _run(family: str | None, raw_dir: Path | None, o: RunOptions) -> None:
    from .config import load_pipeline
    from .errors import StoreError
    from .runner import run_pipeline

    try:
        pipe = load_pipeline(_pipeline_name(o), _config_path(o.config))
        with _stoppable():
            summary = run_pipeline(pipe, raw_dir, o.out, family=family, only=o.only, start=o.start, force=o.force,
                                   executor=o.executor.value, workers=o.workers, ray_address=o.ray_address,
                                   progress=not o.quiet, wait=o.wait)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (see _stoppable)
        raise _interrupted(exc, o.out) from None
    except EtherPrepError as exc:
        raise _fail(exc) from exc
    except OSError as exc:  # the store's disk, outside any one session's stage
        raise _fail(StoreError(f"{exc.filename or o.out}: {exc.strerror or exc}; free space or choose a "
                               f"writable --out, then run again (finished stages are kept)")) from exc
    typer.echo(summary.report())
    if not summary.ok:
        states = Counter(r.state for r in summary.failed)  # blocked: not run, because a stage they read failed
        said = ", ".join(f"{states[s]} stage run(s) {s}" for s in ("failed", "blocked") if states[s]) or "run errors"
        _secho(f"{said}; see `ether-prep status --out {o.out}`", typer.colors.RED, err=True)
        raise typer.Exit(1)


RawDir = Annotated[Path, typer.Argument(help="Folder of recordings (searched recursively).")]


@app.command()
@_with_run_options
def extract(raw_dir: RawDir, options: RunOptions) -> None:
    """Run the extract stages (audio, speech, faces) over every recording in RAW_DIR."""
    _run("extract", raw_dir, options)


@app.command()
@_with_run_options
def align(options: RunOptions) -> None:
    """Run the align stages over the sessions already extracted into the store."""
    _run("align", None, options)


@app.command()
@_with_run_options
def run(raw_dir: RawDir, options: RunOptions) -> None:
    """Extract and align in one batch job."""
    _run(None, raw_dir, options)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="The Zarr store to write.")] = Path("ether_prep_demo.zarr"),
    quiet: Quiet = False,
) -> None:
    """Run the whole offline cpu pipeline on demo recordings that ship with ether-prep's dependencies."""
    from .config import load_pipeline
    from .demo import DEMO_MEDIA, demo_raw_folder
    from .runner import run_pipeline

    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
    try:
        raw = demo_raw_folder(out.with_name(out.name.removesuffix(".zarr") + "_media"))
        with _stoppable():
            summary = run_pipeline(load_pipeline("cpu"), raw, out, family=None, executor="inline",
                                   progress=not quiet)
    except KeyboardInterrupt as exc:
        raise _interrupted(exc, str(out)) from None
    except EtherPrepError as exc:
        raise _fail(exc) from exc
    typer.echo(summary.report())
    typer.echo(f"""
Demo store: {out}  ({len(DEMO_MEDIA)} recordings linked in {raw})
  ether-prep status --out {out}      # every stage of every session, and the quality check
  ether-prep export exported/ --out {out} --format json
  python -c "import ether_prep; s = ether_prep.open_store('{out}'); print(s.to_pandas('utterances').head())"
""")
    if not summary.ok:
        raise typer.Exit(1)


@app.command()
def status(
    out: OutUrl = DEFAULT_STORE_URL,
    pipeline: Annotated[str | None, typer.Option(
        "--pipeline", "-p", help="Compare against this pipeline [default: the one that last ran on the store]."
    )] = None,
    config: ConfigOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout (rows, counts, review).")]
    = False,
    session: Annotated[list[str] | None, typer.Option("--session", help="Only this session id (repeatable).")] = None,
) -> None:
    """Per session and stage: done, skipped, stale, damaged (naming the array), failed (with the message), running
    or pending."""
    import json

    from .config import DEFAULT_CONFIG, load_pipeline
    from .runner import gone_note, missing_recordings, status_table
    from .stages.qc import read_review
    from .store import Store

    try:
        store = Store(out, mode="r")
        recorded = store.attrs
        name = pipeline or recorded.get("pipeline") or "default"
        path = _config_path(config)
        if path is None and pipeline is None and recorded.get("config") and Path(recorded["config"]).is_file():
            path = Path(recorded["config"])  # the file the recorded pipeline came from
        _known_sessions(store, session, out)
        rows = [r for r in status_table(store, load_pipeline(name, path)) if not session or r["session"] in session]
    except EtherPrepError as exc:
        raise _fail(exc) from exc
    gone = missing_recordings(store)  # e.g. withdrawn from the study: say so, delete nothing
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    verdicts = {sid: _review(read_review, store, sid) for sid in store.session_ids()}
    review = {sid: list(v.reasons) for sid, v in verdicts.items() if v.needs_review}
    if as_json:
        typer.echo(json.dumps({"store": str(out), "pipeline": name, "config": str(path or DEFAULT_CONFIG),
                               "sessions": len(store.session_ids()),
                               "counts": counts, "needs_review": review, "rows": rows,
                               "missing_recordings": [{"session": sid, "recording": rel} for sid, rel in gone]},
                              ensure_ascii=False))
        return
    colours = {"done": typer.colors.GREEN, "skipped": typer.colors.CYAN, "failed": typer.colors.RED,
               "stale": typer.colors.YELLOW, "review": typer.colors.YELLOW, "damaged": typer.colors.RED}
    for row in rows:
        _say(f"{row['session']:48s} {row['stage']:12s} {row['state']:8s} {row['message']}".rstrip(),
             colours.get(row["state"]))
    typer.echo(f"{len(store.session_ids())} session(s), pipeline {name!r}: "
               + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    typer.echo(f"compared against pipeline {name!r} of {path or DEFAULT_CONFIG}")
    if gone:
        _say(gone_note(gone, "at their stored path (moved? a run over their raw folder updates it)"),
             colours["review"])
    if review:
        _say(f"{len(review)} session(s) need review (see the qc rows above): {', '.join(review)}", colours["review"])
    _say_lock(out, colours["review"])


def _say_lock(out: str, colour: str) -> None:
    """Who holds the store's lock, if anyone: a live run here, one on another host, or a stale one."""
    import socket

    from .lock import STORE_LOCK, describe, is_stale, read_holder
    from .store import local_path

    folder = local_path(out)
    lock = folder / STORE_LOCK if folder is not None else None
    holder = read_holder(lock) if lock is not None else None
    if lock is None or holder is None:
        return
    if is_stale(lock, holder):
        _say(f"stale store lock {lock}: left by {describe(holder)}, a process that no longer runs (killed "
             f"or crashed); no run holds this store now; the next run takes the lock over and redoes the "
             f"stages shown 'running'", colour)
    elif holder.get("host") not in (None, socket.gethostname()):
        _say(f"a run on another host holds this store: {describe(holder)}; this host cannot check whether it "
             f"still runs; if it is gone, delete {lock}", colour)
    else:
        _say(f"a run is writing this store now: {describe(holder)}", colour)


@app.command()
def remove(
    session_ids: Annotated[list[str], typer.Argument(metavar="SESSION", help=(
        "Ids of the sessions to delete, as `ether-prep status` lists them."))],
    out: OutUrl = DEFAULT_STORE_URL,
    wait: Wait = 0.0,
) -> None:
    """Delete sessions from the store: their results, windows and manifest rows (e.g. consent withdrawn).

    Asks nothing; deletes nothing when any id is unknown. The recordings themselves are not touched.
    """
    from .removal import remove_sessions

    try:
        for line in remove_sessions(out, session_ids, wait=wait):
            typer.echo(line)
    except EtherPrepError as exc:
        raise _fail(exc) from exc


def _review(read_review: Callable[[Any], Any], store: Any, sid: str) -> Any:
    """A session's qc verdict; a damaged qc stage shows in its status row instead (its verdict is not read)."""
    from .errors import StoreDamageError
    from .stages.qc import Review

    try:
        return read_review(store.session(sid))
    except StoreDamageError:
        return Review()


def _say(line: str, colour: str | None) -> None:
    """A line on stdout, coloured unless NO_COLOR is set (https://no-color.org) or there is no colour."""
    if colour and not os.environ.get("NO_COLOR"):
        typer.secho(line, fg=colour)
    else:
        typer.echo(line)


@app.command()
def verify(
    raw_dir: Annotated[Path | None, typer.Argument(help="With --repair: the folder of recordings [default: each "
                                                        "session's recording where the store says it is].")] = None,
    out: OutUrl = DEFAULT_STORE_URL,
    session: Annotated[list[str] | None, typer.Option("--session", help="Only this session id (repeatable).")] = None,
    repair: Annotated[bool, typer.Option("--repair", help="Recompute every damaged stage (and the stages that read "
                                                          "it) from the recordings, then verify again.")] = False,
    pipeline: Annotated[str | None, typer.Option(
        "--pipeline", "-p", help="With --repair: recompute with this pipeline [default: the one that last ran on "
                                 "the store].")] = None,
    config: ConfigOpt = None,
    executor: Executor = ExecutorName.auto,
    quiet: Quiet = False,
) -> None:
    """Check every stored output against what its stage recorded writing (every file's digest): print each
    damaged (session, stage, array, problem) and the fix; exit 1 when anything is damaged."""
    from .config import load_pipeline
    from .runner import run_pipeline
    from .store import Store

    try:
        store = Store(out, mode="r")
        found = store.verify(session)
        for d in found:
            _say(f"damaged {d.session} [{d.stage}] {d.array or 'zarr.json'}: {d.problem}", typer.colors.RED)
        if not found:
            typer.echo(f"{len(session or store.session_ids())} session(s) verified: no damage")
            return
        if not repair:
            typer.echo(f"{len(found)} problem(s) in {len({(d.session, d.stage) for d in found})} stage(s); fix: "
                       f"`ether-prep verify --repair --out {out}` recomputes them from the recordings")
            raise typer.Exit(1)
        recorded = store.attrs
        path = _config_path(config)
        if path is None and pipeline is None and recorded.get("config") and Path(recorded["config"]).is_file():
            path = Path(recorded["config"])
        pipe = load_pipeline(pipeline or recorded.get("pipeline") or "default", path)
        redo = sorted({(d.session, d.stage) for d in found})
        summary = run_pipeline(pipe, raw_dir, out, family=None, executor=executor.value, progress=not quiet,
                               session_ids={sid for sid, _ in redo}, redo=redo)
        typer.echo(summary.report())
        left = Store(out, mode="r").verify(session)
    except EtherPrepError as exc:
        raise _fail(exc) from exc
    for d in left:
        _say(f"still damaged {d.session} [{d.stage}] {d.array or 'zarr.json'}: {d.problem}", typer.colors.RED)
    if left or not summary.ok:
        raise typer.Exit(1)
    typer.echo(f"repaired {len(redo)} stage(s); verified again: no damage")


@app.command()
def validate(
    raw_dir: Annotated[Path | None, typer.Argument(help="Also check that every recording here can be read.")] = None,
    pipeline: Annotated[str | None, typer.Option("--pipeline", "-p", help="Check only this pipeline.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Check pipelines.yaml (and the recordings in RAW_DIR) without computing anything."""
    from .config import load_config, load_pipeline
    from .sessions import check_readable, scan

    path = _config_path(config)
    try:
        pipes = [load_pipeline(pipeline, path)] if pipeline else list(load_config(path).values())
        for p in pipes:
            typer.echo(f"pipeline {p.name!r}: ok ({', '.join(s.name for s in p.stages if s.enabled)})")
        if raw_dir is None:
            return
        bad = 0
        found = scan(raw_dir)
        for s in found.sessions:
            problem = found.problems.get(s.id) or check_readable(s)
            if problem:
                bad += 1
                _secho(f"unreadable: {problem}", typer.colors.RED, err=True)
        for error in found.errors:
            _secho(f"error: {error}", typer.colors.RED, err=True)
        for note in found.notes:
            typer.echo(f"note: {note}")
        typer.echo(f"{len(found.sessions)} recording(s), {bad} unreadable")
    except EtherPrepError as exc:
        raise _fail(exc) from exc
    if bad or found.errors:
        raise typer.Exit(1)


@app.command()
def models(pipeline: PipelineOpt = "default", config: ConfigOpt = None) -> None:
    """Which model each stage of the pipeline resolves to, and where from (nothing is loaded)."""
    from .config import load_pipeline
    from .stages import stage_class

    try:
        pipe = load_pipeline(pipeline, _config_path(config))
        for spec in pipe.stages:
            info = stage_class(spec.name)(spec).model_info()
            shown = ", ".join(f"{k}={v}" for k, v in info.items()) or "no model"
            typer.echo(f"{spec.name:12s} {spec.backend:12s} {shown}")
    except EtherPrepError as exc:
        raise _fail(exc) from exc


@app.command()
def doctor(out: OutUrl = DEFAULT_STORE_URL, pipeline: RunPipelineOpt = None, config: ConfigOpt = None) -> None:
    """What a run here would use, checked without computing or loading anything: FFmpeg, NVIDIA GPUs, the
    pipeline chosen with every parameter (defaults included), where each model resolves, and the store. Exits 1
    when something a run needs is missing."""
    import json
    import shutil
    import subprocess

    from .adapters.cuda_libs import cuda_driver
    from .config import DEFAULT_CONFIG, load_pipeline
    from .devices import check_stage_device
    from .executors import local_gpus
    from .stages import stage_class
    from .store import Store

    problems = 0
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg:
        version = subprocess.run([ffmpeg, "-version"], capture_output=True, text=True).stdout.split("\n")[0]
        typer.echo(f"ffmpeg       {ffmpeg} ({version})")
    else:
        problems += 1
        _secho("ffmpeg       missing: install FFmpeg (bash scripts/setup.sh does, from apt)", typer.colors.RED)
    typer.echo(f"gpus         {local_gpus()} NVIDIA GPU(s) visible")
    driver = cuda_driver()
    try:
        name = _pipeline_name(RunOptions(out=out, pipeline=pipeline, config=config))
        path = _config_path(config)
        pipe = load_pipeline(name, path)
    except EtherPrepError as exc:
        raise _fail(exc) from exc
    extends = f", extending {pipe.extends}" if pipe.extends else ""
    typer.echo(f"pipeline     {name!r} of {path or DEFAULT_CONFIG}{extends}")
    for spec in pipe.stages:
        if not spec.enabled:
            continue
        try:
            info = stage_class(spec.name)(spec).model_info()
            shown = ", ".join(f"{k}={v}" for k, v in info.items()) or "no model"
        except EtherPrepError as exc:
            problems += 1
            shown = f"MISSING: {exc}"
        typer.echo(f"  {spec.name:12s} {spec.backend:12s} {shown}")
        typer.echo(f"  {'':12s} params {json.dumps(spec.params_dict(), default=str)}")
        device = check_stage_device(stage_class(spec.name)(spec), driver)
        problems += bool(device.problems)
        if device.problems:
            _secho(f"  {'':12s} {device.line}", typer.colors.RED)
        else:
            typer.echo(f"  {'':12s} {device.line}")
    try:
        store = Store(out, mode="r")
        typer.echo(f"store        {out}: {len(store.session_ids())} session(s), last run with pipeline "
                   f"{store.attrs.get('pipeline')!r}")
    except (EtherPrepError, OSError, ValueError):
        typer.echo(f"store        {out}: none yet (a run creates it)")
    if problems:
        raise typer.Exit(1)


@app.command()
def export(
    dest_dir: Annotated[Path, typer.Argument(help="Folder to write one file per session into.")],
    out: Out = DEFAULT_STORE,
    fmt: Annotated[str, typer.Option("--format", "-f", autocompletion=_complete_format, help=(
        "One of: json (whisperx's shape), srt, vtt, txt, tsv, rttm (+ uem), faces (py-feat CSV), "
        "openface (OpenFace 2 CSV), or all of them; or clips (video clips + JSONL for vision-language "
        "models, not part of all)."))] = "json",
    session: Annotated[list[str] | None, typer.Option("--session", help="Only this session id (repeatable).")] = None,
    deidentify: Annotated[bool, typer.Option(
        "--deidentify", help="For sharing: e-mail addresses, phone numbers, URLs and listed names in transcripts "
                             "become [EMAIL] [PHONE] [URL] [NAME]; face boxes, landmarks and identity embeddings "
                             "are left out; files are named session-<keyed hash> instead of by recording (key: "
                             "$ETHER_PREP_DEID_KEY, else STORE/.ether-prep-key, made once).")] = False,
    names: Annotated[Path | None, typer.Option(
        "--names", help="With --deidentify: a text file of names to replace, one per line (first names and "
                        "surnames on lines of their own if they may be said alone).")] = None,
    crop: Annotated[str | None, typer.Option("--crop", help="clips: 'face' (the speaker's face; a pair: both "
                                                            "faces) or 'full' (the whole frame) [default: face]")]
    = None,
    fps: Annotated[float | None, typer.Option("--fps", help="clips: frames per second [default: 8]")] = None,
    size: Annotated[int | None, typer.Option("--size", help="clips: pixels of the short side [default: 224]")] = None,
    clips: Annotated[str | None, typer.Option("--clips", help="clips: 'utterances', 'pairs' or 'both' "
                                                              "[default: both]")] = None,
    shards: Annotated[int | None, typer.Option("--shards", help="clips: also write N WebDataset tar shards per "
                                                                "kind under DEST/shards/")] = None,
    no_audio: Annotated[bool, typer.Option("--no-audio", help="clips: no audio track")] = False,
    raw: Annotated[Path | None, typer.Option("--raw", help="clips: the folder of recordings (each read at its "
                                                           "path relative to it) [default: where the store says "
                                                           "each recording is]")] = None,
) -> None:
    """Write transcripts, diarization or face tables for every session in the store, one file per session;
    or (--format clips) a video clip per utterance and dialogue pair with a JSONL list for vision-language
    models."""
    clip_args = {"--crop": crop, "--fps": fps, "--size": size, "--clips": clips, "--shards": shards,
                 "--no-audio": no_audio or None, "--raw": raw}
    try:
        if names is not None and not deidentify:
            raise ConfigError("--names only applies with --deidentify; add --deidentify")
        if fmt == "clips":
            _export_clips(dest_dir, out, session, deidentify, names, clip_args)
            return
        if given := [k for k, v in clip_args.items() if v is not None]:
            raise ConfigError(f"{', '.join(given)} only apply with --format clips")
        failed = _export_files(dest_dir, out, fmt, session, deidentify, names)
    except EtherPrepError as exc:
        raise _fail(exc) from exc
    if failed:
        raise typer.Exit(1)


def _export_files(dest_dir: Path, out: str, fmt: str, session: list[str] | None, deidentify: bool,
                  names: Path | None) -> int:
    """The per-session formats: one file per session and format; returns how many failed."""
    from .exports import FORMATS, NothingToExport, exporter
    from .store import Store

    writers = [exporter(f) for f in (FORMATS if fmt == "all" else [fmt])]
    deid = None
    if deidentify:
        from .deidentify import Deidentifier

        deid = Deidentifier.from_names_file(names)
    store = Store(out, mode="r")
    if deid is not None:  # aliases keyed with $ETHER_PREP_DEID_KEY or the store's own key file
        from .deidentify import deid_key

        deid.key = deid_key(out)
    _known_sessions(store, session, out)
    dest_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    for sid in session or store.session_ids():
        for write in writers:
            try:
                typer.echo(write(store.session(sid), dest_dir, deid))
            except NothingToExport as exc:  # an audio-only session has no faces: nothing failed
                typer.echo(f"skipped {sid}: {exc}", err=True)
            except EtherPrepError as exc:  # one session that cannot be exported does not stop the others
                failed += 1
                _secho(f"failed {sid}: {exc}", typer.colors.YELLOW, err=True)
    return failed


def _export_clips(dest_dir: Path, out: str, session: list[str] | None, deidentify: bool, names: Path | None,
                  args: dict[str, Any]) -> None:
    """``export --format clips``: every session's clips, a summary line; exit 1 when any clip failed."""
    from .exports.clips import ClipOptions, export_clips
    from .store import Store

    kinds = {None: ("utterance", "pair"), "both": ("utterance", "pair"), "utterances": ("utterance",),
             "pairs": ("pair",)}
    if args["--clips"] not in kinds:
        raise ConfigError(f"--clips {args['--clips']!r}: give utterances, pairs or both")
    given = {"crop": args["--crop"], "fps": args["--fps"], "size": args["--size"], "shards": args["--shards"]}
    options = ClipOptions(**{k: v for k, v in given.items() if v is not None}, kinds=kinds[args["--clips"]],
                          audio=not args["--no-audio"])
    options.validate()
    raw = args["--raw"]
    if raw is not None and not raw.is_dir():
        raise ConfigError(f"--raw {raw}: not a folder; give the folder of recordings")
    deid = None
    store = Store(out, mode="r")
    if deidentify:
        from .deidentify import Deidentifier, deid_key

        deid = Deidentifier.from_names_file(names)
        deid.key = deid_key(out)
        typer.echo("note: --deidentify pixelates every face and scrubs the texts; voices stay in the audio "
                   "(--no-audio leaves it out)", err=True)
    _known_sessions(store, session, out)
    summary = export_clips(store, session or store.session_ids(), dest_dir, options, deid, raw)
    for note in summary.notes:
        typer.echo(f"skipped {note}", err=True)
    for failure in summary.failed:
        _secho(f"failed {failure}", typer.colors.YELLOW, err=True)
    for path in (*summary.jsonl.values(), *summary.shards):
        typer.echo(path)
    typer.echo(summary.line())
    if summary.failed:
        raise typer.Exit(1)


@app.command()
def report(
    dest: Annotated[Path, typer.Argument(help="Folder to write index.html and sessions/*.html into.")]
    = Path("ether_prep_report"),
    out: OutUrl = DEFAULT_STORE_URL,
    session: Annotated[list[str] | None, typer.Option("--session", help="Only this session id (repeatable); the "
                                                                        "index lists the sessions reported.")] = None,
    figures: Annotated[bool, typer.Option("--figures", help="Also write each session's figure as PNG and SVG "
                                                            "under DEST/figures/.")] = False,
    deidentify: Annotated[bool, typer.Option("--deidentify", help="For sharing a batch overview: no thumbnails, no "
                                                                  "transcript text, no recording names; sessions "
                                                                  "named by their keyed alias.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar (shown only on a terminal anyway).")]
    = False,
) -> None:
    """A self-contained HTML page per session (speaker timeline, transcript, persons and their links, AU heatmap,
    cues, provenance, failures) and DEST/index.html over the batch, needs-review sessions first."""
    from .report import build_report

    try:
        summary = build_report(out, dest, session, figures=figures, deidentify=deidentify, progress=not quiet)
    except EtherPrepError as exc:
        raise _fail(exc) from exc
    typer.echo(f"{len(summary.pages)} session page(s) and {summary.index}"
               + (f"; {len(summary.figures)} figure file(s) in {dest / 'figures'}" if summary.figures else ""))
    if summary.failed:
        _say(f"{len(summary.failed)} session(s) failed a stage (their pages say what failed): "
             f"{', '.join(summary.failed)}", typer.colors.YELLOW)


if __name__ == "__main__":
    app()
