"""Benchmark of the face stage (issues 4 and 8). Run: ``uv run python bench/bench_face.py [--quick]``.

0. The stage's three parts (decoding, the model, the post-processing: tracking, AUs, identity, storage) in
   threads of their own against the loop where the model and the post-processing take turns (``--overlap-only
   N``: just that, N interleaved runs each).
1. Speed on the 640x360 WolfgangLanger clip at full frame rate, measured in the same run (machines are
   shared and noisy: compare the ratios, not the absolute figures):
   - decode only: PyAV frames to RGB (``iter_video_frames``);
   - bare MediaPipe loop: decode + ``FaceLandmarker.detect_for_video`` in one plain loop, same options;
   - the face stage: the same frames through ``FaceStage.run`` into a Zarr store (tracking, AUs, storage,
     shot cuts, identity embeddings and persons: the ``cpu`` pipeline as shipped);
   - the face stage without the identity step (``identity: off``, ``cut_threshold: null``): the stage as
     it was before issue 8.
   Goals: the stage within 15% of the bare loop; with identity >= 0.85 of its speed without.
   Peak memory (VmHWM) of the stage with and without identity, each in its own process.
2. Peak memory (VmHWM, each run in its own process) on a 30-minute video vs a 1-minute one, both looped
   from the shared clip with ``ffmpeg -stream_loop`` (stream copy) in a temporary folder. Goal: within 10%.
3. Per-frame Pearson correlation of our AU scores with OpenFace 2.x ``AUxx_r`` on opendbm_subj01 (one
   posed expression, so figures to watch, not a test), and of our head pose with OpenFace's.

Figures are printed and written to ``bench/out/bench_face.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
CLIP = DATA / "face" / "WolfgangLanger_Pexels.mp4"
os.environ.setdefault("ETHER_PREP_MODELS", str(SHARED / "models"))
sys.path.insert(0, str(ROOT))


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: Linux carries that over an exec, so a child
    started by a larger parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _spec(**params: object):
    from ether_prep.config import load_pipeline

    spec = load_pipeline("cpu").stage("face")
    return dataclasses.replace(spec, params=dataclasses.replace(spec.params, **params)) if params else spec


def run_stage(path: Path, store_dir: Path, overlap: bool = True, **params: object):
    """The face stage on one file, as the runner would call it; returns (out group, seconds in run()).
    ``overlap=False``: the model and the post-processing take turns in one thread (the loop before the overlap)."""
    from ether_prep.records import Session
    from ether_prep.sessions import probe_session
    from ether_prep.stages.face import FaceStage
    from ether_prep.store import Store

    stage = FaceStage(_spec(**params))
    stage.overlap = overlap
    stage.setup()
    session = probe_session(Session(id=path.stem, path=path, relpath=path.name, kind="video"))
    group = Store(store_dir / f"{path.stem}-{time.time_ns()}.zarr").session(session.id, {"id": session.id})
    out = group.begin_stage("face", {})
    t = time.perf_counter()
    stage.run(session, group, out)
    return out, time.perf_counter() - t


def decode_only(path: Path) -> tuple[int, float]:
    from ether_prep.adapters.pyav import iter_video_frames

    t = time.perf_counter()
    n = sum(1 for _ in iter_video_frames(path))
    return n, time.perf_counter() - t


def bare_mediapipe(path: Path) -> tuple[int, float]:
    """What a user would write: decode with PyAV and call the landmarker frame by frame."""
    import av
    import mediapipe as mp
    from mediapipe.tasks.python import BaseOptions, vision

    p = _spec().params
    options = vision.FaceLandmarkerOptions(
        base_options=BaseOptions(model_asset_path=str(SHARED / "models" / "face_landmarker.task")),
        running_mode=vision.RunningMode.VIDEO, num_faces=p.num_faces,
        min_face_detection_confidence=p.min_detection_confidence,
        min_face_presence_confidence=p.min_presence_confidence,
        min_tracking_confidence=p.min_tracking_confidence,
        output_face_blendshapes=True, output_facial_transformation_matrixes=True)
    n = 0
    with vision.FaceLandmarker.create_from_options(options) as landmarker, av.open(str(path)) as container:
        t = time.perf_counter()
        for frame in container.decode(video=0):
            image = mp.Image(image_format=mp.ImageFormat.SRGB, data=frame.to_ndarray(format="rgb24"))
            landmarker.detect_for_video(image, int(frame.time * 1000))
            n += 1
        return n, time.perf_counter() - t


# The face stage as it was before the identity step (issue 8): no shot cuts, no embeddings.
NO_IDENTITY = {"identity": "off", "cut_threshold": None}


def speed(repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        best: dict[str, float] = {}
        for _ in range(repeats):  # interleaved, best of N: the machine is shared
            n, dt = decode_only(CLIP)
            best["decode_fps"] = max(best.get("decode_fps", 0), n / dt)
            n, dt = bare_mediapipe(CLIP)
            best["bare_mediapipe_fps"] = max(best.get("bare_mediapipe_fps", 0), n / dt)
            out, dt = run_stage(CLIP, Path(tmp), **NO_IDENTITY)
            best["stage_no_identity_fps"] = max(best.get("stage_no_identity_fps", 0),
                                                out.attrs["frames_analysed"] / dt)
            out, dt = run_stage(CLIP, Path(tmp))
            best["stage_fps"] = max(best.get("stage_fps", 0), out.attrs["frames_analysed"] / dt)
            ident = out.attrs["identity_params"]
            best["embeddings"] = ident["embeddings_computed"]
            best["embedding_seconds"] = min(best.get("embedding_seconds", np.inf), ident["embedding_seconds"])
            best["tracks"], best["persons"] = out.attrs["n_tracks"], out.attrs["n_persons"]
    best["stage_over_bare"] = best["stage_fps"] / best["bare_mediapipe_fps"]
    best["stage_over_decode"] = best["stage_fps"] / best["decode_fps"]
    best["identity_over_no_identity"] = best["stage_fps"] / best["stage_no_identity_fps"]
    return best


def overlap_speed(repeats: int) -> dict[str, float]:
    """The cpu pipeline's face stage (identity on) with decoding, the model and the post-processing in three
    threads against the loop where the model and the post-processing take turns: interleaved, best and median."""
    runs: dict[str, list[float]] = {"turns": [], "overlap": []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(repeats):
            for name, overlap in (("turns", False), ("overlap", True)):
                out, dt = run_stage(CLIP, Path(tmp), overlap=overlap)
                runs[name].append(out.attrs["frames_analysed"] / dt)
    result = {f"{name}_{how}_fps": float(f(v)) for name, v in runs.items() for how, f in (("best", max),
                                                                                       ("median", np.median))}
    result["overlap_over_turns_best"] = result["overlap_best_fps"] / result["turns_best_fps"]
    result["overlap_over_turns_median"] = result["overlap_median_fps"] / result["turns_median_fps"]
    return result


def _identity_memory_child(identity: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        _, dt = run_stage(CLIP, Path(tmp), **({} if identity == "on" else NO_IDENTITY))
        print(json.dumps({"maxrss_mb": peak_rss_mb(), "seconds": dt}))


def identity_memory() -> dict[str, float]:
    """Peak RSS of a process running the stage on the clip, with and without the identity step."""
    result: dict[str, float] = {}
    for identity in ("off", "on"):
        proc = subprocess.run([sys.executable, __file__, "--identity-memory-child", identity],
                              check=True, capture_output=True, text=True)
        result[f"identity_{identity}_maxrss_mb"] = json.loads(proc.stdout.strip().splitlines()[-1])["maxrss_mb"]
    result["ratio_on_over_off"] = result["identity_on_maxrss_mb"] / result["identity_off_maxrss_mb"]
    return result


def _memory_child(path: str, analysis_fps: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out, dt = run_stage(Path(path), Path(tmp), analysis_fps=float(analysis_fps))
        print(json.dumps({"maxrss_mb": peak_rss_mb(),
                          "seconds": dt, "frames_decoded": out.attrs["frames_decoded"],
                          "frames_analysed": out.attrs["frames_analysed"], "tracks": out.attrs["n_tracks"]}))


def memory(minutes: tuple[float, float], analysis_fps: float) -> dict[str, object]:
    import av

    with av.open(str(CLIP)) as c:
        clip_s = float(c.duration / av.time_base)
    result: dict[str, object] = {"analysis_fps": analysis_fps, "clip": CLIP.name}
    with tempfile.TemporaryDirectory() as tmp:
        for m in minutes:
            loops = max(1, int(np.ceil(m * 60 / clip_s)))
            video = Path(tmp) / f"looped_{m:g}min.mp4"
            subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", str(loops - 1), "-i", str(CLIP),
                            "-c", "copy", str(video)], check=True)
            proc = subprocess.run([sys.executable, __file__, "--memory-child", str(video), str(analysis_fps)],
                                  check=True, capture_output=True, text=True)
            figures = json.loads(proc.stdout.strip().splitlines()[-1])
            figures["video_minutes"] = round(loops * clip_s / 60, 2)
            result[f"{m:g}min"] = figures
            print(f"  {m:g} min video: {figures}", flush=True)
    a, b = (result[f"{m:g}min"]["maxrss_mb"] for m in minutes)  # type: ignore[index]
    result["peak_ratio_long_over_short"] = b / a
    return result


def openface_correlations() -> dict[str, object]:
    import pandas as pd

    with tempfile.TemporaryDirectory() as tmp:
        out, _ = run_stage(DATA / "face" / "opendbm_subj01.mp4", Path(tmp))
        au = out["au"][:, 0]
        pose = out["pose"][:, 0]
        names = list(out["au"].attrs["names"])
    ref = pd.read_csv(DATA / "face" / "opendbm_subj01.openface.csv", skipinitialspace=True)
    ref.columns = [c.strip() for c in ref.columns]
    n = min(len(ref), len(au))
    corr: dict[str, float | None] = {}
    for j, name in enumerate(names):
        col = f"{name}_r"
        if col not in ref:
            continue
        x, y = au[:n, j], ref[col].to_numpy(float)[:n]
        ok = np.isfinite(x) & np.isfinite(y)
        r = np.corrcoef(x[ok], y[ok])[0, 1] if ok.sum() > 2 and x[ok].std() > 0 and y[ok].std() > 0 else None
        corr[name] = None if r is None else round(float(r), 3)
    means = {name: {"ours": round(float(np.nanmean(au[:, j])), 3),
                    "openface_r_over_5": round(float(ref[f"{name}_r"].mean() / 5), 3)}
             for j, name in enumerate(names) if f"{name}_r" in ref}
    pose_corr = {}
    for j, (ours, theirs) in enumerate([("yaw", "pose_Ry"), ("pitch", "pose_Rx"), ("roll", "pose_Rz")]):
        x, y = pose[:n, j], ref[theirs].to_numpy(float)[:n]
        pose_corr[f"{ours}~{theirs}"] = round(float(np.corrcoef(x, y)[0, 1]), 3)
    valid = [v for v in corr.values() if v is not None]
    return {"au_pearson": corr, "mean_abs_r": round(float(np.mean(np.abs(valid))), 3) if valid else None,
            "au_means": means, "pose_pearson": pose_corr, "frames": n}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 vs 1 minute, one speed repeat")
    parser.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--identity-memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--speed-only", action="store_true", help="only the speed and identity figures")
    parser.add_argument("--overlap-only", type=int, metavar="N", help="only the overlap figure, N interleaved runs")
    parser.add_argument("--analysis-fps", type=float, default=5.0,
                        help="analysis rate of the memory runs (decoding is always full rate)")
    args = parser.parse_args()
    if args.memory_child:
        _memory_child(*args.memory_child)
        return
    if args.identity_memory_child:
        _identity_memory_child(args.identity_memory_child)
        return
    results: dict[str, object] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    print("three-part overlap vs turn-taking loop ...", flush=True)
    results["overlap"] = ov = overlap_speed(args.overlap_only or (1 if args.quick else 3))
    print(f"  turns {ov['turns_best_fps']:.1f} fps (median {ov['turns_median_fps']:.1f}) | overlap "
          f"{ov['overlap_best_fps']:.1f} fps (median {ov['overlap_median_fps']:.1f}) | overlap/turns best "
          f"{ov['overlap_over_turns_best']:.3f}, median {ov['overlap_over_turns_median']:.3f} | load "
          f"{os.getloadavg()[0]:.1f}", flush=True)
    if args.overlap_only:
        print(json.dumps(results, indent=2))
        return
    print("speed (best of interleaved runs) ...", flush=True)
    results["speed"] = s = speed(1 if args.quick else 3)
    print(f"  decode {s['decode_fps']:.0f} fps | bare MediaPipe loop {s['bare_mediapipe_fps']:.1f} fps | "
          f"face stage {s['stage_fps']:.1f} fps | stage/bare {s['stage_over_bare']:.2f} | "
          f"stage/decode {s['stage_over_decode']:.3f}", flush=True)
    print(f"  identity: stage without it {s['stage_no_identity_fps']:.1f} fps | with/without "
          f"{s['identity_over_no_identity']:.3f} | {s['embeddings']} embeddings in {s['embedding_seconds']:.2f} s | "
          f"{s['tracks']} track(s), {s['persons']} person(s)", flush=True)
    results["identity_memory"] = im = identity_memory()
    print(f"  peak RSS: identity off {im['identity_off_maxrss_mb']:.0f} MB, on {im['identity_on_maxrss_mb']:.0f} MB "
          f"(ratio {im['ratio_on_over_off']:.3f})", flush=True)
    if args.speed_only:
        print(json.dumps(results, indent=2))
        return
    print("OpenFace correlations (opendbm_subj01) ...", flush=True)
    results["openface"] = o = openface_correlations()
    print(f"  AU Pearson r: {o['au_pearson']}\n  mean |r| {o['mean_abs_r']}; pose: {o['pose_pearson']}", flush=True)
    print("peak memory ...", flush=True)
    results["memory"] = m = memory((1, 5) if args.quick else (1, 30), args.analysis_fps)
    print(f"  peak RSS long/short = {m['peak_ratio_long_over_short']:.3f}", flush=True)
    dest = ROOT / "bench" / "out"
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "bench_face.json").write_text(json.dumps(results, indent=2))
    print(f"written {dest / 'bench_face.json'}")


if __name__ == "__main__":
    main()
