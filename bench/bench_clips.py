"""Benchmark: ``ether-prep export --format clips`` against one ``ffmpeg`` call per clip (the obvious way).

Both sides cut the same clips: the utterance and dialogue-pair clips the export plans for the sessions of a
store (their start, length, crop box, output size and rate read back from the export's JSONL), H.264 with
x264 ``veryfast`` CRF 23 and mono AAC at the store's sample rate. The baseline runs, per clip::

    ffmpeg -ss START -t DUR -i RECORDING -vf crop=W:H:X:Y,scale=OW:OH,fps=8 -c:v libx264 ... -c:a aac OUT.mp4

(a constant crop: the clip's mean box; the export moves its box with the face). Each side runs in its own
process, alternating for ``--rounds`` rounds, best of each kept; peak memory is each side's VmHWM (for the
baseline, the largest ffmpeg process). Without ``--source``, a store is made first (cached under
``--work``): the side-by-side clip repeated ``--repeat`` times (optionally scaled to ``--height`` pixels)
with the 30 s two-party call looped as its sound, through the real ``cpu`` pipeline, extract and align.

Run::

    uv run python bench/bench_clips.py                      # 20 x the 6 s side-by-side clip (2 min)
    uv run python bench/bench_clips.py --height 720         # the same at 1800x720
    uv run python bench/bench_clips.py --source STORE
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

ROOT = Path(__file__).resolve().parents[1]
GRID2 = ROOT.parent / "shared" / "data" / "video" / "grid_two_faces_side_by_side.mp4"
CALL = ROOT.parent / "shared" / "data" / "diarization" / "sample.wav"


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss carries over an exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def make_store(work: Path, repeat: int, height: int | None) -> Path:
    """The side-by-side clip repeated ``repeat`` times, through the cpu pipeline (reused when already made)."""
    store = work / f"store-{repeat}-{height or 'native'}.zarr"
    if (store / "utterances.parquet").exists():
        return store
    raw = work / f"raw-{repeat}-{height or 'native'}"
    raw.mkdir(parents=True, exist_ok=True)
    listing = work / "list.txt"
    listing.write_text("".join(f"file '{GRID2}'\n" for _ in range(repeat)))
    scale = ["-vf", f"scale=-2:{height}", "-c:v", "libx264", "-preset", "veryfast"] if height else ["-c:v", "copy"]
    # The sound is the 30 s two-party call, looped: the clip's own sentences repeated 20 times would read as a
    # Whisper repetition loop and be dropped (compression-ratio guard), leaving no utterances.
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                    "-stream_loop", "-1", "-i", str(CALL), "-map", "0:v", "-map", "1:a", "-shortest", *scale,
                    "-c:a", "aac", str(raw / "dialogue.mp4")], check=True)
    # The call's voices do not move these lips, so the speakers are linked to the two faces by hand.
    (raw / "sessions.csv").write_text("file,speaker_tracks\ndialogue.mp4,SPEAKER_00=0;SPEAKER_01=1\n")
    os.environ.setdefault("ETHER_PREP_MODELS", str(ROOT.parent / "shared" / "models"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
    from ether_prep.config import load_pipeline
    from ether_prep.runner import run_pipeline

    cpu = load_pipeline("cpu", ROOT / "pipelines.yaml")
    for family in ("extract", "align"):
        summary = run_pipeline(cpu, raw, store, family=family, executor="inline")
        assert summary.ok, summary.report()
    return store


def run_ours(store: Path, dest: Path) -> dict[str, float]:
    """The export in this process (a child of the benchmark), timed around the call."""
    from ether_prep.adapters import pyav  # noqa: F401 - imports out of the timing, as the baseline's are
    from ether_prep.exports.clips import ClipOptions, export_clips
    from ether_prep.stages import align, audio, face  # noqa: F401
    from ether_prep.store import Store

    s = Store(store, mode="r")
    t0, cpu0 = time.perf_counter(), _cpu(resource.RUSAGE_SELF)
    summary = export_clips(s, s.session_ids(), dest, ClipOptions(), progress=False)
    seconds, cpu = time.perf_counter() - t0, _cpu(resource.RUSAGE_SELF) - cpu0
    assert not summary.failed, summary.failed
    crops = [json.loads(x)["crop"] for f in dest.glob("*.jsonl") for x in f.read_text().splitlines()]
    return {"seconds": seconds, "cpu": cpu, "clips": sum(summary.written.values()), "peak_mb": peak_rss_mb(),
            "face_crops": crops.count("face")}


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def ffmpeg_command(line: dict, recording: str, out: Path, sample_rate: int) -> list[str]:
    x0, y0, x1, y1 = line["crop_box"]
    vf = f"crop={x1 - x0}:{y1 - y0}:{x0}:{y0},scale={line['width']}:{line['height']},fps={line['fps']:g}"
    return ["ffmpeg", "-v", "error", "-y", "-ss", f"{line['start']:.3f}", "-t", f"{line['clip_duration']:.3f}",
            "-i", recording, "-vf", vf, "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-pix_fmt",
            "yuv420p", "-c:a", "aac", "-ac", "1", "-ar", str(sample_rate), str(out)]


def run_ffmpeg(store: Path, plan: Path, dest: Path) -> dict[str, float]:
    """One ffmpeg process per clip of ``plan`` (the export's JSONL lines), one after another."""
    from ether_prep.stages.audio import read_audio
    from ether_prep.store import Store

    s = Store(store, mode="r")
    lines = [json.loads(x) for f in sorted(plan.glob("*.jsonl")) for x in f.read_text().splitlines()]
    recordings = {sid: str(s.session(sid).info["path"]) for sid in {ln["session_id"] for ln in lines}}
    rates = {sid: read_audio(s.session(sid)).sample_rate for sid in recordings}
    dest.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for k, line in enumerate(lines):
        cmd = ffmpeg_command(line, recordings[line["session_id"]], dest / f"{k:05d}.mp4", rates[line["session_id"]])
        subprocess.run(cmd, check=True)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest ffmpeg process
    return {"seconds": seconds, "cpu": _cpu(resource.RUSAGE_CHILDREN), "clips": len(lines), "peak_mb": peak}


def child(side: str, store: Path, dest: Path, plan: Path) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", side, "--source", str(store), "--dest", str(dest),
           "--plan", str(plan)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, help="a store to cut clips from [default: made here]")
    parser.add_argument("--repeat", type=int, default=20, help="copies of the 6 s clip in the made store")
    parser.add_argument("--height", type=int, help="scale the made recording to this height (e.g. 720)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ether-prep-bench-clips")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--child", choices=("ours", "ffmpeg"), help=argparse.SUPPRESS)
    parser.add_argument("--dest", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--plan", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = run_ours(args.source, args.dest) if args.child == "ours" else run_ffmpeg(args.source, args.plan,
                                                                                         args.dest)
        print(json.dumps(result))
        return
    args.work.mkdir(parents=True, exist_ok=True)
    store = args.source or make_store(args.work, args.repeat, args.height)
    best: dict[str, dict[str, float]] = {}
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        plan = Path(tmp) / "plan"
        for r in range(args.rounds):
            for side in ("ours", "ffmpeg"):
                dest = Path(tmp) / f"{side}-{r}"
                result = child(side, store, plan if side == "ours" and r == 0 else dest, plan)
                print(f"round {r + 1} {side:6s}: {result['clips']} clips in {result['seconds']:.2f} s "
                      f"({result['cpu']:.2f} CPU s), peak {result['peak_mb']:.0f} MB (load {os.getloadavg()[0]:.1f})")
                runs.append({**result, "side": side})
                if side not in best or result["seconds"] < best[side]["seconds"]:
                    best[side] = result
                if dest != plan:
                    shutil.rmtree(dest, ignore_errors=True)
    ours, base = best["ours"], best["ffmpeg"]
    assert ours["clips"] == base["clips"]
    cpu = {side: min(r["cpu"] for r in runs if r["side"] == side) for side in ("ours", "ffmpeg")}
    print(f"\n{ours['clips']} clips ({ours.get('face_crops', 0)} face crops) from {store} on {os.cpu_count()} "
          f"core(s)")
    print(f"one ffmpeg call per clip : {base['clips'] / base['seconds']:7.1f} clips/s, peak {base['peak_mb']:.0f} MB")
    print(f"export --format clips    : {ours['clips'] / ours['seconds']:7.1f} clips/s, peak {ours['peak_mb']:.0f} MB")
    print(f"ratio (ours / ffmpeg)    : {base['seconds'] / ours['seconds']:7.2f}x wall (best of each), "
          f"{cpu['ffmpeg'] / cpu['ours']:.2f}x CPU (least of each)")


if __name__ == "__main__":
    main()
