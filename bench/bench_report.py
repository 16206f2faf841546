"""Benchmark: ``ether-prep report`` over a batch of sessions.

Copies the sessions of a small store made by a real pipeline run (``--source STORE``: e.g. one made by the
tests' report fixture or ``ether-prep run``) into a new store, round-robin, until it holds ``--sessions``
sessions (each copy is a whole session group under a new id, pointing at the same recording), then times
:func:`ether_prep.report.build_report` over all of them: pages, figures, thumbnails (decoded from the
recordings) and the index; with the automatic worker count and with one process.

Run::

    uv run python bench/bench_report.py --source STORE --sessions 100
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path


def build_batch(source: Path, dest: Path, n: int) -> list[str]:
    """A store of ``n`` sessions copied from ``source``'s (zarr.json of the root copied as it is)."""
    dest.mkdir(parents=True)
    shutil.copy(source / "zarr.json", dest / "zarr.json")
    (dest / "sessions").mkdir()
    originals = sorted(p for p in (source / "sessions").iterdir() if (p / "zarr.json").is_file())
    ids = []
    for k in range(n):
        src = originals[k % len(originals)]
        sid = f"{src.name.rsplit('-', 1)[0]}_{k:04d}-{k:08x}"
        shutil.copytree(src, dest / "sessions" / sid, copy_function=shutil.copy2)
        ids.append(sid)
    return ids


def _cpu() -> float:
    """CPU seconds of this process and its finished children (the report's workers, once their pool is shut)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="a small store to copy sessions from")
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--single", action="store_true", help="also time one process (workers=1)")
    args = parser.parse_args()
    from ether_prep.report import build_report

    with tempfile.TemporaryDirectory() as tmp:
        store = Path(tmp) / "batch.zarr"
        build_batch(args.source, store, args.sessions)
        n_source = sum((p / "zarr.json").is_file() for p in (args.source / "sessions").iterdir())
        print(f"{args.sessions} sessions copied from {n_source} in {args.source}; "
              f"{os.cpu_count()} CPU core(s); load {os.getloadavg()[0]:.1f}")
        runs = [("auto", None)] + ([("1 process", 1)] if args.single else [])
        for label, workers in runs:
            start, cpu0 = time.perf_counter(), _cpu()
            summary = build_report(str(store), Path(tmp) / f"report-{label}", progress=False, workers=workers)
            wall, cpu = time.perf_counter() - start, _cpu() - cpu0
            size = sum(p.stat().st_size for p in summary.pages) / 1e6
            print(f"{label:10s} {len(summary.pages)} pages + index in {wall:.1f} s wall, {cpu:.1f} s CPU (this process "
                  f"and its workers; {cpu / len(summary.pages):.2f} s a session); {size:.1f} MB of pages; load "
                  f"{os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
