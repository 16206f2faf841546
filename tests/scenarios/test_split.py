"""One long video computed as time windows (the face stage's ``resources.window_s``): windows spread over 2
Ray actors, or run one after another inline, give the same face arrays, tracks and persons as the whole video
in one task; no analysed frame is lost or doubled at a window edge. Windows lost with their worker are
retried; a window that fails fails its session."""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import zarr

from ether_prep.adapters.pyav import iter_video_frames, plan_video_frames
from ether_prep.config import load_pipeline
from ether_prep.runner import run_pipeline
from ether_prep.sessions import session_id
from ether_prep.store import Store

from .. import trust_media as media
from ..conftest import DATA
from ..media import GRID_A, GRID_B, edited_dialogue
from ..ray_helpers import comparable_attrs, registered_test_stages, store_digest

pytestmark = pytest.mark.slow

WINDOW_S = 5.0
# Whole 3 s GRID shots and half shots, A and B alternating: 21 s, 9 cuts; window edges (~5, 10, 15, 20 s) fall
# inside shots, so tracks and identity samples run across them.
TURNS = ((GRID_A, 0, 75), (GRID_B, 0, 75), (GRID_A, 0, 75), (GRID_B, 0, 38), (GRID_A, 38, 75), (GRID_B, 0, 75),
         (GRID_A, 0, 38), (GRID_B, 38, 75), (GRID_A, 0, 75))
# Attributes that say how the work was cut, not what came out (the marker: the resources asked for).
_HOW = {"windows", "stage"}


def _config(tmp: Path, window_s: float | None) -> Path:
    path = tmp / f"face_{window_s}.yaml"
    path.write_text(f"""version: 1
pipelines:
  face:
    stages:
      - stage: face
        backend: mediapipe
        model: face_landmarker.task
        params: {{min_detection_confidence: 0.3, identity: dlib, identity_every_s: 1.0}}
        resources: {{num_cpus: 1, window_s: {'null' if window_s is None else window_s}}}
""")
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> dict:
    """The video, and its face stage three ways: whole (inline), windows inline, windows on 2 Ray actors."""
    tmp = tmp_path_factory.mktemp("split")
    raw = tmp / "raw"
    raw.mkdir()
    video = edited_dialogue(raw / "long_dialogue.mp4", TURNS)
    out = {"video": video, "tmp": tmp}
    for name, window_s, executor in (("whole", None, "inline"), ("inline", WINDOW_S, "inline"),
                                     ("ray", WINDOW_S, "ray")):
        if executor == "ray":
            request.getfixturevalue("ray_instance")
        store = tmp / f"{name}.zarr"
        summary = run_pipeline(load_pipeline("face", _config(tmp, window_s)), raw, store, executor=executor)
        assert summary.ok, summary.report()
        out[name] = Store(store, mode="r")
        out[f"{name}_summary"] = summary
    return out


def _face(store: Store) -> zarr.Group:
    (sid,) = store.session_ids()
    return store.session(sid).stage_group("face")


def _assert_same_faces(a: zarr.Group, b: zarr.Group) -> int:
    """Every array, table column and attribute of two face groups equal (NaN equals NaN); returns how many
    arrays were compared."""
    arrays_a, arrays_b = dict(a.arrays()), dict(b.arrays())
    assert sorted(arrays_a) == sorted(arrays_b)
    for name, arr in arrays_a.items():
        x, y = np.asarray(arr[...]), np.asarray(arrays_b[name][...])
        assert x.shape == y.shape and x.dtype == y.dtype, name
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    n = len(arrays_a)
    assert sorted(dict(a.groups())) == sorted(dict(b.groups()))
    for name, sub in a.groups():
        n += _assert_same_faces(sub, b[name])
    attrs_a, attrs_b = ({k: v for k, v in comparable_attrs(dict(g.attrs)).items() if k not in _HOW} for g in (a, b))
    assert attrs_a == attrs_b
    return n


def test_windows_cover_every_frame_once(runs: dict) -> None:
    path = runs["video"]["path"]
    full = [f.time for f in iter_video_frames(path)]
    windows = dict(_face(runs["inline"]).attrs)["windows"]
    assert windows["used"] and windows["count"] == 5
    plan = plan_video_frames(path)
    assert plan is not None and np.array_equal(plan.time, full)
    edges = [*windows["first_frames"], len(full)]
    assert edges[0] == 0 and all(a < b for a, b in itertools.pairwise(edges))
    # Each window starts at the first frame at or after its k * window_s: frames per window ~ 5 s x 25 fps.
    assert [full[e] for e in edges[1:-1]] == pytest.approx([5.0, 10.0, 15.0, 20.0], abs=0.041)
    face = _face(runs["ray"])
    times = np.asarray(face["time"][...])
    assert np.array_equal(times, full)  # no frame lost or doubled at any edge
    assert face.attrs["frames_analysed"] == face.attrs["frames_decoded"] == len(full)


def test_windows_on_two_ray_actors_equal_one_task(runs: dict) -> None:
    n = _assert_same_faces(_face(runs["ray"]), _face(runs["whole"]))
    assert n >= 12
    ray_windows = dict(_face(runs["ray"]).attrs)["windows"]
    pids = {w["pid"] for w in ray_windows["workers"]}
    if len(pids) < 2:
        # Which actor takes a window is Ray's choice: on a loaded machine the first can finish all five before
        # the second has loaded its model. Then the equality above held within one actor only: say so.
        pytest.skip(f"all {len(ray_windows['workers'])} windows ran on one actor (pid {pids.pop()}): the machine "
                    "was too busy for the second to start in time; rerun on a quieter machine")


def test_windows_inline_equal_whole(runs: dict) -> None:
    _assert_same_faces(_face(runs["inline"]), _face(runs["whole"]))
    face = _face(runs["whole"])
    tracks = {k: np.asarray(face["tracks"][k][...]) for k in ("first_time", "last_time", "person", "shot")}
    video = runs["video"]
    # Tracks cross the window edges (continuous), persons are the two speakers, one track per shot.
    assert any(s < e < t for e in (5.0, 10.0, 15.0, 20.0) for s, t in zip(tracks["first_time"], tracks["last_time"],
                                                                         strict=True))
    assert face.attrs["n_shots"] == len(video["cut_times"]) + 1
    assert face.attrs["n_persons"] == 2
    assert [int(p) for p in tracks["person"]] == [t["person"] for t in video["turns"]]
    assert "parts" not in Store(runs["tmp"] / "ray.zarr").root  # scratch windows removed


def test_a_video_whose_frames_do_not_decode_as_planned_is_computed_whole(runs: dict, tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A plan that the decoded frames contradict (here: one planned timestamp moved) is never trusted: the
    windows say so and the join computes the recording whole, with the same result and a note."""
    from ether_prep.adapters import pyav

    real = pyav.plan_video_frames

    def wrong_plan(path: Path, analysis_fps: float | None = None) -> pyav.FramePlan | None:
        plan = real(path, analysis_fps)
        assert plan is not None
        pts = plan.pts.copy()
        pts[300] += 1  # a frame in window 3 that will not decode at that time
        return pyav.FramePlan(plan.time_base, pts, plan.kept, plan.time, plan.keyframes)

    monkeypatch.setattr(pyav, "plan_video_frames", wrong_plan)
    store = tmp_path / "whole.zarr"
    summary = run_pipeline(load_pipeline("face", _config(runs["tmp"], WINDOW_S)), runs["tmp"] / "raw", store,
                           executor="inline")
    assert summary.ok, summary.report()
    face = _face(Store(store, mode="r"))
    windows = dict(face.attrs)["windows"]
    assert not windows["used"] and "not among the decoded frames" in windows["why"]
    assert "computed whole, not in 5 windows" in face.attrs["stage"]["note"]
    _assert_same_faces(face, _face(runs["whole"]))


def test_no_plan_without_packet_timestamps_and_a_wrong_plan_raises(runs: dict) -> None:
    from ether_prep.adapters.pyav import FramePlan, PlanMismatch, iter_planned_frames

    assert plan_video_frames(GRID_A) is None  # MPEG-PS packets without timestamps: computed whole
    path = runs["video"]["path"]
    plan = plan_video_frames(path, analysis_fps=5.0)
    assert plan is not None
    full = list(iter_video_frames(path, analysis_fps=5.0))
    got = [f for a, b in ((0, 40), (40, 41), (41, len(plan.kept))) for f in iter_planned_frames(path, plan, a, b)]
    assert [(f.index, f.time) for f in got] == [(f.index, f.time) for f in full]
    assert all(np.array_equal(f.rgb, g.rgb) for f, g in zip(full, got, strict=True))
    pts = plan.pts.copy()
    pts[plan.kept[50]] -= 1
    with pytest.raises(PlanMismatch, match="not among the decoded frames"):
        list(iter_planned_frames(path, FramePlan(plan.time_base, pts, plan.kept, plan.time, plan.keyframes), 45, 60))


@pytest.fixture()
def window_nap() -> Iterator[None]:
    with registered_test_stages():
        yield


def test_a_lost_window_is_retried_and_a_failed_window_fails_its_session(ray_instance, window_nap: None,
                                                                        tmp_path: Path) -> None:
    """Windows on Ray: the worker computing one window of a.flac dies (its window goes to another worker, the
    session completes); window 2 of bad.flac fails in the stage (not retried: the session fails, saying which
    window). The store equals the same windows computed inline."""
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("a.flac", "b.flac", "bad.flac"):
        shutil.copy(DATA / "speech" / "jfk.flac", raw / name)  # 11 s: windows [0, 4), [4, 8), [8, 11)
    config = tmp_path / "nap.yaml"
    config.write_text("""version: 1
pipelines:
  nap:
    stages:
      - stage: audio
        resources: {num_cpus: 1}
      - stage: window_nap
        params: {seconds_per_session: 1.5}
        resources: {num_cpus: 1, window_s: 4}
""")
    reference = run_pipeline(load_pipeline("nap", config), raw, tmp_path / "inline.zarr", executor="inline")
    assert reference.counts("window_nap") == {"done": 2, "failed": 1}
    Path(f"{raw / 'a.flac'}.crash").touch()
    store = tmp_path / "ray.zarr"
    summary = run_pipeline(load_pipeline("nap", config), raw, store, executor="ray")
    nap = {o.session_id: o for o in summary.outcomes if o.stage == "window_nap"}
    a, b, bad = (nap[session_id(n)] for n in ("a.flac", "b.flac", "bad.flac"))
    assert a.state == "done" and a.retries == 1 and b.state == "done" and b.retries == 0
    assert bad.state == "failed" and bad.retries == 0
    assert bad.message.startswith("window 2 of 3: ") and "refused by the nap stage" in bad.message
    assert "RETRIED" in summary.report()
    assert store_digest(store) == store_digest(tmp_path / "inline.zarr")
    a_nap = Store(store, mode="r").session(session_id("a.flac")).stage_group("window_nap")
    assert a_nap["rms"].shape == (11,)  # every second once, in order
    assert a_nap.attrs["stage_states"] == ["running"] * 3  # `status` says running while windows compute
    assert "parts" not in Store(store, mode="r").root


@pytest.mark.parametrize("kind", ["rotated", "variable_frame_rate", "truncated"])
def test_plans_of_odd_videos(kind: str, tmp_path: Path) -> None:
    """A phone video stored sideways and a variable-frame-rate one plan to exactly the frames, times and
    (upright) pixels a full decode gives, window by window; a file cut off is not planned (computed whole, it
    fails with the reason)."""
    from ether_prep.adapters.pyav import iter_planned_frames

    from .. import trust_media

    path = tmp_path / f"{kind}.mp4"
    if kind == "variable_frame_rate":
        trust_media.variable_frame_rate(path)
    else:
        getattr(trust_media, f"{kind}_mp4" if kind == "truncated" else kind)(path, tmp_path)
    if kind == "truncated":
        assert plan_video_frames(path) is None
        return
    for fps in (None, 5.0):
        plan = plan_video_frames(path, fps)
        full = list(iter_video_frames(path, fps))
        assert plan is not None and np.array_equal(plan.time, [f.time for f in full])
        edges = [0, len(full) // 3, 2 * len(full) // 3, len(full)]
        got = [f for a, b in itertools.pairwise(edges) for f in iter_planned_frames(path, plan, a, b)]
        assert [(f.index, f.time) for f in got] == [(f.index, f.time) for f in full]
        assert all(np.array_equal(f.rgb, g.rgb) for f, g in zip(full, got, strict=True))


def _windows_done(store: Path) -> int:
    """Windows of ``face`` whose group says it is whole (the ``window`` attribute, written last)."""
    n = 0
    for marker in store.glob("parts/*/face/*/zarr.json"):
        try:
            n += "window" in json.loads(marker.read_text())["attributes"]
        except (OSError, ValueError, KeyError):
            continue
    return n


def test_windows_computed_before_a_kill_are_kept_by_the_next_run(runs: dict, tmp_path: Path) -> None:
    """SIGKILL once two windows are whole: the next run computes only the others, and the face arrays equal
    the whole video's; the scratch windows are gone after the join."""
    store = tmp_path / "killed.zarr"
    config = _config(runs["tmp"], WINDOW_S)
    raw = runs["tmp"] / "raw"
    media.run_and_kill(["run", raw, "--out", store, "-c", config, "-p", "face", "-q", "-x", "inline"],
                       lambda _: _windows_done(store) >= 2)
    kept = _windows_done(store)
    assert 2 <= kept < 5
    summary = run_pipeline(load_pipeline("face", config), raw, store, executor="inline")
    assert summary.ok, summary.report()
    assert f"face: {kept} of 5 windows kept from an interrupted run" in "\n".join(summary.notes)
    face = _face(Store(store, mode="r"))
    assert len({w["pid"] for w in face.attrs["windows"]["workers"]}) == 2  # the killed run's and this one's
    _assert_same_faces(face, _face(runs["whole"]))
    assert "parts" not in Store(store).root
