"""Pure functions from raw face-model outputs to the shared schema.

Action units from MediaPipe blendshapes
---------------------------------------
MediaPipe's Face Landmarker scores 52 ARKit-style blendshapes in [0, 1]. They are *blendshape-derived AU
scores, not FACS-coded intensities*: the network was trained to drive a 3-D avatar, not on FACS-coded
video, so treat them as monotone proxies (0 = absent, 1 = strongest) and compare them within a recording
rather than against FACS A-E levels. Left/right pairs are averaged. The mapping:

======  ==========================  ======================================================================
AU      FACS name                   blendshape(s)
======  ==========================  ======================================================================
AU01    inner brow raiser           browInnerUp
AU02    outer brow raiser           browOuterUp{Left,Right}
AU04    brow lowerer                browDown{Left,Right}
AU05    upper lid raiser            eyeWide{Left,Right}
AU06    cheek raiser                max(cheekSquint, min(eyeSquint, mouthSmile)) - cheekSquint alone stays
                                    near 0 on real video, and a cheek raise shows as eye narrowing in a smile
AU07    lid tightener               eyeSquint{Left,Right}
AU09    nose wrinkler               noseSneer{Left,Right}
AU10    upper lip raiser            mouthUpperUp{Left,Right}
AU11    nasolabial deepener         (none: NaN)
AU12    lip corner puller           mouthSmile{Left,Right}
AU14    dimpler                     mouthDimple{Left,Right}
AU15    lip corner depressor        mouthFrown{Left,Right}
AU17    chin raiser                 mouthShrugLower
AU20    lip stretcher               mouthStretch{Left,Right}
AU23    lip tightener               mouthPucker (closest ARKit shape; also fires for AU18 pucker)
AU24    lip pressor                 mouthPress{Left,Right}
AU25    lips part                   lip aperture from the landmarks: min(1, 4 * gap / mouth width)
                                    (1 - mouthClose stays near 1 throughout, useless)
AU26    jaw drop                    jawOpen
AU28    lip suck                    mouthRoll{Lower,Upper}
AU43    eyes closed                 eyeBlink{Left,Right}
======  ==========================  ======================================================================

Emotions from AU prototypes (EMFACS-style)
------------------------------------------
Emotion scores are *prototype match scores*, not classifier probabilities: each emotion's score is the mean
of its EMFACS-7 prototype AUs (Friesen & Ekman 1983; the common "core" combinations), ``neutral`` is one
minus the strongest of the others. Scores are in [0, 1] and do not sum to 1.

=========  ===========================
emotion    prototype AUs
=========  ===========================
anger      4, 5, 7, 23
disgust    9, 10, 15
fear       1, 2, 4, 5, 7, 20, 26
happiness  6, 12
sadness    1, 4, 15
surprise   1, 2, 5, 26
=========  ===========================

Head pose
---------
From MediaPipe's facial transformation matrix (canonical face -> camera; x right, y up, z towards the
camera), decomposed as R = Rz(roll) Ry(yaw) Rx(pitch), in degrees, with py-feat's sign convention:
+pitch = head up, +yaw = turn to the subject's right, +roll = tilt to the subject's right.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import AU_NAMES, EMOTION_NAMES, GAZE_NAMES, POSE_NAMES

__all__ = [
    "BLENDSHAPE_NAMES",
    "DLIB68_FROM_MP478",
    "EMFACS_PROTOTYPES",
    "aus_from_blendshapes",
    "boxes_from_landmarks",
    "emotions_from_aus",
    "mouth_open_from_landmarks",
    "pose_from_matrices",
    "step_feature_names",
    "step_features",
]

# MediaPipe Face Landmarker's 52 blendshape categories, in its output order.
BLENDSHAPE_NAMES: tuple[str, ...] = (
    "_neutral", "browDownLeft", "browDownRight", "browInnerUp", "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight", "eyeBlinkLeft", "eyeBlinkRight", "eyeLookDownLeft",
    "eyeLookDownRight", "eyeLookInLeft", "eyeLookInRight", "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight", "eyeSquintLeft", "eyeSquintRight", "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight", "mouthClose", "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight", "mouthFunnel", "mouthLeft", "mouthLowerDownLeft",
    "mouthLowerDownRight", "mouthPressLeft", "mouthPressRight", "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper", "mouthShrugLower", "mouthShrugUpper", "mouthSmileLeft",
    "mouthSmileRight", "mouthStretchLeft", "mouthStretchRight", "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)
_BS = {name: i for i, name in enumerate(BLENDSHAPE_NAMES)}

# AU -> blendshapes averaged (AU06 and AU25 are computed specially, AU11 has none).
_AU_FROM_BS: dict[str, tuple[str, ...]] = {
    "AU01": ("browInnerUp",),
    "AU02": ("browOuterUpLeft", "browOuterUpRight"),
    "AU04": ("browDownLeft", "browDownRight"),
    "AU05": ("eyeWideLeft", "eyeWideRight"),
    "AU07": ("eyeSquintLeft", "eyeSquintRight"),
    "AU09": ("noseSneerLeft", "noseSneerRight"),
    "AU10": ("mouthUpperUpLeft", "mouthUpperUpRight"),
    "AU12": ("mouthSmileLeft", "mouthSmileRight"),
    "AU14": ("mouthDimpleLeft", "mouthDimpleRight"),
    "AU15": ("mouthFrownLeft", "mouthFrownRight"),
    "AU17": ("mouthShrugLower",),
    "AU20": ("mouthStretchLeft", "mouthStretchRight"),
    "AU23": ("mouthPucker",),
    "AU24": ("mouthPressLeft", "mouthPressRight"),
    "AU26": ("jawOpen",),
    "AU28": ("mouthRollLower", "mouthRollUpper"),
    "AU43": ("eyeBlinkLeft", "eyeBlinkRight"),
}

EMFACS_PROTOTYPES: dict[str, tuple[str, ...]] = {
    "anger": ("AU04", "AU05", "AU07", "AU23"),
    "disgust": ("AU09", "AU10", "AU15"),
    "fear": ("AU01", "AU02", "AU04", "AU05", "AU07", "AU20", "AU26"),
    "happiness": ("AU06", "AU12"),
    "sadness": ("AU01", "AU04", "AU15"),
    "surprise": ("AU01", "AU02", "AU05", "AU26"),
}

_AU = {name: i for i, name in enumerate(AU_NAMES)}


def _mean_of(bs: np.ndarray, names: tuple[str, ...]) -> np.ndarray:
    return bs[:, [_BS[n] for n in names]].mean(axis=1)


def aus_from_blendshapes(blendshapes: np.ndarray, mouth_open: np.ndarray | None = None) -> np.ndarray:
    """(n, 52) MediaPipe blendshape scores -> (n, 20) AU scores in :data:`AU_NAMES` order (see the table).

    ``mouth_open`` (lip aperture / mouth width, from :func:`mouth_open_from_landmarks`) gives AU25; without
    it AU25 is NaN.
    """
    bs = np.asarray(blendshapes, dtype=np.float32).reshape(-1, len(BLENDSHAPE_NAMES))
    out = np.full((bs.shape[0], len(AU_NAMES)), np.nan, dtype=np.float32)
    for au, names in _AU_FROM_BS.items():
        out[:, _AU[au]] = _mean_of(bs, names)
    cheek = _mean_of(bs, ("cheekSquintLeft", "cheekSquintRight"))
    out[:, _AU["AU06"]] = np.maximum(cheek, np.minimum(out[:, _AU["AU07"]], out[:, _AU["AU12"]]))
    if mouth_open is not None:
        out[:, _AU["AU25"]] = np.clip(4.0 * np.asarray(mouth_open, dtype=np.float32), 0.0, 1.0)
    return out


def emotions_from_aus(aus: np.ndarray) -> np.ndarray:
    """(n, 20) AU scores -> (n, 7) EMFACS prototype scores in :data:`EMOTION_NAMES` order (NaN AUs ignored)."""
    aus = np.asarray(aus, dtype=np.float32).reshape(-1, len(AU_NAMES))
    out = np.full((aus.shape[0], len(EMOTION_NAMES)), np.nan, dtype=np.float32)
    if not aus.shape[0]:
        return out
    for j, emotion in enumerate(EMOTION_NAMES[:-1]):
        cols = aus[:, [_AU[a] for a in EMFACS_PROTOTYPES[emotion]]]
        valid = ~np.isnan(cols)
        n = valid.sum(axis=1)
        out[:, j] = np.where(n > 0, np.where(valid, cols, 0.0).sum(axis=1) / np.maximum(n, 1), np.nan)
    strongest = np.nanmax(np.where(np.isnan(out[:, :-1]), -np.inf, out[:, :-1]), axis=1)
    out[:, -1] = np.clip(1.0 - strongest, 0.0, 1.0)
    return out


def pose_from_matrices(matrices: np.ndarray) -> np.ndarray:
    """(n, 4, 4) MediaPipe facial transformation matrices -> (n, 3) yaw, pitch, roll in degrees.

    Signs follow py-feat: +pitch = head up, +yaw = turn to the subject's right, +roll = tilt to the
    subject's right (see the module docstring).
    """
    m = np.asarray(matrices, dtype=np.float64).reshape(-1, 4, 4)
    r = m[:, :3, :3]
    # The matrix may carry a uniform scale (face size); normalise the columns to get a rotation.
    r = r / np.maximum(np.linalg.norm(r, axis=1, keepdims=True), 1e-9)
    about_x = np.arctan2(r[:, 2, 1], r[:, 2, 2])
    about_y = np.arcsin(np.clip(-r[:, 2, 0], -1.0, 1.0))
    about_z = np.arctan2(r[:, 1, 0], r[:, 0, 0])
    # +about_x moves the nose down (y up), +about_y moves it to image-right (the subject's left).
    return np.degrees(np.stack([-about_y, -about_x, about_z], axis=1)).astype(np.float32)


# The MediaPipe mesh point at each of dlib's 68 landmarks (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47,
# lips 48-67): the correspondence py-feat uses (feat.utils.blendshape_to_au, MIT licence), so 68-point tools
# (OpenFace and py-feat readers) can use MediaPipe faces.
DLIB68_FROM_MP478: tuple[int, ...] = (
    127, 234, 93, 132, 58, 172, 136, 150, 176, 148, 152, 377, 400, 379, 365, 397, 356,
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,
    168, 6, 195, 4, 240, 75, 1, 305, 460,
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181, 78, 82, 13, 312, 308, 317, 14, 87,
)

# (upper inner lip, lower inner lip, left corner, right corner) landmark indices per layout.
_MOUTH_POINTS = {478: (13, 14, 78, 308), 468: (13, 14, 78, 308), 68: (62, 66, 60, 64)}


def mouth_open_from_landmarks(landmarks: np.ndarray) -> np.ndarray:
    """(n, L, 2+) landmarks (MediaPipe 478/468 mesh or dlib 68) -> (n,) lip aperture / mouth width.

    0 when the lips touch, about 0.3 while speaking, about 1 wide open (a yawn or a laugh); NaN if the
    layout is unknown.
    """
    lm = np.asarray(landmarks, dtype=np.float32)
    if lm.ndim != 3 or lm.shape[1] not in _MOUTH_POINTS:
        return np.full(lm.shape[0] if lm.ndim else 0, np.nan, dtype=np.float32)
    up, lo, left, right = _MOUTH_POINTS[lm.shape[1]]
    gap = np.linalg.norm(lm[:, up, :2] - lm[:, lo, :2], axis=1)
    width = np.linalg.norm(lm[:, left, :2] - lm[:, right, :2], axis=1)
    return np.clip(gap / np.maximum(width, 1e-6), 0.0, 1.5).astype(np.float32)


def boxes_from_landmarks(landmarks: np.ndarray, width: int, height: int) -> np.ndarray:
    """(n, L, 2+) pixel landmarks -> (n, 4) x0, y0, x1, y1 boxes (the landmarks' extent, clipped to the frame)."""
    lm = np.asarray(landmarks, dtype=np.float32)
    if not lm.shape[0]:
        return np.zeros((0, 4), dtype=np.float32)
    x, y = lm[:, :, 0], lm[:, :, 1]
    boxes = np.stack([x.min(axis=1), y.min(axis=1), x.max(axis=1), y.max(axis=1)], axis=1)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, height)
    return boxes.astype(np.float32)


# The face stage's values that go into the per-step feature vector of the utterance tensors (the one place that
# says which and in what order): AUs, emotions, head pose, mouth opening, the two gaze angles.
_STEP_GAZE = (GAZE_NAMES.index("gaze_angle_x"), GAZE_NAMES.index("gaze_angle_y"))


def step_feature_names(au_names: Sequence[str], emotion_names: Sequence[str]) -> list[str]:
    """Column names of :func:`step_features`' last axis."""
    return [*au_names, *emotion_names, *POSE_NAMES, "mouth_open", *(GAZE_NAMES[i] for i in _STEP_GAZE)]


def step_features(au: np.ndarray, emotion: np.ndarray, pose: np.ndarray, mouth_open: np.ndarray,
                  gaze: np.ndarray) -> np.ndarray:
    """The face stage's (..., A), (..., E), (..., 3), (...), (..., 8) arrays -> (..., D) float64 per-step features
    in :func:`step_feature_names` order."""
    return np.concatenate([au, emotion, pose, mouth_open[..., None], gaze[..., list(_STEP_GAZE)]],
                          axis=-1).astype(np.float64)
