"""CUDA libraries from NVIDIA's wheels (``nvidia-*`` packages): found through their package metadata, loaded
with :mod:`ctypes`; the only module that loads them by path. Standard library only: nothing heavy is imported.

Two engines run on CUDA here, each with libraries of its own CUDA major version:

- **CTranslate2** 4.8 (faster-whisper's engine, the ``transcribe`` stage) is built for CUDA 12 with its CUDA
  runtime linked in statically and, since 4.6.3, without cuDNN (its Whisper Conv1D is a CUDA kernel of its own:
  CTranslate2 PR #1949, wheels built with ``-DWITH_CUDNN=OFF``; the locked 4.8.5 library names no cuDNN at
  all). At its first GPU call it ``dlopen``s ``libcublas.so.12`` by name (``src/cuda/cublas_stub.cc``), and
  cuBLASLt 12 in turn ``dlopen``s ``libnvrtc.so.12``. The wheels ``nvidia-cublas-cu12`` and
  ``nvidia-cuda-nvrtc-cu12`` install them in ``site-packages/nvidia/{cublas,cuda_nvrtc}/lib``, which no search
  path names: faster-whisper's README tells users to put those folders on ``LD_LIBRARY_PATH``.
  :func:`preload_ctranslate2_cuda` loads them by path instead, before CTranslate2 first asks; the dynamic
  loader then answers CTranslate2's ``dlopen("libcublas.so.12")`` with the library already loaded (matched by
  its soname), so nobody sets ``LD_LIBRARY_PATH``.
- **torch** 2.11 (cu130 build: py-feat, pyannote, whisperx's VAD and wav2vec2 aligner) loads CUDA 13 and cuDNN 9
  from ``nvidia/cu13/lib`` and ``nvidia/cudnn/lib`` itself; listed here so ``doctor`` can check they load.
"""

from __future__ import annotations

import ctypes
import importlib.metadata as metadata
import threading
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ENGINE_LIBRARIES", "CudaDriver", "CudaLibrary", "LibraryCheck", "check_engine", "cuda_driver",
           "preload_ctranslate2_cuda"]


@dataclass(frozen=True)
class CudaLibrary:
    """One shared library of an NVIDIA wheel (``distribution`` installs ``path`` under site-packages)."""

    distribution: str
    path: str
    required: bool = True  # False: loaded lazily by another library for some kernels only


# What each engine loads on a GPU, in load order (a library before those that need it).
ENGINE_LIBRARIES: dict[str, tuple[CudaLibrary, ...]] = {
    "ctranslate2": (
        CudaLibrary("nvidia-cuda-nvrtc-cu12", "nvidia/cuda_nvrtc/lib/libnvrtc.so.12", required=False),
        CudaLibrary("nvidia-cublas-cu12", "nvidia/cublas/lib/libcublasLt.so.12"),
        CudaLibrary("nvidia-cublas-cu12", "nvidia/cublas/lib/libcublas.so.12"),
    ),
    "torch": (
        CudaLibrary("nvidia-cuda-runtime", "nvidia/cu13/lib/libcudart.so.13"),
        CudaLibrary("nvidia-cublas", "nvidia/cu13/lib/libcublasLt.so.13"),
        CudaLibrary("nvidia-cublas", "nvidia/cu13/lib/libcublas.so.13"),
        CudaLibrary("nvidia-cudnn-cu13", "nvidia/cudnn/lib/libcudnn.so.9"),
    ),
}


@dataclass(frozen=True)
class LibraryCheck:
    """Whether one library is installed and loads: ``problem`` is None when it does."""

    library: CudaLibrary
    version: str | None  # the wheel's version; None when not installed
    file: Path | None
    problem: str | None

    @property
    def name(self) -> str:
        return Path(self.library.path).name


_loaded: dict[str, ctypes.CDLL] = {}  # kept referenced: a library stays loaded for the process's life
_lock = threading.Lock()


def _locate(lib: CudaLibrary) -> tuple[str | None, Path | None]:
    try:
        dist = metadata.distribution(lib.distribution)
    except metadata.PackageNotFoundError:
        return None, None
    return dist.version, Path(str(dist.locate_file(lib.path)))


def _load(lib: CudaLibrary) -> LibraryCheck:
    version, file = _locate(lib)
    if file is None:
        return LibraryCheck(lib, None, None, f"package {lib.distribution} is not installed")
    if not file.is_file():
        return LibraryCheck(lib, version, file, f"{file} is missing; reinstall {lib.distribution}")
    with _lock:
        try:
            if lib.path not in _loaded:
                # RTLD_GLOBAL: the symbols serve libraries that load later and name this one.
                _loaded[lib.path] = ctypes.CDLL(str(file), mode=ctypes.RTLD_GLOBAL)
        except OSError as exc:
            return LibraryCheck(lib, version, file, f"{file} does not load ({exc})")
    return LibraryCheck(lib, version, file, None)


def check_engine(engine: str) -> list[LibraryCheck]:
    """Load every CUDA library ``engine`` (a key of :data:`ENGINE_LIBRARIES`) needs; one check each."""
    return [_load(lib) for lib in ENGINE_LIBRARIES[engine]]


def preload_ctranslate2_cuda() -> list[str]:
    """Load CTranslate2's CUDA 12 libraries from their wheels before CTranslate2 looks for them by name (call it
    before the first GPU computation; harmless when repeated). Returns the problems with required libraries
    (none: CTranslate2 will find them); a missing optional one, or a platform without the wheels, leaves the
    search to the system's paths, as before."""
    return [c.problem for c in check_engine("ctranslate2") if c.problem and c.library.required]


@dataclass(frozen=True)
class CudaDriver:
    """What the NVIDIA driver reports: devices, the newest CUDA version it runs (e.g. 13.0), or why none."""

    devices: int
    cuda_version: tuple[int, int] | None
    problem: str | None


def cuda_driver() -> CudaDriver:
    """The NVIDIA driver's view, through the driver library itself (``libcuda.so.1``: no toolkit, no torch);
    respects ``CUDA_VISIBLE_DEVICES``."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return CudaDriver(0, None, "no CUDA device (no NVIDIA driver here: libcuda.so.1 not found)")
    raw = ctypes.c_int(0)
    version = (raw.value // 1000, raw.value % 1000 // 10) if cuda.cuDriverGetVersion(ctypes.byref(raw)) == 0 \
        else None
    status = cuda.cuInit(0)
    if status != 0:
        # 100: CUDA_ERROR_NO_DEVICE (also when CUDA_VISIBLE_DEVICES hides every GPU).
        why = ("no CUDA device (the NVIDIA driver sees none)" if status == 100
               else f"cuInit failed (CUDA error {status})")
        return CudaDriver(0, version, why)
    count = ctypes.c_int(0)
    if cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value == 0:
        return CudaDriver(0, version, "no CUDA device (the NVIDIA driver sees none)")
    return CudaDriver(count.value, version, None)
