"""Shared test fixtures: the real media in ../shared/data and the models in ../shared/models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
MODELS = SHARED / "models"

# Tests run offline, as clinical users do: no hub downloads, no usage metrics.
os.environ.setdefault("ETHER_PREP_MODELS", str(MODELS))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


@pytest.fixture(scope="session")
def ray_instance():
    """One local Ray for the whole test session (a start costs 10-30 s here): 2 CPUs and 2 declared GPUs,
    so GPU scheduling is real (CUDA_VISIBLE_DEVICES is set per actor) on a machine without any."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()
