"""Benchmark of the ``diarize`` stage's ``embeddings`` backend: the segmentation diarizer against the sliding-window
one it replaced in the ``cpu`` pipeline and against bare segmentation inference, same audio, same run.

Builds the ~5-minute recording of bench/bench_speech.py from the shared clips, then times (best of ``--rounds``):

- bare segmentation: pyannote's segmentation network (whisperx's shipped checkpoint) slid over the audio at the
  cpu pipeline's ``segmentation_step_s``, nothing else;
- ``method: segmentation`` (the cpu pipeline's diarize parameters): segmentation + embeddings + clustering;
- ``method: windows`` (the previous cpu pipeline: WebRTC VAD + 1.5 s resemblyzer windows, hop 0.25 s);

and prints the ratios. ``--minutes M`` then diarizes an M-minute recording (the clips repeated) in a child
process per method and prints each one's peak memory (ru_maxrss of the child).
Run: ``uv run python bench/bench_diarize.py [--rounds 2] [--minutes 30]``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _params(method: str):
    from ether_prep.config import load_pipeline

    spec = load_pipeline("cpu", Path(__file__).resolve().parents[1] / "pipelines.yaml").stage("diarize")
    return dataclasses.replace(spec.params, method=method)


def _audio(seconds: float):
    import numpy as np
    from bench_speech import build_input

    from ether_prep.adapters.pyav import iter_audio_blocks

    with tempfile.TemporaryDirectory(prefix="bench-diarize-") as tmp:
        path = build_input(Path(tmp) / "long.wav", seconds)
        return np.concatenate(list(iter_audio_blocks(path, 16000)))


def _best(fn, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def compare(seconds: float, rounds: int) -> None:
    """Times of bare segmentation and both diarizer methods on one recording, with ratios."""
    from ether_prep.speech.backends import EmbeddingDiarizer

    audio = _audio(seconds)
    seg_p, win_p = _params("segmentation"), _params("windows")
    seg = EmbeddingDiarizer(None, seg_p)
    win = EmbeddingDiarizer(None, win_p)
    assert seg._segmentation is not None
    # Interleaved rounds, best of each: other jobs on a shared machine slow whichever runs beside them.
    runs: dict[str, list[float]] = {"bare": [], "seg": [], "win": []}
    for _ in range(rounds):
        runs["bare"].append(_best(lambda: seg._segmentation(audio, seg_p.segmentation_step_s), 1))
        runs["seg"].append(_best(lambda: seg.diarize(audio, 16000, seg_p.num_speakers), 1))
        runs["win"].append(_best(lambda: win.diarize(audio, 16000, win_p.num_speakers), 1))
    bare, t_seg, t_win = (min(runs[k]) for k in ("bare", "seg", "win"))
    print("rounds (s): " + ", ".join(f"{k} {[round(t, 2) for t in v]}" for k, v in runs.items()))
    d = len(audio) / 16000
    print(f"input: {d:.0f} s, threads {seg_p.threads}, best of {rounds}")
    print(f"bare segmentation inference (step {seg_p.segmentation_step_s} s): {bare:.2f} s  RTF {bare / d:.4f}")
    print(f"diarize method segmentation: {t_seg:.2f} s  RTF {t_seg / d:.4f}  = {t_seg / bare:.2f}x bare segmentation")
    print(f"diarize method windows (previous): {t_win:.2f} s  RTF {t_win / d:.4f}")
    print(f"segmentation / windows: {t_seg / t_win:.2f}x")


def peak(method: str, minutes: float) -> None:
    """Child process: diarize a ``minutes``-long recording with one method, print the peak memory."""
    from ether_prep.speech.backends import EmbeddingDiarizer

    audio = _audio(minutes * 60)
    p = _params(method)
    t = time.perf_counter()
    turns = EmbeddingDiarizer(None, p).diarize(audio, 16000, p.num_speakers)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{minutes:.0f} min, method {method}: {time.perf_counter() - t:.1f} s, {len(turns)} turns, "
          f"peak RSS {rss:.0f} MB (audio itself {audio.nbytes / 2**20:.0f} MB)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--minutes", type=float, default=0.0)
    ap.add_argument("--peak", choices=["segmentation", "windows"])
    a = ap.parse_args()
    if a.peak:
        peak(a.peak, a.minutes)
        return
    compare(a.seconds, a.rounds)
    for method in ("segmentation", "windows") if a.minutes else ():
        subprocess.run([sys.executable, __file__, "--peak", method, "--minutes", str(a.minutes)], check=True)


if __name__ == "__main__":
    main()
