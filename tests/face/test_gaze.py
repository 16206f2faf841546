"""Eye gaze from the iris landmarks: its geometry, and its sign on a real face that looks one way, then (the same
frames mirrored) the other."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from ether_prep.face import GAZE_NAMES
from ether_prep.face.features import pose_from_matrices
from ether_prep.face.gaze import gaze_from_angles, gaze_from_landmarks, head_rotation, pyfeat_gaze

from ..conftest import DATA
from ..stages.test_face import _rot, _spec, run_face

_AX, _AY = GAZE_NAMES.index("gaze_angle_x"), GAZE_NAMES.index("gaze_angle_y")


def test_head_rotation_is_the_pose_matrix_in_openface_axes() -> None:
    """The rotation rebuilt from the stored yaw/pitch/roll is MediaPipe's matrix with y and z flipped; a head
    turned to the person's right (+yaw) faces the image's left (-x), a head raised (+pitch) faces up (-y)."""
    mats = np.stack([_rot(20, -10, 5), _rot(-35, 12, -8)])
    rot = head_rotation(pose_from_matrices(mats))
    flip = np.diag([1.0, -1.0, -1.0])
    expected = flip @ (mats[:, :3, :3] / 1.7) @ flip
    np.testing.assert_allclose(rot, expected, atol=1e-5)
    forward = np.array([0.0, 0.0, -1.0])  # the face's forward direction in OpenFace's camera frame
    assert (head_rotation(np.array([[30.0, 0, 0]])) @ forward)[0, 0] < 0
    assert (head_rotation(np.array([[0, 20.0, 0]])) @ forward)[0, 1] < 0


def test_py_feat_angles_convert_both_ways() -> None:
    """py-feat's pitch/yaw become OpenFace's angles (yaw to the person's right is gaze_angle_x < 0, pitch up is
    gaze_angle_y < 0) and back; a layout without irises (dlib 68) has no gaze."""
    pitch, yaw = np.array([0.2, -0.1, 0.0]), np.array([0.3, 0.0, -0.25])
    g = gaze_from_angles(pitch, yaw)
    assert g.shape == (3, 8) and np.isnan(g[:, :6]).all()
    assert g[0, _AX] < 0 and g[0, _AY] < 0 and g[1, _AY] > 0 and g[2, _AX] > 0
    np.testing.assert_allclose(pyfeat_gaze(g[:, 6:])[:, :2], np.stack([pitch, yaw], 1), atol=1e-6)
    assert np.isnan(gaze_from_landmarks(np.zeros((2, 68, 3)), np.zeros((2, 3)))).all()


@pytest.fixture(scope="module")
def left_then_right(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The face stage on py-feat's single-face clip (72 frames, the person's eyes turned a little towards the
    image's left) followed by the same 72 frames mirrored (ffmpeg hflip): the same gaze, the other way."""
    tmp = tmp_path_factory.mktemp("gaze")
    clip = tmp / "left_then_right.mp4"
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(DATA / "face" / "single_face.mp4"), "-filter_complex",
                    "[0:v]split[a][b];[b]hflip[m];[a][m]concat=n=2:v=1:a=0[v]", "-map", "[v]", "-an",
                    "-c:v", "libx264", "-crf", "12", str(clip)], check=True)
    out, _, group = run_face(clip, tmp, _spec(identity="off"))
    return {"out": out, "group": group, "tmp": tmp}


@pytest.mark.slow
def test_horizontal_gaze_changes_sign_with_the_mirrored_frames(left_then_right: dict[str, object]) -> None:
    out = left_then_right["out"]
    gaze = out["gaze"][...]
    assert list(out["gaze"].attrs["names"]) == list(GAZE_NAMES) and gaze.dtype == np.float32
    n = gaze.shape[0]
    assert n == 144 and gaze.shape[2] == 8
    # One face per frame, a track per half (the mirror is a cut): each frame's face, wherever its column.
    seen = np.isfinite(gaze)
    per_frame = np.where(seen.any(axis=1), np.where(seen, gaze, 0).sum(axis=1) / np.maximum(seen.sum(axis=1), 1),
                         np.nan)
    x, y = per_frame[:, _AX], per_frame[:, _AY]
    first, mirrored = x[:72], x[72:]
    assert np.isfinite(first).mean() > 0.9 and np.isfinite(mirrored).mean() > 0.9
    assert np.nanmedian(first) < -0.03 and np.nanmedian(mirrored) > 0.03  # looks left, then right
    both = np.isfinite(first) & np.isfinite(mirrored) & (np.abs(first) > 0.02)
    assert both.sum() > 40 and (np.sign(first[both]) != np.sign(mirrored[both])).mean() > 0.9
    # Mirroring leaves the vertical gaze where it was.
    assert np.nanmedian(np.abs(y[:72] - y[72:])) < 0.05
    # Per-eye unit vectors; eye 0 (the leftmost in the image) is the other eye in the mirror.
    vec = gaze[..., :6].reshape(n, -1, 2, 3)
    norms = np.linalg.norm(vec, axis=-1)
    assert np.allclose(norms[np.isfinite(norms)], 1.0, atol=1e-5)


@pytest.mark.slow
def test_gaze_goes_into_both_csv_exports(left_then_right: dict[str, object]) -> None:
    """py-feat reads the gaze of our openface CSV (read_openface, Fex.gazes) and of our faces CSV (read_feat,
    py-feat's own gaze_pitch/gaze_yaw/gaze_angle), with the signs of each."""
    from feat.utils.io import read_feat, read_openface

    from ether_prep.exports.faces import write_faces_csv, write_openface_csv

    group, tmp = left_then_right["group"], Path(left_then_right["tmp"])
    openface = read_openface(str(write_openface_csv(group, tmp)))
    gazes = openface.gazes  # py-feat registers OpenFace's per-eye vectors; the angles are columns beside them
    assert list(gazes.columns) == list(GAZE_NAMES[:6]) and len(gazes) == 144
    x = openface["gaze_angle_x"].to_numpy()
    assert np.nanmedian(x[:72]) < 0 < np.nanmedian(x[72:]) and np.isfinite(x).mean() > 0.9
    # py-feat's read_feat registers gaze columns (Fex.gazes) only for Detectorv2 files; ours has py-feat's
    # Detectorv1 layout, so they are plain columns, under py-feat's names.
    feat = read_feat(str(write_faces_csv(group, tmp)))
    yaw = feat["gaze_yaw"].to_numpy()  # py-feat's sign: + towards the person's right, the image's left
    assert np.nanmedian(yaw[:72]) > 0 > np.nanmedian(yaw[72:]) and np.isfinite(yaw).mean() > 0.9
    assert (feat["gaze_angle"].dropna() >= 0).all() and feat["gaze_pitch"].notna().mean() > 0.9
