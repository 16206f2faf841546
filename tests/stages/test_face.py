"""The face stage (MediaPipe and py-feat backends), its pure logic, storage, export and tracking."""

from __future__ import annotations

import csv
import dataclasses
import os
import stat
import subprocess
import sys
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zarr

from ether_prep.errors import ModelError
from ether_prep.face import AU_NAMES, EMOTION_NAMES
from ether_prep.face.features import (
    BLENDSHAPE_NAMES,
    aus_from_blendshapes,
    emotions_from_aus,
    mouth_open_from_landmarks,
    pose_from_matrices,
)
from ether_prep.face.spool import DetectionSpool
from ether_prep.face.tracking import FaceTracker
from ether_prep.records import Session
from ether_prep.sessions import probe_session
from ether_prep.stages.face import FaceStage
from ether_prep.store import SessionGroup, Store, read_table

from ..conftest import DATA, MODELS, ROOT, pipeline
from ..trust_media import cli_argv

FACE = DATA / "face"
_STAGES: dict[tuple, FaceStage] = {}


def _spec(name: str = "cpu", **params: object):
    return pipeline(name, face=params).stage("face") if params else pipeline(name).stage("face")


def run_face(path: Path, tmp_path: Path, spec=None) -> tuple[zarr.Group, str | None, SessionGroup]:
    """Run the face stage on one file into a fresh store, constructing the stage directly."""
    spec = spec or _spec()
    key = (spec.backend, spec.model, spec.params, spec.resources)
    if key not in _STAGES:  # load each configuration's model once per test session, as a worker would
        stage = FaceStage(spec)
        stage.setup()
        _STAGES[key] = stage
    stage = _STAGES[key]
    kind = "image" if path.suffix.lower() in (".jpg", ".png") else "video"
    session = probe_session(Session(id=path.stem, path=path, relpath=path.name, kind=kind))
    store = Store(tmp_path / f"{path.stem}.zarr")
    group = store.session(session.id, {"id": session.id})
    out = group.begin_stage("face", {"stage": "face"})
    note = stage.run(session, group, out)
    group.finish_stage("face", "done", "test")
    return out, note, group


def _present(out: zarr.Group) -> np.ndarray:
    box = out["box"][...]
    return ~np.isnan(box[..., 0]) if box.shape[1] else np.zeros(box.shape[:2], bool)


def _au(out: zarr.Group, name: str, track: int = 0) -> np.ndarray:
    return out["au"][:, track, list(out["au"].attrs["names"]).index(name)]


# ---------------------------------------------------------------------------------------- pure logic
def test_blendshapes_to_aus_and_emfacs_emotions() -> None:
    bs = np.zeros((3, len(BLENDSHAPE_NAMES)), np.float32)
    idx = {n: i for i, n in enumerate(BLENDSHAPE_NAMES)}
    bs[0, [idx["mouthSmileLeft"], idx["mouthSmileRight"]]] = 0.9
    bs[0, [idx["eyeSquintLeft"], idx["eyeSquintRight"]]] = 0.5
    bs[1, idx["browInnerUp"]] = 0.8
    bs[1, [idx["browDownLeft"], idx["browDownRight"]]] = 0.6
    bs[1, [idx["mouthFrownLeft"], idx["mouthFrownRight"]]] = 0.7
    aus = aus_from_blendshapes(bs, mouth_open=np.array([0.3, 0.0, 0.0]))
    names = list(AU_NAMES)
    assert aus.shape == (3, 20) and np.isnan(aus[:, names.index("AU11")]).all()
    assert aus[0, names.index("AU12")] == pytest.approx(0.9)
    assert aus[0, names.index("AU06")] == pytest.approx(0.5)  # eye squint within a smile
    assert aus[0, names.index("AU25")] == pytest.approx(1.0)  # lips apart
    emo = emotions_from_aus(aus)
    assert EMOTION_NAMES[int(np.argmax(emo[0]))] == "happiness"
    assert EMOTION_NAMES[int(np.argmax(emo[1]))] == "sadness"
    assert EMOTION_NAMES[int(np.argmax(emo[2]))] == "neutral"


def _rot(yaw_deg: float = 0, pitch_deg: float = 0, roll_deg: float = 0) -> np.ndarray:
    """A MediaPipe-style matrix for a head turned by py-feat-convention angles (see features docstring)."""
    ay, ax, az = np.radians([-yaw_deg, -pitch_deg, roll_deg])
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    m = np.eye(4)
    m[:3, :3] = 1.7 * (rz @ ry @ rx)  # with a uniform scale, as MediaPipe may give
    return m


def test_pose_from_matrix() -> None:
    pose = pose_from_matrices(np.stack([_rot(20, -10, 5), _rot(0, 0, 0)]))
    np.testing.assert_allclose(pose, [[20, -10, 5], [0, 0, 0]], atol=1e-4)
    # +pitch is "head up": the nose (canonical +z) moves up (+y) in MediaPipe's y-up space.
    nose = _rot(pitch_deg=15)[:3, :3] @ np.array([0, 0, 1.0])
    assert nose[1] > 0


def test_mouth_open_from_landmarks() -> None:
    lm = np.zeros((2, 68, 3), np.float32)
    lm[:, 60, 0], lm[:, 64, 0] = 0, 40  # mouth corners 40 px apart
    lm[0, 62, 1], lm[0, 66, 1] = 10, 10  # lips touch
    lm[1, 62, 1], lm[1, 66, 1] = 0, 36  # wide open
    np.testing.assert_allclose(mouth_open_from_landmarks(lm), [0.0, 0.9], atol=1e-6)


def test_tracker_keeps_ids_through_a_crossing_and_a_short_miss() -> None:
    rng = np.random.default_rng(0)
    a_desc = np.sqrt(rng.dirichlet(np.ones(64)))
    b_desc = np.sqrt(rng.dirichlet(np.ones(64)))
    tracker = FaceTracker(max_gap_s=0.5, min_hits=3)
    seen = {0: [], 1: []}
    for i in range(60):
        t = i / 25
        xa, xb = 50 + 8 * i, 530 - 8 * i  # A moves right, B left: they cross around frame 30
        boxes = np.array([[xa, 100, xa + 80, 180], [xb, 110, xb + 80, 190]], float)
        desc = np.stack([a_desc, b_desc])
        if 40 <= i < 45:  # B missed for 5 frames (0.2 s)
            boxes, desc = boxes[:1], desc[:1]
        order = rng.permutation(len(boxes))  # detectors return faces in no particular order
        ids = tracker.update(t, boxes[order], desc[order])
        for j, k in enumerate(order):
            seen[int(k)].append(int(ids[j]))
    assert set(seen[0]) == {0} and set(seen[1]) == {1}


def test_tracker_drops_one_frame_false_faces() -> None:
    tracker = FaceTracker(min_hits=3)
    tracker.update(0.0, np.array([[10, 10, 60, 60]]))  # a false face for one frame
    tracker.update(0.04, np.zeros((0, 4)))
    ids = [int(tracker.update(0.08 + i * 0.04, np.array([[30, 30, 90, 90]]))[0]) for i in range(5)]
    assert ids == [1] * 5 and tracker.summaries[0].n_frames == 1


def test_spool_scatters_detections_into_dense_blocks() -> None:
    """Blocks of ``rows`` frames, those without a detection left out (the array's NaN fill stands for them)."""
    with DetectionSpool({"v": ((2,), np.float32), "frame": ((), np.int64)}) as spool:
        spool.append(v=[[1, 1], [2, 2]], frame=[0, 0])
        spool.append(v=[[3, 3]], frame=[3])
        blocks = list(spool.dense_blocks("v", spool.read("frame"), np.array([1, 0, 1]), 5, 2, rows=2))
    assert [(a, b) for a, b, _ in blocks] == [(0, 2), (2, 4)]  # frames 4..5 hold no detection
    dense = np.full((5, 2, 2), np.nan, np.float32)
    for a, b, block in blocks:
        assert block.shape == (b - a, 2, 2) and block.dtype == np.float32
        dense[a:b] = block
    np.testing.assert_array_equal(dense[0], [[2, 2], [1, 1]])
    np.testing.assert_array_equal(dense[3, 1], [3, 3])
    assert np.isnan(dense[[1, 2, 4]]).all() and np.isnan(dense[3, 0]).all()


def test_spool_is_private_and_removed_on_close() -> None:
    """A spool lives in a private temporary folder of its own (0700, files 0600), gone once closed
    (leftovers of killed runs: tests/scenarios/test_isolation.py)."""
    with DetectionSpool({"v": ((), np.float32)}) as spool:
        spool.append(v=[1.0])
        assert stat.S_IMODE(spool.dir.stat().st_mode) == 0o700
        assert stat.S_IMODE((spool.dir / "v.bin").stat().st_mode) == 0o600
        np.testing.assert_array_equal(spool.read("v"), [1.0])
    assert not spool.dir.exists()


def test_config_and_help_do_not_import_face_models() -> None:
    code = ("import sys; from ether_prep.config import load_config; c = load_config(); "
            "s = c['cpu'].stage('face'); assert s.backend == 'mediapipe'; "
            "assert c['default'].stage('face').backend == 'pyfeat'; "
            "bad = [m for m in ('mediapipe', 'feat', 'torch', 'dlib') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_model_resolution_and_failed_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ether_prep.adapters import mediapipe_face

    monkeypatch.setenv("ETHER_PREP_MODELS", str(MODELS))
    assert mediapipe_face.resolve_model("face_landmarker.task")[0] == (MODELS / "face_landmarker.task").resolve()
    with pytest.raises(ModelError, match="no such file"):
        mediapipe_face.resolve_model(str(tmp_path / "missing.task"))
    # Nothing local, and the download fails: a ModelError that says how to pass a local file.
    monkeypatch.delenv("ETHER_PREP_MODELS")
    monkeypatch.setenv("ETHER_PREP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(mediapipe_face, "MODEL_URL", "http://127.0.0.1:9/face_landmarker.task")
    assert mediapipe_face.resolve_model(None, download=False) == (None, mediapipe_face.MODEL_URL)
    with pytest.raises(ModelError, match="ETHER_PREP_MODELS"):
        mediapipe_face.resolve_model(None)


# --------------------------------------------------------------------------------- MediaPipe backend
@pytest.mark.slow
def test_single_face_image_smiles(tmp_path: Path) -> None:
    out, note, _ = run_face(FACE / "single_face.jpg", tmp_path)
    assert note is None and out["au"].shape == (1, 1, 20)
    au = out["au"][0, 0]
    top3 = [AU_NAMES[i] for i in np.argsort(np.nan_to_num(au, nan=-1))[::-1][:3]]
    assert "AU12" in top3, top3  # py-feat's reference: AU12 0.99
    assert EMOTION_NAMES[int(np.nanargmax(out["emotion"][0, 0]))] == "happiness"


@pytest.mark.slow
def test_multi_face_image_with_cpu_pipeline_thresholds(tmp_path: Path) -> None:
    out, _, _ = run_face(FACE / "multi_face.jpg", tmp_path)
    assert out["box"].shape[1] >= 4  # 5 faces in the photo; MediaPipe's defaults on the whole image find 2
    boxes = out["box"][0]
    assert (boxes[:, 2] > boxes[:, 0]).all() and (boxes[:, 3] > boxes[:, 1]).all()


@pytest.mark.slow
def test_no_face_video(tmp_path: Path) -> None:
    out, note, _group = run_face(FACE / "no_face.mp4", tmp_path)
    n = out.attrs["frames_analysed"]
    assert n > 50 and out["time"].shape == (n,)
    assert out["au"].shape == (n, 0, 20) and out["landmarks"].shape == (n, 0, 478, 3)
    assert read_table(out, "tracks")["track"].size == 0
    assert note and "no face" in note and "no face" in out.attrs["note"]


# Labelled by looking at decoded frames (times from the first frame): face_noface.mov shows the face up to
# the frame at 2.367 s and an animation from 2.400 s; noface_face.mov shows the animation up to 3.930 s,
# the face from 3.945 s to 6.312 s, and a black last frame at 6.345 s.
@pytest.mark.slow
@pytest.mark.parametrize(("name", "first_face", "last_face"), [
    ("face_noface.mov", 0.0, 2.367),
    ("noface_face.mov", 3.945, 6.312),
])
def test_face_present_where_labelled_to_the_boundary_frame(tmp_path: Path, name: str, first_face: float,
                                                            last_face: float) -> None:
    out, _, _ = run_face(FACE / name, tmp_path)
    t = out["time"][...]
    expected = (t >= first_face - 1e-3) & (t <= last_face + 1e-3)
    present = _present(out).any(axis=1)
    assert out["box"].shape[1] == 1  # one person, one track
    # Exact everywhere but at the face/no-face boundaries, where a frame's detection may flip between CPU code
    # paths (MediaPipe's confidence sits near its threshold there): one analysed frame of slack on each side.
    step = float(np.median(np.diff(t)))
    wrong = np.flatnonzero(present != expected)
    near = [min(abs(t[i] - b) for b in (first_face, last_face)) <= step + 1e-3 for i in wrong]
    assert all(near), f"face presence differs away from the boundaries at {t[wrong].round(3).tolist()}"
    assert len(wrong) <= 2 and present.sum() >= expected.sum() - 2


@pytest.mark.slow
def test_opendbm_frown(tmp_path: Path) -> None:
    out, _, _ = run_face(FACE / "opendbm_subj01.mp4", tmp_path)
    assert out.attrs["frames_analysed"] == 158 and _present(out)[:, 0].all()
    au04, au12 = np.nanmean(_au(out, "AU04")), np.nanmean(_au(out, "AU12"))
    assert au04 > au12 + 0.3, (au04, au12)


@pytest.mark.slow
def test_wolfganglanger_sadness_then_laughter(tmp_path: Path) -> None:
    out, _, _ = run_face(FACE / "WolfgangLanger_Pexels.mp4", tmp_path)
    t = out["time"][...]
    sad, laugh = (t >= 6) & (t < 9), (t >= 11) & (t < 19)
    au12, au01 = _au(out, "AU12"), _au(out, "AU01")
    assert np.nanmean(au12[laugh]) - np.nanmean(au12[sad]) >= 0.4
    assert np.nanmean(au01[sad]) > np.nanmean(au01[laugh])


@pytest.mark.slow
def test_two_faces_side_by_side_keep_their_tracks(tmp_path: Path) -> None:
    out, _, _ = run_face(DATA / "video" / "grid_two_faces_side_by_side.mp4", tmp_path)
    n = out.attrs["frames_analysed"]
    assert out["box"].shape[:2] == (n, 2)
    present = _present(out)
    assert present.all()  # both faces in every frame
    centre_x = (out["box"][:, :, 0] + out["box"][:, :, 2]) / 2
    width = out.attrs["frame_width"]
    left = int(np.argmin(centre_x[0]))
    assert (centre_x[:, left] < width / 2).all() and (centre_x[:, 1 - left] > width / 2).all()  # never swapped
    tracks = read_table(out, "tracks")
    assert tracks["n_frames"].tolist() == [n, n]
    assert np.allclose(tracks["first_time"], 0) and np.allclose(tracks["last_time"], out["time"][-1])


@pytest.mark.slow
def test_schema_storage_sampling_and_csv_export(tmp_path: Path) -> None:
    from ether_prep.exports import exporter

    out, _, group = run_face(FACE / "single_face.mp4", tmp_path, _spec(analysis_fps=10.0))
    n = out.attrs["frames_analysed"]
    t = out["time"][...]
    assert out.attrs["frames_decoded"] == 72 and 22 <= n <= 26 and np.all(np.diff(t) > 0.09)
    assert out["time"].dtype == np.float64
    shapes = {"au": (n, 1, 20), "emotion": (n, 1, 7), "pose": (n, 1, 3), "box": (n, 1, 4), "score": (n, 1),
              "mouth_open": (n, 1), "landmarks": (n, 1, 478, 3)}
    for name, shape in shapes.items():
        assert out[name].shape == shape and out[name].dtype == np.float32, name
    assert list(out["au"].attrs["names"]) == list(AU_NAMES) == list(out.attrs["au_names"])
    assert list(out["emotion"].attrs["names"]) == list(EMOTION_NAMES)
    assert list(out["pose"].attrs["names"]) == ["yaw", "pitch", "roll"]
    for key in ("backend", "model", "analysis_fps", "frames_corrupt", "frame_width", "frame_height"):
        assert key in out.attrs
    # Library versions are recorded once, in the stage marker, from what the stage names.
    assert out.attrs["backend"] == "mediapipe" and "mediapipe" in FaceStage(_spec()).library_names()
    lm = out["landmarks"][:, 0]
    assert np.nanmin(lm[..., 0]) >= 0 and np.nanmax(lm[..., 0]) <= out.attrs["frame_width"]
    mouth = out["mouth_open"][:, 0]
    assert np.isfinite(mouth).all() and (mouth >= 0).all() and (mouth < 1.5).all()

    path = exporter("faces")(group, tmp_path)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == n and path.name == f"{group.id}.faces.csv"
    assert {"time", "track", "FaceRectX", "FaceScore", "x_67", "AU01", "AU43", "happiness", "Yaw", "Pitch",
            "Roll"} <= set(rows[0])
    assert float(rows[3]["time"]) == pytest.approx(t[3], abs=1e-3) and rows[0]["AU11"] == ""


@pytest.mark.slow
def test_corrupt_packets_in_the_middle_are_skipped_and_counted(tmp_path: Path) -> None:
    data = bytearray((FACE / "WolfgangLanger_Pexels.mp4").read_bytes())
    rng = np.random.default_rng(0)
    for off in range(len(data) // 2, len(data) // 2 + 60_000, 2000):
        data[off:off + 400] = rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    out, note, _ = run_face(broken, tmp_path, _spec(analysis_fps=5.0))
    assert out.attrs["frames_corrupt"] > 0 and "corrupt" in note
    assert out.attrs["frames_analysed"] > 80 and out["box"].shape[1] >= 1


@pytest.mark.slow
def test_end_to_end_through_the_runner_and_cli_export(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ether_prep.cli import app
    from ether_prep.runner import run_pipeline

    raw = tmp_path / "raw"
    raw.mkdir()
    for src in (FACE / "single_face.mp4", FACE / "no_face.mp4", DATA / "speech" / "jfk.flac"):
        os.symlink(src, raw / src.name)
    store = tmp_path / "store.zarr"
    summary = run_pipeline(pipeline("cpu"), raw, store, only=["face"])
    assert summary.ok, summary.report()
    assert summary.counts("face") == {"done": 2, "skipped": 1}  # the audio-only file has no video
    again = run_pipeline(pipeline("cpu"), raw, store, only=["face"])
    assert again.ran("face") == [] and set(again.counts("face")) == {"cached"}  # resumed, nothing redone
    dest = tmp_path / "csv"
    videos = [o.session_id for o in summary.outcomes if o.stage == "face" and o.state == "done"]
    args = ["export", "--format", "faces", "--out", str(store), str(dest)]
    result = CliRunner().invoke(app, [*args, *(x for sid in videos for x in ("--session", sid))])
    assert result.exit_code == 0, result.output
    # The audio-only session has no faces: export says so and skips it; nothing failed, so it exits 0.
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0 and "no faces to export (no video stream" in result.output
    files = sorted(p.name for p in dest.glob("*.faces.csv"))
    assert len(files) == 2 and any(f.startswith("single_face") for f in files)


# ----------------------------------------------------------------------------------- py-feat backend
@pytest.mark.slow
def test_pyfeat_backend_offline_with_random_weights(tmp_path_factory: pytest.TempPathFactory) -> None:
    """py-feat's real Detectorv2 on a real clip, with RANDOM weights generated here (no weights can be
    downloaded on this machine): THE VALUES ARE MEANINGLESS. It checks that the backend runs offline and
    stores the same schema as the mediapipe backend: shapes, dtypes, names, attrs."""
    from ..pyfeat_weights import build_random_pyfeat_v2

    weights = build_random_pyfeat_v2(tmp_path_factory.mktemp("pyfeat_random_weights"))
    # Random RetinaFace scores tie everywhere, so its one box per frame jumps about: keep one-frame tracks.
    params = {"device": "cpu", "analysis_fps": 2.5, "num_faces": 1, "threads": 2, "min_track_frames": 1,
              "batch_size": 4}
    spec = dataclasses.replace(_spec("default", **params), model=str(weights))
    out, _, _ = run_face(FACE / "single_face.mp4", tmp_path_factory.mktemp("pyfeat_store"), spec)
    n = out.attrs["frames_analysed"]
    assert 5 <= n <= 7 and out.attrs["backend"] == "pyfeat" and "py-feat" in FaceStage(spec).library_names()
    t_ = out["box"].shape[1]
    assert t_ >= 1  # the random detector returns at most one (junk) box per frame
    shapes = {"au": (n, t_, 20), "emotion": (n, t_, 7), "pose": (n, t_, 3), "box": (n, t_, 4),
              "score": (n, t_), "mouth_open": (n, t_), "landmarks": (n, t_, 68, 3)}
    for name, shape in shapes.items():
        assert out[name].shape == shape and out[name].dtype == np.float32, name
    assert list(out["au"].attrs["names"]) == list(AU_NAMES)
    present = _present(out)
    assert present.any() and present.sum(axis=1).max() == 1
    au = out["au"][...][present]
    assert np.isfinite(au).all() and ((au >= 0) & (au <= 1)).all()  # probabilities, though meaningless
    assert np.isnan(out["landmarks"][..., 2]).all()  # 68 points in 2-D
    gaze = out["gaze"][...][present]  # py-feat's own gaze: one direction per face, as OpenFace's two angles
    assert out["gaze"].shape == (n, t_, 8) and np.isnan(gaze[:, :6]).all() and np.isfinite(gaze[:, 6:]).all()
    assert read_table(out, "tracks")["n_frames"].sum() == present.sum()
    # py-feat's own ArcFace identity (512-d; meaningless here too) is what the persons come from.
    assert out.attrs["identity_model"] == "py-feat arcface" and out["identity"].shape == (t_, 512)
    assert (read_table(out, "tracks")["n_embeddings"] >= 1).all() and out["person"].shape == (t_,)
    assert out.attrs["identity_params"]["embeddings_computed"] == 0  # none computed by the stage itself


def test_the_cpu_face_model_resolves_to_the_local_file() -> None:
    # The cpu pipeline resolves its model locally (ETHER_PREP_MODELS); nothing is fetched.
    stage = FaceStage(_spec())
    info = stage.model_info()
    assert info["source"] == str((MODELS / "face_landmarker.task").resolve())
    assert not info["source"].startswith(("http", urllib.request.__name__))


@pytest.mark.slow
def test_the_cpu_face_stage_runs_with_no_network(tmp_path: Path) -> None:
    # In a network namespace with loopback alone, the face stage loads its model and finds the face.
    if subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode != 0:
        pytest.skip("unshare -n is refused on this machine: no way to run without a network here")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "single_face.jpg").symlink_to(FACE / "single_face.jpg")
    store = tmp_path / "s.zarr"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    res = subprocess.run(["unshare", "-n", *cli_argv("run", raw, "--out", store, "-p", "cpu", "--only", "face",
                                                     "-x", "inline", "-q")],
                         capture_output=True, text=True, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    out = Store(store, mode="r").session(Store(store, mode="r").session_ids()[0])
    assert out.stage_state("face").state == "done" and out.group["face"]["box"].shape[1] == 1
