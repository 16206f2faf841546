"""The ``ether-prep`` command line. Heavy libraries are imported inside commands, so ``--help`` stays fast."""

from __future__ import annotations

import os
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from .errors import EtherPrepError

app = typer.Typer(
    name="ether-prep",
    help="Turn recorded counselling sessions into speech, face and per-utterance features in a Zarr store.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


class ExecutorName(StrEnum):
    auto = "auto"
    ray = "ray"
    inline = "inline"


Out = Annotated[Path, typer.Option("--out", "-o", help="The Zarr store to write or read.")]
OutUrl = Annotated[str, typer.Option("--out", "-o", help="The Zarr store: a folder, or an fsspec URL "
                                                          "(file://, s3://, gs://).")]
PipelineOpt = Annotated[str, typer.Option("--pipeline", "-p", envvar="ETHER_PREP_PIPELINE",
                                          help="Pipeline name in pipelines.yaml (e.g. default, cpu).")]
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
Only = Annotated[list[str] | None, typer.Option("--only", help="Run only this stage (repeatable).")]
From = Annotated[str | None, typer.Option("--from", help="Run from this stage on.")]
Executor = Annotated[ExecutorName, typer.Option("--executor", "-x", envvar="ETHER_PREP_EXECUTOR",
                                                help="auto (inline for a small job on a machine without GPUs, "
                                                     "else ray), ray (a local cluster unless --ray-address) or "
                                                     "inline (this process).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, no Ray worker logs (bars show only "
                                                           "on a terminal anyway).")]
DEFAULT_STORE = Path("ether_prep.zarr")
DEFAULT_STORE_URL = str(DEFAULT_STORE)


def _config_path(config: Path | None) -> Path | None:
    if config is not None:
        return config
    local = Path("pipelines.yaml")
    return local if local.is_file() else None


def _fail(exc: EtherPrepError) -> typer.Exit:
    typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
    return typer.Exit(2)


def _run(family: str | None, raw_dir: Path | None, out: str, pipeline: str, config: Path | None,
         ray_address: str | None, workers: int | None, force: bool, only: list[str] | None, start: str | None,
         executor: ExecutorName, quiet: bool) -> None:
    from .config import load_pipeline
    from .runner import run_pipeline

    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
    try:
        pipe = load_pipeline(pipeline, _config_path(config))
        summary = run_pipeline(pipe, raw_dir, out, family=family, only=only, start=start, force=force,
                               executor=executor.value, workers=workers, ray_address=ray_address,
                               progress=not quiet)
    except EtherPrepError as exc:
        raise _fail(exc) from exc
    typer.echo(summary.report())
    if not summary.ok:
        typer.secho(f"{len(summary.failed)} stage run(s) failed; see `ether-prep status --out {out}`",
                    fg=typer.colors.RED, err=True)
        raise typer.Exit(1)


@app.command()
def extract(
    raw_dir: Annotated[Path, typer.Argument(help="Folder of recordings (searched recursively).")],
    out: OutUrl = DEFAULT_STORE_URL, pipeline: PipelineOpt = "default", config: ConfigOpt = None,
    ray_address: RayAddress = None, workers: Workers = None, force: Force = False, only: Only = None,
    start: From = None, executor: Executor = ExecutorName.auto, quiet: Quiet = False,
) -> None:
    """Run the extract stages (audio, speech, faces) over every recording in RAW_DIR."""
    _run("extract", raw_dir, out, pipeline, config, ray_address, workers, force, only, start, executor, quiet)


@app.command()
def align(
    out: OutUrl = DEFAULT_STORE_URL, pipeline: PipelineOpt = "default", config: ConfigOpt = None,
    ray_address: RayAddress = None, workers: Workers = None, force: Force = False, only: Only = None,
    start: From = None, executor: Executor = ExecutorName.auto, quiet: Quiet = False,
) -> None:
    """Run the align stages over the sessions already extracted into the store."""
    _run("align", None, out, pipeline, config, ray_address, workers, force, only, start, executor, quiet)


@app.command()
def run(
    raw_dir: Annotated[Path, typer.Argument(help="Folder of recordings (searched recursively).")],
    out: OutUrl = DEFAULT_STORE_URL, pipeline: PipelineOpt = "default", config: ConfigOpt = None,
    ray_address: RayAddress = None, workers: Workers = None, force: Force = False, only: Only = None,
    start: From = None, executor: Executor = ExecutorName.auto, quiet: Quiet = False,
) -> None:
    """Extract and align in one batch job."""
    _run(None, raw_dir, out, pipeline, config, ray_address, workers, force, only, start, executor, quiet)


@app.command()
def status(out: OutUrl = DEFAULT_STORE_URL, pipeline: PipelineOpt = "default", config: ConfigOpt = None) -> None:
    """Per session and stage: done, skipped, stale, failed (with the message), running or pending."""
    from .config import load_pipeline
    from .runner import status_table
    from .store import Store

    try:
        store = Store(out, mode="r")
        rows = status_table(store, load_pipeline(pipeline, _config_path(config)))
    except EtherPrepError as exc:
        raise _fail(exc) from exc
    colours = {"done": typer.colors.GREEN, "skipped": typer.colors.CYAN, "failed": typer.colors.RED,
               "stale": typer.colors.YELLOW}
    for row in rows:
        line = f"{row['session']:48s} {row['stage']:12s} {row['state']:8s} {row['message']}".rstrip()
        typer.secho(line, fg=colours.get(row["state"]))
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    typer.echo(f"{len(store.session_ids())} session(s): " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    from .stages.qc import review_summary

    review = [sid for sid in store.session_ids() if review_summary(store.session(sid))[0]]
    if review:
        typer.secho(f"{len(review)} session(s) need review (see the qc rows above): {', '.join(review)}",
                    fg=typer.colors.YELLOW)


@app.command()
def validate(
    raw_dir: Annotated[Path | None, typer.Argument(help="Also check that every recording here can be read.")] = None,
    pipeline: Annotated[str | None, typer.Option("--pipeline", "-p", help="Check only this pipeline.")] = None,
    config: ConfigOpt = None,
) -> None:
    """Check pipelines.yaml (and the recordings in RAW_DIR) without computing anything."""
    from .config import load_config, load_pipeline
    from .sessions import check_readable, discover_sessions

    path = _config_path(config)
    try:
        pipes = [load_pipeline(pipeline, path)] if pipeline else list(load_config(path).values())
        for p in pipes:
            typer.echo(f"pipeline {p.name!r}: ok ({', '.join(s.name for s in p.stages if s.enabled)})")
        if raw_dir is None:
            return
        bad = 0
        sessions = discover_sessions(raw_dir)
        for s in sessions:
            problem = check_readable(s)
            if problem:
                bad += 1
                typer.secho(f"unreadable: {problem}", fg=typer.colors.RED, err=True)
        typer.echo(f"{len(sessions)} recording(s), {bad} unreadable")
    except EtherPrepError as exc:
        raise _fail(exc) from exc
    if bad:
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
def export(
    dest_dir: Annotated[Path, typer.Argument(help="Folder to write one file per session into.")],
    out: Out = DEFAULT_STORE,
    fmt: Annotated[str, typer.Option("--format", "-f", help="json, rttm, srt, vtt or faces.")] = "json",
    session: Annotated[list[str] | None, typer.Option("--session", help="Only this session id (repeatable).")] = None,
) -> None:
    """Write transcripts (json, rttm, srt, vtt) or face tables (faces: CSV) for every session in the store."""
    from .exports import exporter
    from .store import Store

    try:
        write = exporter(fmt)
        store = Store(out, mode="r")
        dest_dir.mkdir(parents=True, exist_ok=True)
        failed = 0
        for sid in session or store.session_ids():
            try:
                typer.echo(write(store.session(sid), dest_dir))
            except EtherPrepError as exc:  # one session without that stage does not stop the others
                failed += 1
                typer.secho(f"skipped {sid}: {exc}", fg=typer.colors.YELLOW, err=True)
    except EtherPrepError as exc:
        raise _fail(exc) from exc
    if failed:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
