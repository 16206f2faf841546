"""Interruption: ``ether-prep run`` killed with SIGKILL at several points of a multi-session,
multi-stage run (inline and on Ray), then rerun, ends with a store equal, array for array and fingerprint for
fingerprint, to an uninterrupted run's; and at every kill point no stage was ``done`` before all its arrays
were complete (each stage marked done already equals the reference in full).

Pipeline: ``audio`` then ``face`` (MediaPipe) on three short clips (two GRID speakers, the side-by-side pair).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from ether_prep.config import load_pipeline
from ether_prep.lock import STORE_LOCK, read_holder
from ether_prep.runner import run_pipeline

from .. import trust_media as media
from ..conftest import DATA, pipeline_file

pytestmark = pytest.mark.slow

PIPELINE = [  # pipeline "af"
    {"stage": "audio", "params": {"block_s": 1}},
    {"stage": "face", "backend": "mediapipe", "model": "face_landmarker.task",
     "params": {"num_faces": 2, "min_detection_confidence": 0.3}, "resources": {"num_cpus": 1}},
]
CLIPS = {"a.mpg": DATA / "video" / "bbaf2n.mpg", "b.mpg": DATA / "video" / "lwbsza.mpg",
         "c.mp4": DATA / "video" / "grid_two_faces_side_by_side.mp4"}


# ------------------------------------------------------------------------------------------ store compare
def stage_contents(store: Path) -> dict[tuple[str, str], dict]:
    """Per (session, stage): the marker's state and fingerprint, and every array under the stage, by path."""
    root = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)
    out: dict[tuple[str, str], dict] = {}
    if "sessions" not in root:
        return out
    for sid, session in root["sessions"].groups():
        for stage, group in session.groups():
            marker = dict(group.attrs.get("stage", {}))
            arrays = {path: arr for path, arr in group.members(max_depth=None) if isinstance(arr, zarr.Array)}
            out[(sid, stage)] = {"state": marker.get("state"), "fingerprint": marker.get("fingerprint"),
                                 "arrays": arrays}
    return out


def assert_same_arrays(got: dict, want: dict, where: tuple[str, str]) -> None:
    assert sorted(got) == sorted(want), (where, sorted(got), sorted(want))
    for path, arr in want.items():
        a, b = got[path][...], arr[...]
        assert a.dtype == b.dtype and a.shape == b.shape, (where, path, a.dtype, b.dtype, a.shape, b.shape)
        if a.dtype.kind == "f":
            np.testing.assert_array_equal(a, b, err_msg=f"{where} {path}")  # NaN == NaN here
        else:
            assert (a == b).all(), (where, path)


def assert_done_stages_are_complete(store: Path, reference: Path) -> int:
    """Every stage marked done equals the reference in full (fingerprint and every array); returns how many."""
    ref = stage_contents(reference)
    done = 0
    for key, got in stage_contents(store).items():
        if got["state"] != "done":
            assert got["fingerprint"] is None, (key, got["state"])  # only done/skipped stages carry one
            continue
        assert got["fingerprint"] == ref[key]["fingerprint"], key
        assert_same_arrays(got["arrays"], ref[key]["arrays"], key)
        done += 1
    return done


def assert_stores_equal(store: Path, reference: Path) -> None:
    got, want = stage_contents(store), stage_contents(reference)
    assert sorted(got) == sorted(want)
    for key in want:
        assert (got[key]["state"], got[key]["fingerprint"]) == (want[key]["state"], want[key]["fingerprint"]), key
        assert_same_arrays(got[key]["arrays"], want[key]["arrays"], key)


# ----------------------------------------------------------------------------------------------- killing
def _markers(store: Path, stage: str = "*") -> dict[Path, tuple[int, int]]:
    """Each stage marker file of ``stage`` (every stage with ``*``) and its identity (inode, mtime in ns)."""
    found = {}
    for marker in store.glob(f"sessions/*/{stage}/zarr.json"):
        with contextlib.suppress(OSError):
            st = marker.stat()
            found[marker] = (st.st_ino, st.st_mtime_ns)
    return found


def _states(store: Path, stage: str = "*", since: dict[Path, tuple[int, int]] | None = None) -> list[str]:
    """The state in each marker of ``stage`` that can be read now; with ``since`` (a :func:`_markers` snapshot
    taken before a run started), only those written since: a killed run leaves markers behind (``running``
    ones too), and they say nothing about the run now going."""
    states = []
    for marker, identity in _markers(store, stage).items():
        if since is not None and since.get(marker) == identity:
            continue
        try:
            states.append(json.loads(marker.read_text())["attributes"]["stage"]["state"])
        except (OSError, ValueError, KeyError):
            continue
    return states


def _stage_running(store: Path, stage: str) -> bool:
    return "running" in _states(store, stage)


def _kill_inside(setup: dict, store: Path, name: str, extra: list[str], running: str = "*",
                 started: int = 1, done: bool = False) -> int:
    """Run ``ether-prep run`` on ``store`` and SIGKILL it inside a stage: once this run has started
    ``started`` stages (marked them running; they may be done since), one of stage ``running`` is marked
    running by it (and, with ``done``, some stage is done), with the run frozen and holding the store lock.
    Returns the killed run's pid."""
    before = _markers(store)

    def inside(_: int) -> bool:
        fresh = _states(store, since=before)
        return (sum(s in ("running", "done") for s in fresh) >= started
                and "running" in _states(store, running, since=before)
                and (not done or "done" in _states(store)))

    pid = media.run_and_kill(_args(setup, store, *extra), inside, what=name, store=store)
    holder = read_holder(store / STORE_LOCK)  # the killed run's lock stays behind, for the next run to take over
    assert holder is not None and holder["pid"] == pid, (name, holder, pid)
    return pid


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("interrupt")
    raw = tmp / "raw"
    raw.mkdir()
    for name, src in CLIPS.items():
        (raw / name).symlink_to(src)
    config = pipeline_file(tmp, "af", PIPELINE)
    reference = tmp / "reference.zarr"
    summary = run_pipeline(load_pipeline("af", config), raw, reference)  # uninterrupted, inline
    assert summary.ok and summary.counts() == {"done": 6}, summary.report()
    return {"raw": raw, "config": config, "reference": reference, "tmp": tmp}


def _args(setup: dict, store: Path, *extra: str) -> list[str | Path]:
    return ["run", setup["raw"], "--out", store, "-c", setup["config"], "-p", "af", "-q", *extra]


def test_sigkill_inline_at_several_points_then_rerun_equals_an_uninterrupted_run(setup: dict) -> None:
    # Every kill lands inside a stage of a live run holding the store lock (observed with the run frozen):
    # in an audio stage, in a face stage, then three times once the k-th stage that run started (k drawn at
    # random among the stages not done yet) is under way.
    store = setup["tmp"] / "inline.zarr"
    rng = np.random.default_rng(12)
    points: list[tuple[str, str, int | None]] = [("audio running", "audio", 1), ("face running", "face", 1),
                                                 *[(f"random {i}", "*", None) for i in range(3)]]
    done_at_kills = []
    killed = 0
    for name, stage, started in points:
        if started is None:
            todo = 6 - assert_done_stages_are_complete(store, setup["reference"])
            started = int(rng.integers(1, todo + 1))
            name = f"{name}: inside a stage once {started} of the {todo} stages left were started"
        killed = _kill_inside(setup, store, name, ["-x", "inline"], running=stage, started=started)
        done = assert_done_stages_are_complete(store, setup["reference"])
        done_at_kills.append((name, done))
        assert done < 6 and "running" in _states(store, stage), done_at_kills  # frozen inside it, killed there
    final = media.cli(*_args(setup, store, "-x", "inline"))
    assert final.returncode == 0, final.stdout + final.stderr
    assert f"took over the store lock left by a process that no longer runs (pid {killed}," in final.stdout
    assert_stores_equal(store, setup["reference"])


def test_sigkill_on_ray_then_rerun_equals_an_uninterrupted_run(setup: dict) -> None:
    # One kill (a Ray start costs tens of seconds on 2 cores): inside a face stage, once some stage is done
    # (stages stream on Ray: audio and face run side by side, so "after all audio" is no kill point), with
    # the driver frozen and holding the store lock.
    store = setup["tmp"] / "ray.zarr"
    killed = _kill_inside(setup, store, "face running on Ray, a stage done", ["-x", "ray", "-w", "2"],
                          running="face", done=True)
    assert 1 <= assert_done_stages_are_complete(store, setup["reference"]) < 6
    assert _stage_running(store, "face")
    final = media.cli(*_args(setup, store, "-x", "inline"))
    assert final.returncode == 0, final.stdout + final.stderr
    assert f"took over the store lock left by a process that no longer runs (pid {killed}," in final.stdout
    assert_stores_equal(store, setup["reference"])
