"""The CUDA libraries the GPU engines load are in the environment and load, CTranslate2 finds cuBLAS 12 by name
once the adapter has preloaded it (no LD_LIBRARY_PATH), and ``doctor`` says per stage whether its device is
usable, cleanly, on a machine without a CUDA device."""

from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ether_prep.adapters.cuda_libs import ENGINE_LIBRARIES, check_engine

from .conftest import ROOT, pipeline

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="NVIDIA's CUDA wheels: Linux x86-64")
# No search path of ours: what a user has who never set one.
ENV = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"} | {"PYANNOTE_METRICS_ENABLED": "0"}


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          env=ENV | env, cwd=ROOT, timeout=120)


def test_every_cuda_library_of_both_engines_is_installed_and_loads() -> None:
    for engine in ENGINE_LIBRARIES:
        for check in check_engine(engine):
            assert check.problem is None, check.problem
            assert check.version and check.file is not None and check.file.is_file()
    versions = {c.name: c.version for c in check_engine("ctranslate2")}
    assert versions["libcublas.so.12"].startswith("12.") and versions["libnvrtc.so.12"].startswith("12.")


def test_ctranslate2_finds_cublas_12_by_name_only_after_the_preload() -> None:
    # CTranslate2 dlopen()s "libcublas.so.12" by name at its first GPU call; a ctypes load by the same bare
    # name goes through the same loader lookup.
    proc = _run("""
        import ctypes
        try:
            ctypes.CDLL("libcublas.so.12")
            print("found-before")
        except OSError:
            print("missing-before")
        from ether_prep.adapters.cuda_libs import preload_ctranslate2_cuda
        print("problems", preload_ctranslate2_cuda())
        ctypes.CDLL("libcublas.so.12"), ctypes.CDLL("libcublasLt.so.12"), ctypes.CDLL("libnvrtc.so.12")
        print("found-after")
    """)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.split()
    assert out[0] == "missing-before", "libcublas.so.12 is on the search path already: the test proves nothing"
    assert "problems []" in proc.stdout and out[-1] == "found-after"


def test_ctranslate2_loads_cublas_12_and_no_cudnn() -> None:
    # The reason no cuDNN for CUDA 12 is installed: the locked CTranslate2 names none (built WITH_CUDNN=OFF).
    dist = metadata.distribution("ctranslate2")
    lib = next(Path(str(dist.locate_file(f))) for f in dist.files or [] if "libctranslate2" in str(f))
    data = lib.read_bytes()
    assert b"libcublas.so.12" in data
    assert b"cudnn" not in data.lower()


def test_doctor_reports_no_cuda_device_for_the_default_pipeline() -> None:
    # Every GPU hidden, so a GPU machine sees what a CPU one does.
    proc = subprocess.run([sys.executable, "-m", "ether_prep", "doctor", "-p", "default", "--out",
                           str(ROOT / "no-such-store.zarr")], capture_output=True, text=True,
                          env=ENV | {"CUDA_VISIBLE_DEVICES": "", "NO_COLOR": "1"}, cwd=ROOT, timeout=120)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # a run here would fail: it says so
    assert "Traceback" not in proc.stderr and "Error" not in proc.stderr, proc.stderr
    lines = proc.stdout.splitlines()
    devices = {}
    for i, line in enumerate(lines):
        if line.strip().startswith("device "):
            devices[lines[i - 2].split()[0]] = line.strip()
    assert set(devices) == {s.name for s in pipeline("default").stages if s.enabled}
    for stage in ("transcribe", "diarize", "face", "text"):
        assert devices[stage].startswith("device cuda; no CUDA device ("), devices[stage]
        assert "torch CUDA libraries load: libcudart.so.13" in devices[stage]
    assert "ctranslate2 CUDA libraries load: libnvrtc.so.12 12." in devices["transcribe"]
    assert "libcublas.so.12 12." in devices["transcribe"]
    assert all(devices[s] == "device cpu" for s in ("audio", "utterances", "align", "voice", "timing", "qc"))


def test_face_batch_size_per_device() -> None:
    from ether_prep.face.backends import PyFeatBackend, auto_batch_size

    assert auto_batch_size("cpu", None) == 8 and auto_batch_size("cuda", None) == 8
    assert [auto_batch_size("cuda:0", gib) for gib in (8.0, 15.6, 23.6, 39.4, 79.2, 139.8)] == [8, 16, 32, 32, 64, 64]
    spec = pipeline("default").stage("face")
    assert spec.params.batch_size == 0  # the GPU pipeline lets the device decide
    # Time windows start on whole batches of the largest choice, which every choice divides.
    assert PyFeatBackend.frames_per_batch(spec.params) == 64
