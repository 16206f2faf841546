"""Whether each stage's device is usable here, checked without loading a model (``ether-prep doctor``).

A stage asks for a device with its ``device`` parameter (``cpu``, ``cuda``, ``cuda:N``, ``auto``); on a GPU it
loads the CUDA libraries of its engines (:meth:`~ether_prep.stages.base.Stage.cuda_engines`). The check asks
the NVIDIA driver for devices and the CUDA version it runs, and loads every library of those engines from its
wheel (:mod:`ether_prep.adapters.cuda_libs`); torch, CTranslate2 and the models are not imported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .adapters.cuda_libs import CudaDriver
    from .stages.base import Stage

__all__ = ["DeviceCheck", "check_stage_device"]

# The oldest driver CUDA version each engine's build runs on (CTranslate2 4.8: CUDA 12.8 runtime linked in,
# which runs on any CUDA 12 driver by CUDA's minor-version compatibility; torch 2.11 cu130: a CUDA 13 driver).
_DRIVER_NEEDED = {"ctranslate2": (12, 0), "torch": (13, 0)}


@dataclass(frozen=True)
class DeviceCheck:
    """One stage's device: what it asks for, what it would run on, and what is wrong (``problems``)."""

    requested: str
    runs_on: str
    problems: tuple[str, ...]
    libraries: str  # what loaded, e.g. "ctranslate2: libcublas.so.12 12.9.3.13, ..."

    @property
    def line(self) -> str:
        head = f"device {self.requested}" + (f" -> {self.runs_on}" if self.runs_on != self.requested else "")
        parts = [head, *self.problems]
        if self.libraries:
            parts.append(self.libraries)
        return "; ".join(parts)


def check_stage_device(stage: Stage, driver: CudaDriver) -> DeviceCheck:
    """``stage``'s device here: a GPU stage needs a CUDA device the driver sees (a recent enough driver) and
    every CUDA library its engines load; a CPU stage needs nothing."""
    requested = str(getattr(stage.params, "device", "cpu"))
    engines = stage.cuda_engines()
    if not engines:
        return DeviceCheck(requested, "cpu", (), "" if requested == "cpu" else f"{stage.spec.backend} runs on the CPU")
    if requested == "cpu":
        return DeviceCheck(requested, "cpu", (), "")
    runs_on = ("cuda" if driver.devices else "cpu") if requested == "auto" else requested
    libraries, missing = _libraries(engines)  # checked without a GPU too: the environment is what it is
    if runs_on == "cpu":  # auto without a GPU: not a problem, but say why
        return DeviceCheck(requested, runs_on, (), f"{driver.problem}; {libraries}")
    return DeviceCheck(requested, runs_on, (*_gpu_problems(runs_on, driver, engines), *missing), libraries)


def _gpu_problems(device: str, driver: CudaDriver, engines: tuple[str, ...]) -> list[str]:
    if driver.problem:
        return [driver.problem]
    index = int(device.split(":")[1]) if ":" in device else 0
    problems = []
    if index >= driver.devices:
        problems.append(f"no CUDA device {index} (the driver sees {driver.devices})")
    for engine in engines:
        need = _DRIVER_NEEDED[engine]
        if driver.cuda_version is not None and driver.cuda_version < need:
            have = ".".join(map(str, driver.cuda_version))
            problems.append(f"{engine} needs a driver for CUDA {need[0]}.{need[1]} or newer, this one runs CUDA "
                            f"{have}: update the NVIDIA driver")
    return problems


def _libraries(engines: tuple[str, ...]) -> tuple[str, list[str]]:
    """("engine: lib version, ... load" per engine, problems with required libraries)."""
    from .adapters.cuda_libs import check_engine

    shown, problems = [], []
    for engine in engines:
        checks = check_engine(engine)
        loaded = [f"{c.name} {c.version}" for c in checks if c.problem is None]
        problems += [c.problem for c in checks if c.problem and c.library.required]
        shown.append(f"{engine} CUDA libraries load: {', '.join(loaded) or 'none'}")
    return "; ".join(shown), problems
