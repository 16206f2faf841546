"""The face stage with decoding, the model and the post-processing overlapped in three threads stores the same
arrays, value for value, and the same attrs (timings aside) as the loop in which the model and the
post-processing take turns, on the reference clips (CPU, the cpu pipeline's MediaPipe + dlib identity)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from ether_prep.records import Session
from ether_prep.sessions import probe_session
from ether_prep.stages.face import FaceStage
from ether_prep.store import Store

from ..conftest import DATA, GRID2, pipeline

pytestmark = pytest.mark.slow

# Timings and start times differ from run to run; everything else must not.
_TIMING = {"fps_analysed", "embedding_seconds", "stage"}  # "stage": when it began


def _run(stage: FaceStage, path: Path, store: Path) -> zarr.Group:
    kind = "image" if path.suffix == ".jpg" else "video"
    session = probe_session(Session(id=path.stem, path=path, relpath=path.name, kind=kind))
    group = Store(store).session(session.id, {"id": session.id})
    out = group.begin_stage("face", {"stage": "face"})
    stage.run(session, group, out)
    return out


def _attrs(group: zarr.Group) -> dict:
    attrs = dict(group.attrs)
    attrs["identity_params"] = {k: v for k, v in attrs["identity_params"].items() if k not in _TIMING}
    return {k: v for k, v in attrs.items() if k not in _TIMING}


@pytest.mark.parametrize(("clip", "params"), [
    (GRID2, {}),  # two faces side by side, every frame
    (DATA / "face" / "WolfgangLanger_Pexels.mp4", {"analysis_fps": 10.0}),  # one face, crying then laughing
    (DATA / "face" / "multi_face.jpg", {}),  # a still: five faces, searched whole and in tiles
])
def test_overlapped_stage_stores_what_the_turn_taking_loop_stores(clip: Path, params: dict, tmp_path: Path) -> None:
    spec = pipeline("cpu", face=params).stage("face") if params else pipeline("cpu").stage("face")
    stage = FaceStage(spec)
    stage.setup()
    stage.overlap = False
    before = _run(stage, clip, tmp_path / "turns.zarr")
    stage.overlap = True
    after = _run(stage, clip, tmp_path / "overlap.zarr")
    names = sorted(name for name, _ in before.arrays())
    assert names == sorted(name for name, _ in after.arrays()) and "au" in names and "tracks" in before
    for name in names:
        a, b = before[name][...], after[name][...]
        assert a.dtype == b.dtype and a.shape == b.shape, name
        np.testing.assert_array_equal(a, b, err_msg=name)  # NaN where NaN, every value equal
    for name, table in before["tracks"].arrays():
        np.testing.assert_array_equal(table[...], after["tracks"][name][...], err_msg=f"tracks/{name}")
    assert _attrs(before) == _attrs(after)
    assert before.attrs["frames_analysed"] > 0 and before["box"].shape[1] >= 1
