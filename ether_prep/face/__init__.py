"""Face measurements as plain NumPy: the schema shared by every face backend, and the pure logic that turns
raw model outputs into it (blendshapes -> AUs, AUs -> emotion prototypes, pose, mouth activity, tracking).

Nothing here imports MediaPipe, py-feat or torch; adapters do, and hand back :class:`FrameFaces`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AU_NAMES", "EMOTION_NAMES", "GAZE_NAMES", "POSE_NAMES", "FrameFaces"]

# The fixed AU list of the output schema (py-feat v2's 20 AUs); NaN columns where a backend has none.
AU_NAMES: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU11", "AU12",
    "AU14", "AU15", "AU17", "AU20", "AU23", "AU24", "AU25", "AU26", "AU28", "AU43",
)
EMOTION_NAMES: tuple[str, ...] = ("anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral")
POSE_NAMES: tuple[str, ...] = ("yaw", "pitch", "roll")
# Eye gaze, OpenFace 2's columns: per-eye unit vectors (camera frame) and the two angles in radians; see
# :mod:`ether_prep.face.gaze`.
GAZE_NAMES: tuple[str, ...] = ("gaze_0_x", "gaze_0_y", "gaze_0_z", "gaze_1_x", "gaze_1_y", "gaze_1_z",
                               "gaze_angle_x", "gaze_angle_y")


@dataclass
class FrameFaces:
    """Every face found in one frame, in the shared schema (``n`` faces; arrays float32).

    ``landmarks`` are pixel x, y and z (z NaN where a backend has none); ``pose`` is yaw, pitch, roll in
    degrees; ``mouth_open`` is lip aperture over mouth width (0 closed .. ~1 wide open); ``identity`` is the
    backend's own face-identity embedding (n, E) where it has one (py-feat's ArcFace), else None; ``gaze``
    is the backend's own gaze (n, 8) in :data:`GAZE_NAMES` order where it has one (py-feat's), else None:
    then it comes from the iris landmarks (:func:`ether_prep.face.gaze.frame_gaze`).
    """

    boxes: np.ndarray  # (n, 4) x0, y0, x1, y1
    scores: np.ndarray  # (n,)
    landmarks: np.ndarray  # (n, L, 3)
    aus: np.ndarray  # (n, 20)
    emotions: np.ndarray  # (n, 7)
    pose: np.ndarray  # (n, 3)
    mouth_open: np.ndarray  # (n,)
    identity: np.ndarray | None = None  # (n, E)
    gaze: np.ndarray | None = None  # (n, 8)

    @property
    def n(self) -> int:
        return int(self.boxes.shape[0])

    @classmethod
    def empty(cls, n_landmarks: int) -> FrameFaces:
        z = np.zeros
        return cls(z((0, 4), np.float32), z(0, np.float32), z((0, n_landmarks, 3), np.float32),
                   z((0, len(AU_NAMES)), np.float32), z((0, len(EMOTION_NAMES)), np.float32),
                   z((0, 3), np.float32), z(0, np.float32))
