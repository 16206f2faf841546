"""Shared test fixtures: the real media in ../shared/data and the models in ../shared/models."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
MODELS = SHARED / "models"
GRID2 = DATA / "video" / "grid_two_faces_side_by_side.mp4"  # two people side by side, one turn each

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
def aligned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Extract then align, once, with the real cpu pipeline, over four real sessions.

    - the side-by-side clip (two faces, two speakers);
    - a GRID clip (one face, one speaker);
    - the same GRID clip with the face hidden from 1.0 to 2.0 s while he keeps talking (made here);
    - the 30 s two-party telephone call (audio only: face skipped).
    """
    from ether_prep.config import load_pipeline
    from ether_prep.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("align")
    raw = tmp / "raw"
    raw.mkdir()
    (raw / GRID2.name).symlink_to(GRID2)
    (raw / "bbaf2n.mpg").symlink_to(DATA / "video" / "bbaf2n.mpg")
    (raw / "sample.wav").symlink_to(DATA / "diarization" / "sample.wav")
    hidden = raw / "bbaf2n_face_hidden.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(DATA / "video" / "bbaf2n.mpg"), "-vf",
                    "drawbox=x=0:y=0:w=iw:h=ih:color=black:t=fill:enable='between(t,1.0,2.0)'",
                    "-c:a", "aac", str(hidden)], check=True)
    store = tmp / "store.zarr"
    pipeline = load_pipeline("cpu", ROOT / "pipelines.yaml")
    extract = run_pipeline(pipeline, raw, store, family="extract")
    assert extract.ok, extract.report()
    align = run_pipeline(pipeline, raw, store, family="align")
    assert align.ok, align.report()
    return {"raw": raw, "store": store, "extract": extract, "align": align, "tmp": tmp}


@pytest.fixture(scope="session")
def ray_instance():
    """One local Ray for the whole test session (a start costs 10-30 s here): 2 CPUs and 2 declared GPUs,
    so GPU scheduling is real (CUDA_VISIBLE_DEVICES is set per actor) on a machine without any."""
    os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")
    import ray

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    yield ray
    ray.shutdown()
