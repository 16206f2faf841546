"""Benchmark: random-utterance reads from an aligned store of many utterances, against raw Zarr slicing.

1. Extract the side-by-side two-face clip with the real ``cpu`` pipeline (or reuse ``--source STORE``).
2. Build long sessions by repeating its extracted outputs (``utterances`` and ``face`` groups) ``--reps``
   times end to end (6 s per repetition, 2 utterances each), then copy that session ``--copies`` times.
3. Run the real ``align`` stage over all of them through the runner (throughput reported).
4. Read ``--reads`` random utterances through :func:`ether_prep.open_store` (``dataset[i]``) and, in the
   same run, by raw slicing of pre-opened Zarr arrays with the same offsets (the baseline); report
   median / p95 latency, the ratio, DataLoader throughput, peak memory and the store's file count.

Run::

    uv run python bench/bench_align.py                     # 20 sessions x 300 reps = 12,000 utterances
    uv run python bench/bench_align.py --reps 50 --copies 4 --reads 500   # quick
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("ETHER_PREP_MODELS", str(ROOT.parent / "shared" / "models"))
CLIP = DATA / "video" / "grid_two_faces_side_by_side.mp4"
FACE_ARRAYS = ("time", "au", "emotion", "pose", "box", "score", "mouth_open")


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _extract(work: Path, config: Path) -> Path:
    from ether_prep.config import load_pipeline
    from ether_prep.runner import run_pipeline

    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    if not (raw / CLIP.name).exists():
        (raw / CLIP.name).symlink_to(CLIP)
    store = work / "source.zarr"
    t0 = time.perf_counter()
    summary = run_pipeline(load_pipeline("cpu", config), raw, store, family="extract")
    if not summary.ok:
        sys.exit(f"extraction failed:\n{summary.report()}")
    print(f"extract (real cpu pipeline, {CLIP.name}): {time.perf_counter() - t0:.1f} s")
    return store


def _plain(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k: np.array([str(x) for x in v]) if v.dtype.kind in "TUO" else v for k, v in table.items()}


def _build(source: Path, out: Path, reps: int, copies: int) -> int:
    """Long sessions made of ``reps`` end-to-end repetitions of the source session's extracted outputs."""
    from ether_prep.store import Store, write_array, write_table

    src_store = Store(source, mode="r")
    sid0 = next(s for s in src_store.session_ids() if s.startswith("grid_two_faces"))
    src = src_store.session(sid0)
    face = src.stage_group("face")
    duration = float(src.stage_group("audio").attrs.get("duration", 6.0))
    words = _plain(src.read_table("utterances", "words"))
    utts = _plain(src.read_table("utterances", "utterances"))
    n_words, n_utt = len(words["start"]), len(utts["start"])
    shift_w = np.repeat(np.arange(reps) * duration, n_words)
    shift_u = np.repeat(np.arange(reps) * duration, n_utt)
    tiled_words = {k: np.tile(v, reps) for k, v in words.items()}
    tiled_words["start"] = tiled_words["start"] + shift_w
    tiled_words["end"] = tiled_words["end"] + shift_w
    arrays = {name: np.asarray(face[name][...]) for name in FACE_ARRAYS if name in face}
    tiled_face = {k: np.concatenate([v] * reps) for k, v in arrays.items()}
    tiled_face["time"] = np.concatenate([arrays["time"] + r * duration for r in range(reps)])
    tracks = src.read_table("face", "tracks")

    store = Store(out)
    info = dict(src.info)
    for c in range(copies):
        sid = f"long{c:03d}"
        group = store.session(sid, info={**info, "id": sid, "relpath": f"{sid}.mp4"})
        g = group.begin_stage("audio", {})
        g.attrs.update({"sample_rate": 16000, "duration": duration * reps})
        group.finish_stage("audio", "done", "bench-audio")
        g = group.begin_stage("utterances", {})
        u = {k: np.tile(v, reps) for k, v in utts.items()}
        u["id"] = np.array([f"{sid}/u{k:05d}" for k in range(n_utt * reps)])
        u["start"] = u["start"] + shift_u
        u["end"] = u["end"] + shift_u
        u["word_start"] = u["word_start"] + np.repeat(np.arange(reps) * n_words, n_utt)
        u["word_end"] = u["word_end"] + np.repeat(np.arange(reps) * n_words, n_utt)
        write_table(g, "words", tiled_words)
        write_table(g, "utterances", u)
        group.finish_stage("utterances", "done", "bench-utterances")
        g = group.begin_stage("face", {})
        for name, arr in tiled_face.items():
            write_array(g, name, arr, attrs=dict(face[name].attrs), dims=face[name].metadata.dimension_names)
        write_table(g, "tracks", tracks)
        g.attrs.update({k: v for k, v in face.attrs.items() if k != "stage"})
        group.finish_stage("face", "done", "bench-face")
    return n_utt * reps * copies


def _files(path: Path) -> tuple[int, float]:
    files = [p for p in path.rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files) / 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=300, help="repetitions of the 6 s clip per session")
    ap.add_argument("--copies", type=int, default=20, help="sessions")
    ap.add_argument("--reads", type=int, default=2000, help="random utterance reads")
    ap.add_argument("--source", type=Path, help="an already extracted store holding the side-by-side clip")
    ap.add_argument("--config", type=Path, default=ROOT / "pipelines.yaml")
    ap.add_argument("--workdir", type=Path, help="keep the stores here (default: a temp dir, removed)")
    ap.add_argument("--reads-only", action="store_true", help="reuse WORKDIR/many.zarr; only time reads")
    args = ap.parse_args()
    if args.reads_only:
        if args.workdir is None or not (args.workdir / "many.zarr" / "utterances.parquet").exists():
            sys.exit("--reads-only needs --workdir holding many.zarr from an earlier run")
        _read_bench(args.workdir / "many.zarr", args.reads)
        return

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bench_align_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        source = args.source or _extract(work, args.config)
        store = work / "many.zarr"
        shutil.rmtree(store, ignore_errors=True)
        t0 = time.perf_counter()
        n = _build(source, store, args.reps, args.copies)
        print(f"built {args.copies} sessions x {args.reps} reps ({args.reps * 6 / 60:.0f} min each): "
              f"{n} utterances in {time.perf_counter() - t0:.1f} s")

        from ether_prep.config import load_pipeline
        from ether_prep.runner import run_pipeline

        t0 = time.perf_counter()
        summary = run_pipeline(load_pipeline("cpu", args.config), None, store, family="align")
        if not summary.ok:
            sys.exit(f"align failed:\n{summary.report()}")
        dt = time.perf_counter() - t0
        print(f"align (real stage, inline, + manifests): {dt:.1f} s = {n / dt:.0f} utterances/s")
        n_files, mb = _files(store)
        print(f"store: {mb:.1f} MB in {n_files} files")
        _read_bench(store, args.reads)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)


def _read_bench(store: Path, reads: int) -> None:
    import zarr

    import ether_prep

    rss0 = _rss_mb()
    t0 = time.perf_counter()
    ds = ether_prep.open_store(store).utterances()
    t_open = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(ds), size=reads)
    rows = ds.rows
    sessions = sorted(set(rows["session_id"].tolist()))

    # Baseline: pre-opened arrays, offsets in hand, nothing but the two slices.
    raw = {}
    for sid in sessions:
        g = zarr.open_group(str(store / "sessions" / sid / "align" / "tensors"), mode="r", zarr_format=3,
                            use_consolidated=False)
        raw[sid] = (g["face"], g["mask"])
    for sid in sessions:  # warm both paths equally: every session opened once
        raw[sid][0][0:1]
    for i in range(len(ds)):
        if rows["session_id"][i] in sessions:
            ds[i]
            sessions.remove(rows["session_id"][i])
        if not sessions:
            break

    def time_reads(fn, indices: np.ndarray) -> list[float]:
        out = []
        for i in indices:
            t = time.perf_counter()
            fn(int(i))
            out.append((time.perf_counter() - t) * 1e3)
        return out

    def baseline(i: int) -> None:
        face, mask = raw[rows["session_id"][i]]
        lo = int(rows["row_start"][i])
        hi = lo + int(rows["n_steps"][i])
        face[lo:hi]
        mask[lo:hi]

    # Interleave the two paths in rounds so that load from other processes hits both alike.
    base: list[float] = []
    via_ds: list[float] = []
    for part in np.array_split(idx, 10):
        base += time_reads(baseline, part)
        via_ds += time_reads(ds.__getitem__, part)
    # Memory in a separate pass: tracemalloc slows every allocation, so it must not run while timing.
    tracemalloc.start()
    time_reads(baseline, idx[:200])
    _, base_peak = tracemalloc.get_traced_memory()
    tracemalloc.reset_peak()
    time_reads(ds.__getitem__, idx[:200])
    _, ds_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    def q(x: list[float], p: float) -> float:
        return float(np.percentile(x, p))

    med_b, med_d = statistics.median(base), statistics.median(via_ds)
    print(f"open_store + manifest ({len(ds)} rows): {t_open * 1e3:.0f} ms")
    print(f"random utterance read, {reads} reads ({statistics.mean(rows['n_steps']):.0f} steps x 2 faces x "
          f"{ds[0]['speaker_face'].shape[1]} features on average):")
    print(f"  raw zarr slicing (baseline): median {med_b:.2f} ms, p95 {q(base, 95):.2f} ms")
    print(f"  dataset[i]:                  median {med_d:.2f} ms, p95 {q(via_ds, 95):.2f} ms "
          f"(x{med_d / med_b:.2f} of baseline)")
    chunk = zarr.open_array(str(store / "sessions" / rows["session_id"][0] / "align/tensors/face"), mode="r")
    c = chunk.chunks[0]
    lo = rows["row_start"].astype(int)
    hi = lo + rows["n_steps"].astype(int) - 1
    print(f"  chunk {c} rows ({c * np.prod(chunk.shape[1:]) * 4 / 1e6:.2f} MB), shard "
          f"{chunk.shards[0] if chunk.shards else c} rows: {np.mean(lo // c != hi // c) * 100:.1f}% of "
          f"utterances straddle two chunks; 1 inner chunk per array otherwise")

    rss_reads = _rss_mb()
    from torch.utils.data import DataLoader

    for workers in (0, 2):
        loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=workers, collate_fn=ds.collate)
        t = time.perf_counter()
        count = 0
        for batch in loader:
            count += len(batch["utterance_id"])
            if count >= 3200:
                break
        dt = time.perf_counter() - t
        print(f"DataLoader batch 32, shuffle, {workers} workers: {count / dt:.0f} utterances/s")
    print(f"peak traced allocations during reads: baseline {base_peak / 1e6:.2f} MB, dataset "
          f"{ds_peak / 1e6:.2f} MB; process max RSS {rss0:.0f} MB before reads, {rss_reads:.0f} MB after "
          f"them, {_rss_mb():.0f} MB after the DataLoader runs (torch imported)")


if __name__ == "__main__":
    main()
