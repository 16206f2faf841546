"""bench/bench_gpu.py's CPU mode runs every part of the GPU benchmark end to end on one short clip (the script a
GPU machine runs, kept working on machines without one): decode, py-feat bare and through the face stage
(random weights), faster-whisper bare and through transcribe; its figures are written as JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from .conftest import DATA, ROOT

pytestmark = pytest.mark.slow


def test_bench_gpu_runs_on_the_cpu(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_gpu", ROOT / "bench" / "bench_gpu.py")
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "bench_gpu_cpu.json"
    results = bench.main(["--device", "cpu", "--seconds", "1", "--analysis-fps", "2", "--frames", "2",
                          "--batch-sizes", "2", "--audio", str(DATA / "speech" / "jfk.flac"), "--audio-seconds",
                          "11", "--threads", "2", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(results, default=str))
    env = results["environment"]
    assert env["device"] == "cpu" and env["libraries"]["ctranslate2"]["libcublas.so.12"].startswith("12.")
    assert results["decode"]["frames"] >= 24  # 1 s of a 25 fps clip
    face = results["pyfeat"]["batch_2"]
    assert face["bare"]["fps"] > 0 and face["overlap"]["batch_size"] == 2
    assert face["overlap"]["frames"] == face["turns"]["frames"] >= 2  # 1 s at 2 fps analysed
    asr = results["asr"]
    assert asr["bare"]["words"] >= 15 and asr["transcribe"]["words"] >= 15  # jfk: 22 words
    assert asr["transcribe_rtf"] > 0 and "gpu" in asr["bare"]
