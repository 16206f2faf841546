"""Benchmark of the streaming Ray executor (issue 10). Parts, all by default or named on the command line:

- ``cached``: a fully cached rerun of ``--cached-sessions`` (100) aligned sessions (the ``cpu`` pipeline's
  extract and align stages over 4 s talking-face videos: two computed, the others copies of them), as a whole
  ``ether-prep run -x ray`` process (median of 3), in a fresh RAY_TMPDIR: its wall time, whether a Ray session
  directory appeared (it must not) and whether the manifests and the root ``zarr.json`` were rewritten (they
  must not be); baselines: the same process running ``--help``, and what a rerun did before on top (the
  manifests rebuilt twice and the metadata consolidated, timed here on the same store); peak memory.
- ``stream``: 8 sessions (talking faces with speech, 20-90 s, built with ffmpeg from the shared clips), the
  real ``cpu`` pipeline with every stage asking 1 CPU (and 1 thread), on Ray with this machine's 2 CPUs:
  streaming against the stage-at-a-time execution ether-prep had before (each stage over all sessions on
  its own pool, actors ended between stages: emulated as one ``--only STAGE`` run per stage), alternating
  for ``--rounds``; the same Ray instance for all, so its start is excluded from both.
- ``scale``: the same sessions and stages, stage by stage, with 1 and with 2 workers per stage (``--force``
  on the filled store): scaling efficiency T1 / (2 T2) per stage and over all.
- ``sim``: a simulated 8-GPU node (Ray with 8 declared GPUs and 8 CPUs): the ``default`` pipeline's stages
  and resources, each stage sleeping its per-media-second cost (measured by ``stream`` when it ran in the
  same invocation, else the README's figures), times a factor that makes the run last about a minute, plus a
  model-load time per actor; 24 sessions of 3-40 s. Reports each pool's utilisation (busy / alive
  actor-seconds), the GPUs' utilisation, and the lower bound (GPU work / 8 GPUs, or the longest session's
  chain of stages if longer) over the wall time; stage-at-a-time on the same simulation for comparison.

- ``windows``: one long video (``--windows-video`` s, 25 fps, two faces) through the ``face`` stage on Ray
  with 2 CPUs: whole in one task against windows of ``--window-s`` s spread over 2 actors (1 CPU each); wall
  times, the join's share, and whether the two stores hold the same arrays.
- ``speech-windows``: one long recording (``--speech-seconds`` s: the shared two-party call, LibriSpeech and
  jfk in turn, 0.3-1 s apart) through the ``cpu`` pipeline's ``audio`` and ``transcribe`` on Ray with 2 CPUs:
  transcribed whole in one task against windows of ``--speech-window-s`` s cut at pauses on 2 actors (1 CPU
  and 1 thread each, as one GPU each), alternating for ``--rounds``; wall times, the cuts, and how far the two
  transcripts differ (WER of the windows' words against the whole recording's, and each against the
  reference text of the turns).

Run: ``uv run python bench/bench_ray.py [cached] [stream] [scale] [sim] [windows] [speech-windows]``. Figures go
to stdout.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def _dump_yaml(doc: Any) -> str:
    """YAML written out in full: pipelines files refuse anchors and aliases (made by safe_dump for shared data)."""
    return yaml.dump(doc, Dumper=_NoAliases, sort_keys=False)


# Python as installed everywhere else keeps bytecode caches; this environment switches them off, which makes
# every Ray worker compile ether-prep, zarr and numpy from source when it starts (seconds each on 2 cores).
os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
sys.dont_write_bytecode = False
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the tests' media builders (tests.media)
DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("ETHER_PREP_MODELS", str(ROOT.parent / "shared" / "models"))

# (video, audio, seconds): a long one and seven shorter ones, so one session outlasts the others.
SESSIONS = [
    ("video/grid_two_faces_side_by_side.mp4", "diarization/sample.wav", 90),
    ("face/opendbm_subj01.mp4", "speech/jfk.flac", 20),
    ("video/bbaf2n.mpg", "speech/librispeech_1272-128104-0000.wav", 25),
    ("face/single_face.mp4", "diarization/sample.wav", 30),
    ("video/lwbsza.mpg", "speech/jfk.flac", 20),
    ("video/id2_vcd_swwp2s.mpg", "diarization/sample.wav", 35),
    ("video/grid_two_faces_side_by_side.mp4", "speech/jfk.flac", 25),
    ("face/opendbm_subj01.mp4", "speech/librispeech_1272-128104-0000.wav", 20),
]
# Seconds of compute per media second, from the README (2 CPU cores): used by `sim` when `stream` did not run.
README_COSTS = {"audio": 0.008, "transcribe": 0.040, "diarize": 0.006, "utterances": 0.002, "face": 0.37,
                "align": 0.01, "qc": 0.002}
GPU_STAGES = ("transcribe", "diarize", "face")


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_avg() -> str:
    return "load average " + " ".join(f"{x:.1f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------------------------- cached
# Two real sessions (a talking pair and a talking face, 4 s each) computed by the `cpu` pipeline; the other
# sessions of the `cached` part are copies of them (their recordings hard links, their session groups copied),
# so the store holds --cached-sessions fully aligned sessions without computing each one.
CACHED_CLIPS = ("video/grid_two_faces_side_by_side.mp4", "video/bbaf2n.mpg")


def _cached_store(tmp: Path, n: int) -> tuple[Path, Path, Path]:
    """A raw folder of ``n`` short videos and a store in which the `cpu` pipeline has done every stage."""
    import shutil

    from ether_prep.config import load_pipeline
    from ether_prep.runner import run_pipeline
    from ether_prep.sessions import session_id

    raw = tmp / "cached_raw"
    raw.mkdir()
    for i, clip in enumerate(CACHED_CLIPS):
        subprocess.run(["ffmpeg", "-v", "error", "-i", str(DATA / clip), "-t", "4", "-c:v", "libx264", "-preset",
                        "ultrafast", "-c:a", "aac", str(raw / f"s{i:03d}.mp4")], check=True)
    config = ROOT / "pipelines.yaml"
    store = tmp / "cached.zarr"
    first = run_pipeline(load_pipeline("cpu", config), raw, store, family=None)
    assert first.ok, first.report()
    sessions = store / "sessions"
    for i in range(len(CACHED_CLIPS), n):
        src = f"s{i % len(CACHED_CLIPS):03d}.mp4"
        os.link(raw / src, raw / f"s{i:03d}.mp4")
        shutil.copytree(sessions / session_id(src), sessions / session_id(f"s{i:03d}.mp4"))
    # The copies' session attributes (id, path) are brought up to date by this first rerun; nothing computes.
    warm = run_pipeline(load_pipeline("cpu", config), raw, store, family=None)
    assert warm.ok and set(warm.counts()) == {"cached"} | ({"skipped"} & set(warm.counts())), warm.report()
    return raw, store, config


def bench_cached(tmp: Path, n: int) -> None:
    """A fully cached rerun of ``n`` aligned sessions (extract and align: the `cpu` pipeline) as a whole
    ``ether-prep run -x ray`` process, against ``ether-prep --help`` (the import cost) and against what a cached
    rerun wrote before (the manifests rebuilt twice, by align and by qc, and the metadata consolidated)."""
    from ether_prep.manifest import write_manifests
    from ether_prep.store import Store

    raw, store, config = _cached_store(tmp, n)
    ray_tmp = tmp / "ray_tmp"
    ray_tmp.mkdir()
    env = {**os.environ, "RAY_TMPDIR": str(ray_tmp), "TMPDIR": str(ray_tmp)}
    # `ether-prep ARGS` as its console script runs it, reporting its own peak memory (VmHWM: that of the
    # process itself, not the forked parent's pages that RUSAGE_CHILDREN would count) on exit.
    report = ("import atexit, sys; atexit.register(lambda: sys.stderr.write(next(l for l in open('/proc/self/status')"
              " if l.startswith('VmHWM')))); sys.argv = ['ether-prep', *sys.argv[1:]]; "
              "from ether_prep.cli import app; app()")
    rerun = [sys.executable, "-c", report, "run", str(raw), "--out", str(store), "-c", str(config), "-p", "cpu",
             "-x", "ray", "-q"]
    peaks: list[float] = []

    def timed(cmd: list[str]) -> float:
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - t0
        assert out.returncode == 0, out.stdout + out.stderr
        peaks.extend(float(line.split()[1]) / 1024 for line in out.stderr.splitlines() if line.startswith("VmHWM"))
        return wall

    watched = [store / "zarr.json", *sorted(store.glob("*.parquet"))]

    def stamps() -> list[tuple[int, int]]:
        return [(p.stat().st_ino, p.stat().st_mtime_ns) for p in watched]

    timed(rerun)  # writes the bytecode caches
    before = stamps()
    walls = [timed(rerun) for _ in range(3)]
    untouched = stamps() == before
    peak_child = max(peaks)
    helps = [timed([sys.executable, "-c", report, "--help"]) for _ in range(3)]
    # What every cached rerun did on top before: align's and qc's finalize each rebuilt the manifests, and the
    # run consolidated the metadata (the root zarr.json).
    st = Store(store)
    t0 = time.perf_counter()
    for _ in range(2):
        write_manifests(st)
    manifests_s = (time.perf_counter() - t0) / 2
    t0 = time.perf_counter()
    st.consolidate()
    consolidate_s = time.perf_counter() - t0
    wall, help_s = statistics.median(walls), statistics.median(helps)
    old = wall + 2 * manifests_s + consolidate_s
    started = sorted(p.name for p in ray_tmp.rglob("session_*"))
    print(f"[cached] {n} aligned sessions (cpu pipeline, 4 s videos), fully cached, `ether-prep run -x ray` as a "
          f"whole process (2 cores): median {wall:.2f} s (runs {[round(w, 2) for w in walls]}); baseline "
          f"`ether-prep --help` {help_s:.2f} s: rerun / --help {wall / help_s:.1f}x ({load_avg()})")
    print(f"  manifests and root zarr.json untouched by the reruns: {untouched}; Ray session directories: "
          f"{started or 'none'}; root zarr.json {(store / 'zarr.json').stat().st_size / 1e6:.1f} MB")
    print(f"  what a cached rerun also did before, measured now: manifests rebuilt {manifests_s:.2f} s (x2), "
          f"consolidation {consolidate_s:.2f} s: {old:.2f} s, {old / wall:.1f}x this rerun")
    print(f"  peak memory of the rerun process {peak_child:.0f} MB (this driver, which computed the two sessions: "
          f"{peak_mb():.0f} MB)")


# ----------------------------------------------------------------------------------------------- stream
def build_sessions(raw: Path) -> float:
    raw.mkdir()
    total = 0.0
    for i, (video, audio, seconds) in enumerate(SESSIONS):
        subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "-1", "-i", str(DATA / video), "-stream_loop", "-1",
                        "-i", str(DATA / audio), "-map", "0:v", "-map", "1:a", "-t", str(seconds), "-r", "25",
                        "-vf", "scale=640:-2", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac",
                        str(raw / f"session_{i}.mp4")], check=True)
        total += seconds
    return total


def one_cpu_config(tmp: Path) -> Path:
    """The shipped `cpu` pipeline with every stage asking for 1 CPU and using 1 thread."""
    doc = yaml.safe_load((ROOT / "pipelines.yaml").read_text())
    cpu = doc["pipelines"]["cpu"]
    for stage in cpu["stages"]:
        stage.setdefault("resources", {})["num_cpus"] = 1
        if "threads" in stage.get("params", {}):
            stage["params"]["threads"] = 1
    path = tmp / "cpu1.yaml"
    path.write_text(_dump_yaml({"version": 1, "pipelines": {"cpu": cpu}}))
    return path


def run_streaming(pipe: Any, raw: Path, store: Path, **kw: Any) -> tuple[float, Any]:
    from ether_prep.runner import run_pipeline

    t0 = time.perf_counter()
    summary = run_pipeline(pipe, raw, store, family=None, executor="ray", **kw)
    assert summary.ok, summary.report()
    return time.perf_counter() - t0, summary


def run_stage_at_a_time(pipe: Any, raw: Path, store: Path, **kw: Any) -> tuple[float, dict[str, float], list, dict]:
    """What ether-prep did before: each stage over every session on its own pool, then the next. Returns the
    wall time, each stage's, the outcomes and how many actors each stage had at most."""
    from ether_prep.runner import run_pipeline

    t0, per_stage, outcomes, actors = time.perf_counter(), {}, [], {}
    for spec in pipe.stages:
        t = time.perf_counter()
        summary = run_pipeline(pipe, raw, store, family=None, only=[spec.name], executor="ray", **kw)
        assert summary.ok, summary.report()
        per_stage[spec.name] = time.perf_counter() - t
        outcomes += summary.outcomes
        actors[spec.name] = len(summary.actors)
    return time.perf_counter() - t0, per_stage, outcomes, actors


def measured_costs(outcomes: list) -> dict[str, float]:
    """Seconds of compute per media second of each stage (sessions it computed)."""
    costs = {}
    for stage in README_COSTS:
        runs = [o for o in outcomes if o.stage == stage and o.state == "done" and o.media_s]
        if runs:
            costs[stage] = sum(o.elapsed_s for o in runs) / sum(o.media_s for o in runs)
    return costs


def bench_stream(tmp: Path, rounds: int, stream: bool, scale: bool) -> dict[str, float]:
    import ray

    from ether_prep.config import load_pipeline

    raw = tmp / "stream_raw"
    media = build_sessions(raw)
    pipe = load_pipeline("cpu", one_cpu_config(tmp))
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    costs: dict[str, float] = {}
    try:
        print(f"[stream] {len(SESSIONS)} sessions, {media:.0f} s of media; cpu pipeline, 1 CPU per stage worker, "
              f"Ray with 2 CPUs ({load_avg()})")
        streams, staged = [], []
        for r in range(rounds if stream else 0):
            for mode in (("streaming", "staged") if r % 2 == 0 else ("staged", "streaming")):
                store = tmp / f"{mode}_{r}.zarr"
                if mode == "streaming":
                    wall, summary = run_streaming(pipe, raw, store)
                    streams.append(wall)
                    costs = measured_costs(summary.outcomes)
                    print(f"  streaming  {wall:7.1f} s")
                    print("    " + summary.report().replace("\n", "\n    "))
                else:
                    wall, per_stage, _, _ = run_stage_at_a_time(pipe, raw, store)
                    staged.append(wall)
                    print(f"  stage-at-a-time {wall:7.1f} s: "
                          + ", ".join(f"{k} {v:.1f}" for k, v in per_stage.items()))
        if stream:
            s, b = min(streams), min(staged)
            print(f"[stream] best of {rounds}: streaming {s:.1f} s, stage-at-a-time {b:.1f} s: "
                  f"{b / s:.2f}x ({1 - s / b:+.0%} wall time)")
        if scale:
            store = tmp / "streaming_0.zarr"
            if not stream:
                run_streaming(pipe, raw, store)
            walls, made = {}, {}
            for workers in (1, 2):
                _, walls[workers], outcomes, made[workers] = run_stage_at_a_time(pipe, raw, store, workers=workers,
                                                                                 force=True)
                if workers == 1:
                    costs = measured_costs(outcomes) or costs
            print(f"[scale] stage by stage, --workers 1 vs 2, Ray with 2 CPUs ({load_avg()})")
            for stage in walls[1]:
                t1, t2 = walls[1][stage], walls[2][stage]
                print(f"  {stage:11s} 1 worker {t1:7.1f} s, 2 workers {t2:7.1f} s ({made[2][stage]} actors), "
                      f"efficiency {t1 / (2 * t2):.2f}")
            for label, stages in (("all stages", list(walls[1])),
                                  ("the default pipeline's CPU stages (audio, utterances, align, qc)",
                                   ["audio", "utterances", "align", "qc"])):
                t1, t2 = sum(walls[1][s] for s in stages), sum(walls[2][s] for s in stages)
                print(f"[scale] {label}: 1 worker {t1:.1f} s, 2 workers {t2:.1f} s, efficiency T1/(2 T2) = "
                      f"{t1 / (2 * t2):.2f}")
        print(f"peak memory of the driver: {peak_mb():.0f} MB")
    finally:
        ray.shutdown()
    return costs


# -------------------------------------------------------------------------------------------------- sim
@dataclass(frozen=True)
class SimParams:
    cost_per_s: float = 0.0  # seconds of sleep per media second
    setup_s: float = 0.0  # a model load, once per worker


def _sim_stage(stage_name: str, deps: tuple[str, ...], family: str) -> type:
    from ether_prep.stages.base import Stage

    class SimStage(Stage):
        """Sleeps its cost for the session's media duration, reporting progress; writes one value."""

        name = stage_name
        requires = deps
        Params = SimParams

        def setup(self) -> None:
            time.sleep(self.params.setup_s)

        def run(self, session: Any, store: Any, out: Any) -> str | None:
            import numpy as np

            from ether_prep.store import write_array

            media = session.probe.duration
            steps = max(1, int(media))
            for k in range(steps):
                time.sleep(self.params.cost_per_s * media / steps)
                self.report_progress(media * (k + 1) / steps)
            write_array(out, "media_s", np.array([media]))
            return None

    SimStage.family = family
    SimStage.__qualname__ = SimStage.__name__ = f"Sim_{stage_name}"
    return SimStage


SIM_DAG = {"audio": (), "transcribe": ("audio",), "diarize": ("audio",), "utterances": ("transcribe", "diarize"),
           "face": (), "align": ("utterances", "face"), "qc": ("align",)}
# The default pipeline's resources, but 0.25 CPU for a GPU worker: this machine has 2 real cores, and the
# point is the GPUs.
SIM_RESOURCES = {"audio": (1, 0), "transcribe": (0.25, 1), "diarize": (0.25, 1), "utterances": (1, 0),
                 "face": (0.25, 1), "align": (1, 0), "qc": (1, 0)}
SIM_SETUP_S = {"transcribe": 3.0, "diarize": 2.0, "face": 1.0}
SIM_DURATIONS = [40, 3, 25, 8, 12, 30, 5, 18, 22, 6, 35, 10, 15, 4, 28, 9, 20, 7, 14, 33, 11, 16, 24, 13]


def _pool_use(summary: Any, wall_end: float) -> dict[str, tuple[int, float, float]]:
    """stage -> (actors made, busy actor-seconds, alive actor-seconds)."""
    use = {}
    for stage in SIM_DAG:
        actors = [a for a in summary.actors if a.stage == stage]
        alive = sum((a.ended or wall_end) - a.created for a in actors)
        busy = sum(o.elapsed_s for o in summary.outcomes if o.stage == stage and o.state == "done")
        use[stage] = (len(actors), busy, alive)
    return use


def bench_sim(tmp: Path, costs: dict[str, float], target_s: float) -> None:
    import ray

    from ether_prep.config import load_pipeline
    from ether_prep.stages import STAGES

    source = "measured by `stream` in this run" if costs else "README figures"
    costs = {**README_COSTS, **costs}
    raw = tmp / "sim_raw"
    raw.mkdir()
    for i, seconds in enumerate(SIM_DURATIONS):
        subprocess.run(["ffmpeg", "-v", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", str(seconds),
                        str(raw / f"s{i:02d}.wav")], check=True)
    media = float(sum(SIM_DURATIONS))
    gpu_work = sum(costs[s] for s in GPU_STAGES) * media
    factor = target_s * 8 / gpu_work  # the GPU work then takes about target_s on 8 GPUs
    saved = dict(STAGES)
    # The simulated stages live in a module of their own that Ray's workers receive by value.
    from ray import cloudpickle

    module = types.ModuleType("ether_prep_sim_stages")
    sys.modules[module.__name__] = module
    cloudpickle.register_pickle_by_value(module)
    for cls in (SimParams, *(_sim_stage(n, d, "align" if n in ("align", "qc") else "extract")
                             for n, d in SIM_DAG.items())):
        cls.__module__ = module.__name__
        setattr(module, cls.__name__, cls)
    for name in SIM_DAG:
        STAGES[name] = f"{module.__name__}:Sim_{name}"
    stages = [{"stage": name, "params": {"cost_per_s": round(costs[name] * factor, 4),
                                          "setup_s": SIM_SETUP_S.get(name, 0.0)},
               "resources": {"num_cpus": SIM_RESOURCES[name][0], "num_gpus": SIM_RESOURCES[name][1]}}
              for name in SIM_DAG]
    config = tmp / "sim.yaml"
    config.write_text(_dump_yaml({"version": 1, "pipelines": {"sim": {"stages": stages}}}))
    pipe = load_pipeline("sim", config)
    ray.init(num_cpus=8, num_gpus=8, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        print(f"[sim] 8 GPUs, 8 CPUs; {len(SIM_DURATIONS)} sessions, {media:.0f} s of media; costs ({source}) x "
              f"{factor:.2f} s per media s: " + ", ".join(f"{s} {costs[s] * factor:.3f}" for s in SIM_DAG)
              + f"; model loads {SIM_SETUP_S} ({load_avg()})")
        work = {s: costs[s] * factor * media for s in SIM_DAG}
        c = {s: costs[s] * factor for s in SIM_DAG}
        # A session's own chain: audio, then transcribe and diarize side by side, utterances, beside face;
        # then align and qc.
        longest = max(max(c["audio"] + max(c["transcribe"], c["diarize"]) + c["utterances"], c["face"]) * d
                      + (c["align"] + c["qc"]) * d for d in SIM_DURATIONS)
        bound = max(sum(work[s] for s in GPU_STAGES) / 8, longest)
        for mode in ("streaming", "staged"):
            store = tmp / f"sim_{mode}.zarr"
            if mode == "streaming":
                wall, summary = run_streaming(pipe, raw, store)
                use = _pool_use(summary, max(a.ended or 0.0 for a in summary.actors))
                gpu_busy = sum(use[s][1] for s in GPU_STAGES)
                print(f"  streaming: wall {wall:.1f} s; lower bound {bound:.1f} s (GPU work {gpu_work * factor:.0f} "
                      f"GPU-s / 8; longest session chain {longest:.1f} s): bound / wall = {bound / wall:.2f}; "
                      f"GPUs busy {gpu_busy / (8 * wall):.0%} of the run")
                for stage, (made, busy, alive) in use.items():
                    print(f"    {stage:11s} {made:2d} actors, busy {busy:6.1f} of {alive:6.1f} actor-s alive "
                          f"({busy / alive if alive else 0:.0%}); work {work[stage]:6.1f} s")
            else:
                wall, per_stage, _, _ = run_stage_at_a_time(pipe, raw, store)
                print(f"  stage-at-a-time: wall {wall:.1f} s, bound / wall = {bound / wall:.2f} (" +
                      ", ".join(f"{k} {v:.1f}" for k, v in per_stage.items()) + ")")
    finally:
        ray.shutdown()
        STAGES.clear()
        STAGES.update(saved)


# ---------------------------------------------------------------------------------------------- windows
def bench_windows(tmp: Path, seconds: float, window_s: float, rounds: int) -> None:
    """One long video's ``face`` stage (the ``cpu`` pipeline's MediaPipe + dlib, 1 CPU per worker) on Ray: whole
    in one task against ``window_s`` windows over this machine's 2 CPUs, alternating for ``rounds``, on one Ray
    instance (its start excluded from both); checks that the two stores hold the same face arrays."""
    import numpy as np
    import ray

    from ether_prep.config import load_pipeline
    from ether_prep.runner import run_pipeline
    from ether_prep.store import Store

    raw = tmp / "windows_raw"
    raw.mkdir()
    clip = DATA / "video" / "grid_two_faces_side_by_side.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "-1", "-i", str(clip), "-t", str(seconds), "-r", "25",
                    "-c:v", "libx264", "-preset", "ultrafast", "-an", str(raw / "long.mp4")], check=True)
    doc = yaml.safe_load((ROOT / "pipelines.yaml").read_text())
    face = next(st for st in doc["pipelines"]["cpu"]["stages"] if st["stage"] == "face")
    configs = {}
    for name, window in (("whole", None), ("windows", window_s)):
        stage = {**face, "resources": {"num_cpus": 1, "window_s": window}}
        configs[name] = tmp / f"face_{name}.yaml"
        configs[name].write_text(_dump_yaml({"version": 1, "pipelines": {"face": {"stages": [stage]}}}))
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    walls: dict[str, list[float]] = {"whole": [], "windows": []}
    try:
        for r in range(rounds):
            for name in ("whole", "windows"):
                store = tmp / f"{name}_{r}.zarr"
                t0 = time.perf_counter()
                summary = run_pipeline(load_pipeline("face", configs[name]), raw, store, executor="ray")
                walls[name].append(time.perf_counter() - t0)
                assert summary.ok, summary.report()
    finally:
        ray.shutdown()
    groups = {name: Store(tmp / f"{name}_0.zarr", mode="r") for name in walls}
    faces = {name: st.session(st.session_ids()[0]).stage_group("face") for name, st in groups.items()}
    same = all(np.array_equal(np.asarray(faces["whole"][k][...]), np.asarray(faces["windows"][k][...]),
                              equal_nan=True) for k in ("time", "au", "landmarks", "box", "person", "shot"))
    attrs = dict(faces["windows"].attrs)
    win = attrs["windows"]
    join_s = attrs["frames_analysed"] / attrs["fps_analysed"] if attrs.get("fps_analysed") else float("nan")
    whole, split = statistics.median(walls["whole"]), statistics.median(walls["windows"])
    print(f"[windows] one {seconds:.0f} s video ({attrs['frames_analysed']} frames), face stage on Ray, 2 CPUs: "
          f"whole {whole:.1f} s, {win['count']} windows of {window_s:.0f} s on "
          f"{len({w['pid'] for w in win['workers']})} actors {split:.1f} s (join {join_s:.1f} s of it): "
          f"{whole / split:.2f}x; same arrays: {same}; medians of {rounds} (whole "
          f"{[round(w, 1) for w in walls['whole']]}, windows {[round(w, 1) for w in walls['windows']]}); "
          f"peak {peak_mb():.0f} MB ({load_avg()})")


def bench_speech_windows(tmp: Path, seconds: float, window_s: float, rounds: int) -> None:
    """``transcribe`` whole against in windows on Ray with 2 CPUs (see the module docstring)."""
    import jiwer
    import ray

    from ether_prep.config import load_pipeline
    from ether_prep.runner import run_pipeline
    from ether_prep.speech import normalize_text
    from ether_prep.store import Store
    from tests.media import SPEECH_CLIPS, read_aloud_call, words_in_place

    raw = tmp / "speech_windows_raw"
    raw.mkdir()
    turns = read_aloud_call(raw / "long_call.wav", seconds)
    doc = yaml.safe_load((ROOT / "pipelines.yaml").read_text())
    stages = [s for s in doc["pipelines"]["cpu"]["stages"] if s["stage"] in ("audio", "transcribe")]
    configs = {}
    for name, window in (("whole", None), ("windows", window_s)):
        # One CPU thread per worker, as one GPU per worker: the whole run cannot use the second core.
        entries = [{**s, "resources": {"num_cpus": 1, **({"window_s": window} if s["stage"] == "transcribe" else {})},
                    **({"params": {**s["params"], "threads": 1}} if s["stage"] == "transcribe" else {})}
                   for s in stages]
        configs[name] = tmp / f"speech_{name}.yaml"
        configs[name].write_text(_dump_yaml({"version": 1, "pipelines": {"speech": {"stages": entries}}}))
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    walls: dict[str, list[float]] = {"whole": [], "windows": []}
    try:
        for r in range(rounds):
            for name in ("whole", "windows"):
                t0 = time.perf_counter()
                summary = run_pipeline(load_pipeline("speech", configs[name]), raw, tmp / f"speech_{name}_{r}.zarr",
                                       executor="ray")
                walls[name].append(time.perf_counter() - t0)
                assert summary.ok, summary.report()
    finally:
        ray.shutdown()
    groups = {}
    for name in walls:
        store = Store(tmp / f"speech_{name}_0.zarr", mode="r")
        groups[name] = store.session(store.session_ids()[0])
    words = {name: g.read_table("transcribe", "words") for name, g in groups.items()}
    text = {name: normalize_text(" ".join(map(str, w["text"]))) for name, w in words.items()}
    agree = jiwer.wer(" ".join(text["whole"]), " ".join(text["windows"]))

    references = [" ".join(normalize_text(SPEECH_CLIPS[name][1])) for name, _, _ in turns]
    ref = {name: jiwer.wer(references, [r["text"] for r in words_in_place(w, turns)]) for name, w in words.items()}
    attrs = {name: dict(g.stage_group("transcribe").attrs) for name, g in groups.items()}
    win = attrs["windows"]["windows"]
    whole, split = statistics.median(walls["whole"]), statistics.median(walls["windows"])
    duration = groups["whole"].stage_group("audio").attrs["duration"]
    print(f"[speech-windows] one {duration:.0f} s recording ({len(turns)} read turns between the call's), audio + "
          f"transcribe on Ray, 2 CPUs: "
          f"whole {whole:.1f} s, {win['count']} windows of ~{window_s:.0f} s on "
          f"{len({w['pid'] for w in win['workers']})} actors {split:.1f} s: {whole / split:.2f}x; medians of "
          f"{rounds} (whole {[round(w, 1) for w in walls['whole']]}, windows {[round(w, 1) for w in walls['windows']]})"
          f"; peak {peak_mb():.0f} MB ({load_avg()})")
    print(f"  cuts {[(c['at'], c['pause_s']) for c in win['cuts']]} (s, pause s); words whole {len(text['whole'])}, "
          f"windows {len(text['windows'])}; WER windows vs whole {agree:.3f}; WER against the reference turns "
          f"(LibriSpeech, jfk): whole {ref['whole']:.3f}, windows {ref['windows']:.3f}"
          f"; speech coverage whole {attrs['whole']['speech_coverage']:.3f}, windows "
          f"{attrs['windows']['speech_coverage']:.3f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("parts", nargs="*", default=["cached", "stream", "scale", "sim", "windows", "speech-windows"])
    ap.add_argument("--rounds", type=int, default=1, help="alternating streaming / stage-at-a-time rounds")
    ap.add_argument("--cached-sessions", type=int, default=100)
    ap.add_argument("--sim-seconds", type=float, default=60.0, help="about how long the simulated GPU work lasts")
    ap.add_argument("--windows-video", type=float, default=120.0, help="seconds of the `windows` part's video")
    ap.add_argument("--window-s", type=float, default=30.0, help="the `windows` part's window length")
    ap.add_argument("--speech-seconds", type=float, default=300.0, help="seconds of the `speech-windows` recording")
    ap.add_argument("--speech-window-s", type=float, default=75.0, help="the `speech-windows` part's window length")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        if "cached" in args.parts:
            bench_cached(tmp, args.cached_sessions)
        costs: dict[str, float] = {}
        if "stream" in args.parts or "scale" in args.parts:
            costs = bench_stream(tmp, args.rounds, "stream" in args.parts, "scale" in args.parts)
        if "sim" in args.parts:
            bench_sim(tmp, costs, args.sim_seconds)
        if "windows" in args.parts:
            bench_windows(tmp, args.windows_video, args.window_s, args.rounds)
        if "speech-windows" in args.parts:
            bench_speech_windows(tmp, args.speech_seconds, args.speech_window_s, args.rounds)


if __name__ == "__main__":
    main()
