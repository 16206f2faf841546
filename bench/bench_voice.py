"""Benchmark of the voice stage. Run: ``uv run python bench/bench_voice.py [--quick]``.

Recordings are built in a temporary folder by concatenating the shared two-party call (diarization/sample.wav,
30 s, 13 reference utterances in sample.stm) with ffmpeg: 3 minutes (x6) and 30 minutes (x60); the utterances
are the reference ones, repeated with the recording (26 a minute, on the align grid of 10 Hz, 0.5 s padding).
The audio stage decodes each into a store (not timed); the voice stage then runs on it as the runner calls it
(``VoiceStage.compute``: blocks of openSMILE LLDs written to Zarr, functionals per utterance, summaries, the
voice on the align grid, the cues), in its own process.

1. Speed, same run, same audio (the 3-minute recording), alternating rounds, best of each: audio seconds per
   compute second of the stage against the bare ``opensmile.Smile`` calls a user would make for the same
   outputs (eGeMAPSv02 LLDs over the whole signal, in memory, plus eGeMAPSv02 functionals of each utterance's
   samples). Both sides have their ``Smile`` objects built before timing.
2. Peak memory (VmHWM, each run in its own process) of the stage on the 30-minute recording vs the 3-minute one,
   and of the bare calls on both.

Figures are printed and written to ``bench/out/bench_voice.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
SAMPLE = DATA / "diarization" / "sample.wav"
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; not ru_maxrss, which Linux carries over an exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def build(copies: int, folder: Path) -> Path:
    """``copies`` x sample.wav, concatenated by ffmpeg (stream copy)."""
    out = folder / f"call_x{copies}.wav"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(copies - 1), "-i", str(SAMPLE), "-c", "copy",
                    str(out)], check=True)
    return out


def reference_utterances(copies: int) -> dict[str, Any]:
    """sample.stm's utterances repeated ``copies`` times (30 s apart), as an align table with its grid rows."""
    from ether_prep.align.tensors import utterance_grid

    rows = [line.split()[:5] for line in (DATA / "diarization" / "sample.stm").read_text().splitlines() if line]
    base = [(float(r[3]), float(r[4]), r[2]) for r in rows]
    utts = [(s + 30.0 * k, e + 30.0 * k, spk) for k in range(copies) for s, e, spk in base]
    grids = [utterance_grid(s, e, 0.5, 10.0) for s, e, _ in utts]
    n = len(utts)
    nan = np.full(n, np.nan)
    return {"id": np.array([f"call/u{i:05d}" for i in range(n)]), "speaker": np.array([u[2] for u in utts]),
            "start": np.array([u[0] for u in utts]), "end": np.array([u[1] for u in utts]),
            "row_start": np.concatenate([[0], np.cumsum([g.size for g in grids])[:-1]]).astype(np.int64),
            "n_steps": np.array([g.size for g in grids], np.int64), "grid_t0": np.array([g[0] for g in grids]),
            "text_valence": np.zeros(n), "text_arousal": np.zeros(n), "text_distress": np.zeros(n),
            "distress_word": np.array([""] * n), "face_valence": nan, "face_expressivity": nan,
            "speaker_coverage": np.zeros(n), "mismatch": nan, "flags": np.array([""] * n)}


def decoded(path: Path, store_dir: Path) -> tuple[Any, Any]:
    """(session group, Audio) after the real audio stage decoded ``path`` into a fresh store."""
    from ether_prep.config import load_pipeline
    from ether_prep.records import Session
    from ether_prep.sessions import probe_session
    from ether_prep.stages.audio import Audio, AudioStage
    from ether_prep.store import Store

    session = probe_session(Session(id=path.stem, path=path, relpath=path.name, kind="audio"))
    group = Store(store_dir / f"{path.stem}-{time.time_ns()}.zarr").session(session.id, {"id": session.id})
    out = group.begin_stage("audio", {})
    AudioStage(load_pipeline("cpu").stage("audio")).run(session, group, out)
    return group, Audio(out["waveform"], int(out.attrs["sample_rate"]), dict(out.attrs))


def stage_run(audio: Any, group: Any, copies: int, stage: Any) -> float:
    """Seconds of ``VoiceStage.compute`` over the whole recording (a fresh output group each time)."""
    from ether_prep.stages.voice import utterance_inputs

    utts = utterance_inputs(reference_utterances(copies), {"rate_hz": 10.0, "cue_params": {}})
    out = group.begin_stage("voice", {})
    t = time.perf_counter()
    stage.compute(audio, utts, out)
    return time.perf_counter() - t


def bare_run(x: np.ndarray, copies: int, smiles: tuple[Any, Any]) -> float:
    """Seconds of the bare openSMILE calls: LLDs of the whole signal, functionals of each utterance."""
    lld, func = smiles
    utts = reference_utterances(copies)
    t = time.perf_counter()
    lld.process_signal(x, 16000)
    for s, e in zip(utts["start"], utts["end"], strict=True):
        func.process_signal(x[round(s * 16000):round(e * 16000)], 16000)
    return time.perf_counter() - t


def _stage() -> Any:
    from ether_prep.config import load_pipeline
    from ether_prep.stages.voice import VoiceStage

    stage = VoiceStage(load_pipeline("cpu").stage("voice"))
    stage._extractor(16000)  # built once per worker, as the runner's setup would
    return stage


def _smiles() -> tuple[Any, Any]:
    import opensmile

    fs = opensmile.FeatureSet.eGeMAPSv02
    return (opensmile.Smile(fs, opensmile.FeatureLevel.LowLevelDescriptors),
            opensmile.Smile(fs, opensmile.FeatureLevel.Functionals))


def speed(path: Path, copies: int, rounds: int, tmp: Path) -> dict[str, Any]:
    group, audio = decoded(path, tmp)
    x = audio.samples()
    stage, smiles = _stage(), _smiles()
    ours, bare = [], []
    for _ in range(rounds):
        bare.append(bare_run(x, copies, smiles))
        ours.append(stage_run(audio, group, copies, stage))
    seconds = len(x) / 16000
    return {"audio_s": seconds, "utterances": len(reference_utterances(copies)["id"]),
            "stage_s": ours, "bare_s": bare, "stage_x_realtime": seconds / min(ours),
            "bare_x_realtime": seconds / min(bare), "ratio": min(bare) / min(ours)}


def memory_child(path: str, copies: int, which: str) -> None:
    """One run on one recording in this process; prints its figures as JSON."""
    with tempfile.TemporaryDirectory(prefix="voice-bench-") as tmp:
        group, audio = decoded(Path(path), Path(tmp))
        before = peak_rss_mb()
        if which == "stage":
            seconds = stage_run(audio, group, copies, _stage())
        else:
            seconds = bare_run(audio.samples(), copies, _smiles())
        print(json.dumps({"which": which, "audio_s": audio.n_samples / 16000, "seconds": seconds,
                          "peak_mb": peak_rss_mb(), "peak_before_mb": before}))


def memory(paths: dict[int, Path]) -> list[dict[str, Any]]:
    rows = []
    for copies, path in paths.items():
        for which in ("stage", "bare"):
            proc = subprocess.run([sys.executable, __file__, "--memory-child", str(path), str(copies), which],
                                  capture_output=True, text=True, check=True)
            rows.append({"copies": copies, **json.loads(proc.stdout.strip().splitlines()[-1])})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="1 round, 1 and 6 copies instead of 6 and 60")
    parser.add_argument("--memory-child", nargs=3, metavar=("PATH", "COPIES", "WHICH"))
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]), args.memory_child[2])
        return
    short, long_ = (1, 6) if args.quick else (6, 60)
    with tempfile.TemporaryDirectory(prefix="voice-bench-") as folder:
        tmp = Path(folder)
        paths = {short: build(short, tmp), long_: build(long_, tmp)}
        fast = speed(paths[short], short, 1 if args.quick else 3, tmp)
        print(json.dumps(fast, indent=1), flush=True)
        mem = memory(paths)
    stage_mem = {r["copies"]: r["peak_mb"] for r in mem if r["which"] == "stage"}
    result = {"speed": fast, "memory": mem, "stage_peak_ratio_long_vs_short": stage_mem[long_] / stage_mem[short],
              "load": Path("/proc/loadavg").read_text().split()[:3]}
    print(f"stage {fast['stage_x_realtime']:.1f}x real time, bare {fast['bare_x_realtime']:.1f}x: ratio "
          f"{fast['ratio']:.2f}; stage peak {stage_mem[long_]:.0f} MB ({long_ // 2} min) vs {stage_mem[short]:.0f} MB "
          f"({short // 2} min): x{result['stage_peak_ratio_long_vs_short']:.2f}")
    out = ROOT / "bench" / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_voice.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
