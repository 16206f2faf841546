"""Shared test fixtures: the real media in ../shared/data and the models in ../shared/models (their paths are
computed here only), and the one way tests build a pipeline (:func:`pipeline_file`, :func:`pipeline`)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import yaml

if TYPE_CHECKING:
    from ether_prep.config import Pipeline

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"
MODELS = SHARED / "models"
GRID2 = DATA / "video" / "grid_two_faces_side_by_side.mp4"  # two people side by side, one turn each

# Tests run offline, as clinical users do: no hub downloads, no usage metrics.
os.environ.setdefault("ETHER_PREP_MODELS", str(MODELS))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def pipeline_file(folder: Path, name: str = "cpu", stages: list[dict[str, Any]] | None = None,
                  **params: dict[str, Any]) -> Path:
    """A pipelines.yaml in ``folder`` holding pipeline ``name``: the shipped pipeline of that name, or ``stages``
    (entries as written in pipelines.yaml), with ``params`` (stage -> {parameter: value}) merged into the
    entries' parameters: ``pipeline_file(tmp, face={"identity": "off"})``. Loading it validates it like any
    user's file; the CLI and other processes can read it."""
    if stages is None:
        shipped = yaml.safe_load((ROOT / "pipelines.yaml").read_text(encoding="utf-8"))
        stages = shipped["pipelines"][name]["stages"]
    entries = [dict(e) for e in stages]
    unknown = set(params) - {e["stage"] for e in entries}
    assert not unknown, f"pipeline {name!r} has no stage {sorted(unknown)}"
    for entry in entries:
        if entry["stage"] in params:
            entry["params"] = {**(entry.get("params") or {}), **params[entry["stage"]]}
    # Written out in full: pipelines files refuse YAML anchors and aliases, which safe_dump emits for shared objects.
    text = yaml.dump({"version": 1, "pipelines": {name: {"stages": entries}}}, Dumper=_NoAliases, sort_keys=False)
    path = folder / f"{name}-{hashlib.sha1(text.encode()).hexdigest()[:10]}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def pipeline(name: str = "cpu", stages: list[dict[str, Any]] | None = None, **params: dict[str, Any]) -> Pipeline:
    """The validated pipeline of :func:`pipeline_file` (the shipped file itself when nothing is changed)."""
    from ether_prep.config import load_pipeline

    if stages is None and not params:
        return load_pipeline(name, ROOT / "pipelines.yaml")
    with tempfile.TemporaryDirectory() as folder:
        return load_pipeline(name, pipeline_file(Path(folder), name, stages, **params))


# The fast tier (`pytest -m "not slow and not ray"`, the way a contributor iterates) loads no model and starts no
# Ray. Tests that need Ray are marked `ray` here, from the fixture they use (test_progress asks for it by name),
# and tests that read the shared `aligned` run are marked `slow`; every other test is checked as it runs: one that
# imports a model library or Ray without being marked fails.
_HEAVY = ("torch", "ray", "mediapipe", "ctranslate2", "feat", "resemblyzer", "dlib")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        params = getattr(item, "callspec", None)
        if "ray_instance" in getattr(item, "fixturenames", ()) or (params and params.params.get("executor") == "ray"):
            item.add_marker(pytest.mark.ray)
        if "aligned" in getattr(item, "fixturenames", ()):  # the shared run of the real cpu pipeline
            item.add_marker(pytest.mark.slow)


_BEFORE = pytest.StashKey[set]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item):
    import sys

    item.stash[_BEFORE] = {m for m in _HEAVY if m in sys.modules}  # before the test's fixtures are set up
    yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    import sys

    outcome = yield
    report = outcome.get_result()
    if call.when != "teardown" or not report.passed or item.get_closest_marker("slow") or \
            item.get_closest_marker("ray"):
        return
    loaded = {m for m in _HEAVY if m in sys.modules} - item.stash.get(_BEFORE, set())
    if loaded:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid} imported {sorted(loaded)} but is not marked slow or ray: the fast tier "
                           f"(-m 'not slow and not ray') promises no model and no Ray")


@pytest.fixture(scope="session")
def aligned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """Extract then align, once, with the real cpu pipeline, over four real sessions.

    - the side-by-side clip (two faces, two speakers);
    - a GRID clip (one face, one speaker);
    - the same GRID clip with the face hidden from 1.0 to 2.0 s while he keeps talking (made here);
    - the 30 s two-party telephone call (audio only: face skipped).
    """
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
    cpu = pipeline("cpu")
    extract = run_pipeline(cpu, raw, store, family="extract")
    assert extract.ok, extract.report()
    align = run_pipeline(cpu, raw, store, family="align")
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


def audio_config(tmp: Path, block: object = 30.0, **audio: object) -> Path:
    """Pipeline ``audio``: the audio stage alone."""
    return pipeline_file(tmp, "audio", [{"stage": "audio", "params": {"sample_rate": 16000, "block_s": block,
                                                                        **audio}}])


@pytest.fixture(scope="session")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Video and audio-only recordings, nested folders, a name with spaces and non-ASCII letters,
    a truncated copy and a text file renamed .mp4."""
    raw = tmp_path_factory.mktemp("raw")
    nested = raw / "clinic Zürich" / "week 1"
    nested.mkdir(parents=True)
    shutil.copy(DATA / "video" / "bbaf2n.mpg", nested / "séance à deux.mpg")
    shutil.copy(DATA / "speech" / "jfk.flac", raw / "jfk.flac")
    shutil.copy(DATA / "speech" / "librispeech_1272-128104-0000.wav", nested / "client.wav")
    shutil.copy(DATA / "face" / "single_face.mp4", raw / "clinic Zürich" / "single_face.mp4")
    whole = (DATA / "face" / "WolfgangLanger_Pexels.mp4").read_bytes()
    (raw / "truncated.mp4").write_bytes(whole[: len(whole) // 10])
    (raw / "notes.mp4").write_text("this is a text file, not a video\n")
    (raw / "readme.txt").write_text("not a recording, ignored\n")
    return raw
