"""One validated stage entry of a pipeline (:class:`StageSpec`) and what its workers ask the scheduler for
(:class:`Resources`).

A leaf module (no ether_prep imports): config builds specs, stages and executors read them, so every import
runs downhill from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Resources", "StageSpec"]


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage asks Ray for and, for a stage that computes recordings in time windows, the
    window length: a recording at least twice ``window_s`` long is spread over the stage's workers in windows
    of about that many seconds. Scheduling only: resources never change a result and are not part of any
    fingerprint (batch sizes are stage parameters)."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    window_s: float | None = None


@dataclass(frozen=True)
class StageSpec:
    """One validated stage entry of a pipeline."""

    name: str
    version: str  # the stage class's version, recorded when the entry was validated
    backend: str
    model: str | None
    params: Any  # an instance of the stage's Params dataclass
    resources: Resources = field(default_factory=Resources)
    enabled: bool = True

    def params_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)

    def identity(self) -> dict[str, Any]:
        """What a result depends on: stage version, backend, model and parameters (never resources)."""
        return {"stage": self.name, "version": self.version, "backend": self.backend, "model": self.model,
                "params": self.params_dict()}
