"""``ether-prep report``: a self-contained HTML page per session and an index over the batch, drawn from the
store (nothing recomputed but thumbnails, which decode only the frames they show).

Layout of ``DEST``::

    index.html                  every session, needs-review first with the reasons, sortable by qc figures
    sessions/<session>.html     one page per session (pictures inlined: opens offline, alone)
    figures/<session>.png|.svg  with --figures: the session figure for papers

Parts: :mod:`.data` gathers a session through the stages' readers, :mod:`.figures` decides what to draw
(:mod:`ether_prep.adapters.matplotlib_plot` draws it), :mod:`.html` writes the pages.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import EtherPrepError, StoreError

__all__ = ["ReportSummary", "build_report"]

# Below this many sessions one process is quicker than starting workers (each imports matplotlib and zarr).
_PARALLEL_FROM = 12


@dataclass
class ReportSummary:
    index: Path
    pages: list[Path] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # sessions whose page says a stage failed


@dataclass(frozen=True)
class _Job:
    store: str
    session: str
    status: list[dict[str, Any]]
    name: str
    dest: str
    figures: bool
    deidentify: bool


_STORES: dict[str, Any] = {}  # per process: the store opened once for every session it reports


def _report_one(job: _Job) -> tuple[Any, list[str], list[str]]:
    """Write one session's page (and figures); returns its index row, the page and figure files."""
    from ..store import Store
    from .data import gather_session
    from .figures import session_figure
    from .html import IndexRow, session_page

    store = _STORES.get(job.store)
    if store is None:
        store = _STORES[job.store] = Store(job.store, mode="r")
    group = store.session(job.session)
    data = gather_session(group, job.status, job.name, thumbnails=not job.deidentify)
    info = group.info
    path = str(info.get("path", ""))
    hide = [path, str(info.get("relpath", "")), Path(path).name, Path(path).stem] if path else []
    dest = Path(job.dest)
    png, written = None, []
    figure = session_figure(data)
    if figure is not None:
        from ..adapters.matplotlib_plot import render

        encoded = render(figure, ("png", "svg") if job.figures else ("png",))
        png = encoded["png"]
        if job.figures:
            for fmt, blob in encoded.items():
                out = dest / "figures" / f"{job.name}.{fmt}"
                out.write_bytes(blob)
                written.append(str(out))
    page = dest / "sessions" / f"{job.name}.html"
    page.write_text(session_page(data, png, job.deidentify, hide), encoding="utf-8")
    return IndexRow(data, f"sessions/{page.name}", job.deidentify, hide), [str(page)], written


def build_report(store_url: str, dest: Path, session_ids: Sequence[str] | None = None, figures: bool = False,
                 deidentify: bool = False, progress: bool = True, workers: int | None = None) -> ReportSummary:
    """Write the report of ``session_ids`` (default: every session of the store) under ``dest``.

    ``workers``: processes drawing pages (default: one per CPU core for a batch of at least 12 sessions).
    """
    from ..store import Store
    from .html import index_page

    store = Store(store_url, mode="r")
    known = store.session_ids()
    wanted = list(dict.fromkeys(session_ids)) if session_ids else known
    unknown = [s for s in wanted if s not in known]
    if unknown:
        raise StoreError(f"{store_url}: no session {', '.join(map(repr, unknown))}; `ether-prep status --out "
                         f"{store_url}` lists the session ids")
    names = {sid: sid for sid in wanted}
    if deidentify:
        from ..deidentify import deid_key, session_alias

        key = deid_key(store_url)  # the store's key: the aliases `export --deidentify` gives
        names = {sid: session_alias(key, sid) for sid in wanted}
    rows_of = _status_rows(store, wanted)
    try:
        (dest / "sessions").mkdir(parents=True, exist_ok=True)
        if figures:
            (dest / "figures").mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"{dest}: cannot create the report folder ({exc.strerror}); choose a writable DEST") from exc
    jobs = [_Job(store_url, sid, rows_of[sid], names[sid], str(dest), figures, deidentify) for sid in wanted]
    summary = ReportSummary(dest / "index.html")
    index_rows = _run(jobs, summary, dest, progress, workers)
    summary.failed = [r.name for r in index_rows if r.cls == "failed"]
    summary.index.write_text(index_page(index_rows, store_url, deidentify), encoding="utf-8")
    return summary


def _status_rows(store: Any, wanted: list[str]) -> dict[str, list[dict[str, Any]]]:
    """Each session's stage rows as ``status`` gives them (damage included: fast check), in pipeline order, with
    the stages of the pipeline that last ran that the session never got to (after a failure) as pending."""
    from ..runner import status_table

    rows_of: dict[str, list[dict[str, Any]]] = {sid: [] for sid in wanted}
    for row in status_table(store):
        if row["session"] in rows_of:
            rows_of[row["session"]].append(row)
    order = _pipeline_stages(store)
    rank = {name: i for i, name in enumerate(order)}
    for sid, rows in rows_of.items():
        have = {r["stage"] for r in rows}
        rows += [{"session": sid, "stage": name, "state": "pending",
                  "message": "not run: a stage it needs did not complete"} for name in order if name not in have]
        rows.sort(key=lambda r: (rank.get(r["stage"], len(rank)), r["stage"]))
    return rows_of


def _run(jobs: list[_Job], summary: ReportSummary, dest: Path, progress: bool, workers: int | None) -> list[Any]:
    """Write every job's page, in worker processes for a batch; returns the index rows."""
    from tqdm import tqdm

    n_workers = workers or (min(os.cpu_count() or 1, 8) if len(jobs) >= _PARALLEL_FROM else 1)
    bar = tqdm(total=len(jobs), desc="report", unit="session", disable=not progress or not sys.stderr.isatty(),
               file=sys.stderr)
    index_rows = []
    try:
        if n_workers > 1:
            import multiprocessing

            # spawn, not fork: this process runs zarr's I/O thread, which a forked child would inherit locked.
            with ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("spawn")) as pool:
                for result in pool.map(_report_one, jobs, chunksize=max(1, len(jobs) // (8 * n_workers))):
                    index_rows.append(_collect(summary, result))
                    bar.update()
        else:
            for job in jobs:
                index_rows.append(_collect(summary, _report_one(job)))
                bar.update()
    except OSError as exc:
        raise StoreError(f"{exc.filename or dest}: cannot write the report ({exc.strerror}); free space or choose "
                         f"a writable DEST") from exc
    finally:
        bar.close()
    return index_rows


def _pipeline_stages(store: Any) -> list[str]:
    """The stages, in order, of the pipeline that last ran on the store (empty when it cannot be loaded now:
    then the pages list the stages each session has)."""
    from ..config import load_pipeline

    recorded = store.attrs
    config = recorded.get("config")
    try:
        pipe = load_pipeline(recorded.get("pipeline") or "default",
                             Path(config) if config and Path(config).is_file() else None)
    except EtherPrepError:
        return []
    return [spec.name for spec in pipe.stages if spec.enabled]


def _collect(summary: ReportSummary, result: tuple[Any, list[str], list[str]]) -> Any:
    row, pages, figures = result
    summary.pages += [Path(p) for p in pages]
    summary.figures += [Path(p) for p in figures]
    return row
