"""Face backends: one interface, chosen once from the config, that turns decoded frames into
:class:`~ether_prep.face.FrameFaces` (the shared schema), plus the identity embedders.

- :class:`FaceBackend` is loaded once per worker (``FaceBackend.load``); :meth:`FaceBackend.open` gives a
  :class:`FaceDetector` for one recording (MediaPipe's VIDEO mode keeps tracking state per recording), whose
  :meth:`~FaceDetector.detect` takes a batch of frames of one size.
- ``mediapipe``: the Face Landmarker's landmarks, blendshapes and transformation matrices, converted by
  :mod:`ether_prep.face.features` (blendshape-derived AUs, EMFACS emotion scores, head pose, mouth opening).
- ``pyfeat``: py-feat's own AUs, emotions, pose and gaze, on batches; its ArcFace identity when asked for.
- :class:`Embedder`: a face-identity embedding per detection, ``dlib`` (dlib's ResNet descriptor, any
  backend) or ``pyfeat`` (the ArcFace embedding py-feat computed with the AUs).

The adapters (:mod:`ether_prep.adapters.mediapipe_face`, :mod:`~ether_prep.adapters.pyfeat_face`,
:mod:`~ether_prep.adapters.dlib_face`) return each library's raw outputs; the conversion to the schema is here.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import numpy as np

from ..boxes import iou
from ..contracts import FaceModelParams
from . import AU_NAMES, EMOTION_NAMES, FrameFaces
from .features import (
    aus_from_blendshapes,
    boxes_from_landmarks,
    emotions_from_aus,
    mouth_open_from_landmarks,
    pose_from_matrices,
)
from .gaze import gaze_from_angles

if TYPE_CHECKING:
    from ..adapters.pyav import VideoFrame
    from ..adapters.pyfeat_face import PyFeatFaces

__all__ = ["BACKENDS", "EMBEDDERS", "Embedder", "FaceBackend", "FaceDetector", "MediaPipeBackend", "PyFeatBackend",
           "auto_batch_size"]


class FaceDetector(AbstractContextManager["FaceDetector"], ABC):
    """Faces of one recording, a batch of frames at a time (``batch_size`` frames of one size), in two parts
    the face stage runs in different threads: :meth:`infer` (the model; on a GPU its calls leave the GIL free)
    and :meth:`convert` (the CPU post-processing of its raw output into the shared schema)."""

    batch_size: int = 1

    @abstractmethod
    def infer(self, frames: Sequence[VideoFrame]) -> Any:
        """The model's raw output for a batch (called for the batches of one recording in order, one thread)."""

    @abstractmethod
    def convert(self, frames: Sequence[VideoFrame], raw: Any) -> list[FrameFaces]:
        """One :class:`FrameFaces` per frame of ``frames``, in their order, from :meth:`infer`'s output."""

    def detect(self, frames: Sequence[VideoFrame]) -> list[FrameFaces]:
        """One :class:`FrameFaces` per frame, in the frames' order (both parts in this thread)."""
        return self.convert(frames, self.infer(frames))

    def close(self) -> None:
        """Release what the recording held."""

    def __exit__(self, *exc: object) -> None:
        self.close()


class FaceBackend(ABC):
    """A face model family, loaded once per worker (:meth:`load`); describes itself without loading."""

    name: ClassVar[str]
    n_landmarks: ClassVar[int]
    libraries: ClassVar[tuple[str, ...]]
    cuda_engines: ClassVar[tuple[str, ...]] = ()  # engines whose CUDA libraries it loads on a GPU
    # What the stored values are, written with them (attrs ``au_kind``, ``emotion_kind``, ``score_kind``).
    kinds: ClassVar[dict[str, str]]

    def __init__(self, model: str | None, params: FaceModelParams) -> None:
        self.model = model
        self.params = params

    @classmethod
    @abstractmethod
    def describe(cls, model: str | None, params: FaceModelParams) -> dict[str, str]:
        """``{"id": ..., "source": ...}`` of the model this backend resolves to, without loading it."""

    @classmethod
    def frames_per_batch(cls, params: FaceModelParams) -> int:
        """How many frames its detectors take at once (time windows of a video start on whole batches)."""
        return 1

    @abstractmethod
    def load(self, threads: int) -> None:
        """Load the model (once per worker)."""

    @abstractmethod
    def open(self, still: bool) -> FaceDetector:
        """A detector for one recording (``still``: a single image)."""

    @property
    def info(self) -> dict[str, Any]:
        """Provenance of the loaded model, stored with the outputs."""
        return {}


# ------------------------------------------------------------------------------------------- mediapipe
class MediaPipeBackend(FaceBackend):
    """MediaPipe Face Landmarker (478 landmarks, 52 blendshapes, transformation matrices), offline."""

    name = "mediapipe"
    n_landmarks = 478
    libraries = ("av", "mediapipe", "scipy")
    kinds: ClassVar[dict[str, str]] = {
        "au_kind": "blendshape-derived scores (MediaPipe), not FACS-coded intensities",
        "emotion_kind": "EMFACS prototype match scores from the AUs, not probabilities",
        "score_kind": "1.0 = passed the configured confidences (MediaPipe exposes no score)",
        "gaze_kind": "iris landmarks and head pose, geometric, not calibrated per person (ether_prep.face.gaze)",
    }

    @classmethod
    def describe(cls, model: str | None, params: FaceModelParams) -> dict[str, str]:
        from ..adapters.mediapipe_face import resolve_model

        path, source = resolve_model(model, download=False)
        return {"id": Path(model or "face_landmarker.task").name, "source": str(path) if path else source}

    def load(self, threads: int) -> None:
        from ..adapters.mediapipe_face import read_model, resolve_model

        self._path, _ = resolve_model(self.model, download=True)
        self._bytes = read_model(self._path)

    def open(self, still: bool) -> FaceDetector:
        from ..adapters.mediapipe_face import MediaPipeFaceLandmarker

        p = self.params
        return _MediaPipeDetector(MediaPipeFaceLandmarker(
            self._bytes, str(self._path), still=still, num_faces=p.num_faces,
            min_detection_confidence=p.min_detection_confidence, min_presence_confidence=p.min_presence_confidence,
            min_tracking_confidence=p.min_tracking_confidence), tiles=p.still_tiles if still else 1)


_NO_FACES = (np.zeros((0, 478, 3), np.float32), np.zeros((0, 52), np.float32), np.zeros((0, 4, 4), np.float32))


class _MediaPipeDetector(FaceDetector):
    def __init__(self, landmarker: Any, tiles: int = 1) -> None:
        self._landmarker = landmarker
        self._tiles = tiles

    def _tiled(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """A still, whole and in an overlapping n x n grid of tiles, merged.

        The face detector sees its input at 128 x 128 pixels, so faces in a group photo are too small to be
        found in the whole image; in a tile they are n times larger. A face found twice (IoU > 0.3 of the
        landmark boxes) is kept once, preferring the whole-image detection.
        """
        h, w = rgb.shape[:2]
        n = self._tiles
        tw, th = min(w, w / n * 1.25), min(h, h / n * 1.25)
        regions = [(0, 0, w, h)]
        for i in range(n):
            for j in range(n):
                x0 = int(min(max(0.0, (j + 0.5) * w / n - tw / 2), w - tw))
                y0 = int(min(max(0.0, (i + 0.5) * h / n - th / 2), h - th))
                regions.append((x0, y0, int(x0 + tw), int(y0 + th)))
        lms, blends, mats, boxes = [], [], [], []
        for x0, y0, x1, y1 in regions:
            lm, blend, mat = self._landmarker.detect(rgb[y0:y1, x0:x1], 0.0)
            # Tile-normalised -> whole-image-normalised (z scales with the width, like x).
            lm[:, :, 0] = (lm[:, :, 0] * (x1 - x0) + x0) / w
            lm[:, :, 1] = (lm[:, :, 1] * (y1 - y0) + y0) / h
            lm[:, :, 2] *= (x1 - x0) / w
            for k in range(len(lm)):
                box = np.array([lm[k, :, 0].min() * w, lm[k, :, 1].min() * h, lm[k, :, 0].max() * w,
                                lm[k, :, 1].max() * h])
                if any(iou(box, b) > 0.3 for b in boxes):
                    continue
                boxes.append(box)
                lms.append(lm[k])
                blends.append(blend[k])
                mats.append(mat[k])
        return (np.stack(lms), np.stack(blends), np.stack(mats)) if lms else _NO_FACES

    def infer(self, frames: Sequence[VideoFrame]) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        return [self._tiled(frame.rgb) if self._tiles > 1 else self._landmarker.detect(frame.rgb, frame.time)
                for frame in frames]

    def convert(self, frames: Sequence[VideoFrame], raw: Any) -> list[FrameFaces]:
        out = []
        for frame, (lm, blend, mats) in zip(frames, raw, strict=True):
            h, w = frame.rgb.shape[:2]
            lm *= np.array([w, h, w], dtype=np.float32)  # z is in the scale of x
            mouth = mouth_open_from_landmarks(lm)
            aus = aus_from_blendshapes(blend, mouth)
            out.append(FrameFaces(boxes_from_landmarks(lm, w, h), np.ones(len(lm), np.float32), lm, aus,
                                  emotions_from_aus(aus), pose_from_matrices(mats), mouth))
        return out

    def close(self) -> None:
        self._landmarker.close()


# ---------------------------------------------------------------------------------------------- py-feat
# py-feat emotion column names (v1: lower-case words; v2: capitalised short forms) -> ours.
_EMOTION_ALIASES = {"happy": "happiness", "sad": "sadness", "angry": "anger", "disgusted": "disgust",
                    "fearful": "fear", "surprised": "surprise"}


class PyFeatBackend(FaceBackend):
    """py-feat Detectorv2 (or v1): its own AU probabilities, emotions, pose; batches of frames."""

    name = "pyfeat"
    n_landmarks = 68
    libraries = ("av", "py-feat", "torch", "scipy")
    cuda_engines = ("torch",)
    kinds: ClassVar[dict[str, str]] = {"au_kind": "py-feat AU probabilities",
                                       "emotion_kind": "py-feat emotion probabilities",
                                       "gaze_kind": "py-feat's own gaze model, one direction per face (angles only)"}

    @classmethod
    def describe(cls, model: str | None, params: FaceModelParams) -> dict[str, str]:
        source = str(Path(model).expanduser()) if model else "huggingface:py-feat/*"
        return {"id": f"py-feat Detector{params.detector}", "source": source}

    @classmethod
    def frames_per_batch(cls, params: FaceModelParams) -> int:
        # batch_size 0 (per device): windows start on multiples of the largest choice, which every choice divides.
        return params.batch_size if params.batch_size > 0 else max(_AUTO_BATCH.values())

    def load(self, threads: int) -> None:
        from ..adapters.pyfeat_face import PyFeatFaceDetector

        p = self.params
        self._detector = PyFeatFaceDetector(
            detector=p.detector, device=p.device, weights_dir=Path(self.model).expanduser() if self.model else None,
            face_detection_threshold=p.min_detection_confidence, max_faces=p.num_faces,
            threads=p.threads or threads or (os.cpu_count() or 1), identity=p.identity == "pyfeat")

        self._batch = self.params.batch_size or auto_batch_size(self._detector.device, self._detector.memory_gib)

    @property
    def info(self) -> dict[str, Any]:
        return {"detector": self._detector.info, "batch_size": self._batch}

    def open(self, still: bool) -> FaceDetector:
        return _PyFeatDetector(self._detector, self._batch)


class _PyFeatDetector(FaceDetector):
    def __init__(self, detector: Any, batch_size: int) -> None:
        self._detector = detector
        self.batch_size = max(1, batch_size)

    def infer(self, frames: Sequence[VideoFrame]) -> Any:
        return self._detector.infer([f.rgb for f in frames])

    def convert(self, frames: Sequence[VideoFrame], raw: Any) -> list[FrameFaces]:
        return [_from_pyfeat(f) for f in self._detector.split(raw, len(frames))]


def _from_pyfeat(faces: PyFeatFaces) -> FrameFaces:
    """py-feat's faces in the shared schema (AUs and emotions py-feat lacks are NaN; z is NaN)."""
    n = len(faces.boxes)
    cols = faces.columns
    lm = np.full((n, 68, 3), np.nan, dtype=np.float32)
    lm[:, :, :2] = faces.landmarks
    aus = np.full((n, len(AU_NAMES)), np.nan, dtype=np.float32)
    for j, au in enumerate(AU_NAMES):
        if au in cols:
            aus[:, j] = cols[au]
    emotions = np.full((n, len(EMOTION_NAMES)), np.nan, dtype=np.float32)
    by_name = {_EMOTION_ALIASES.get(c.lower(), c.lower()): c for c in cols}
    for j, emo in enumerate(EMOTION_NAMES):
        if emo in by_name:
            emotions[:, j] = cols[by_name[emo]]
    pose = np.full((n, 3), np.nan, dtype=np.float32)
    for j, name in enumerate(("Yaw", "Pitch", "Roll")):
        if name in cols:
            pose[:, j] = cols[name]
    # py-feat's own gaze (one direction per face; its 68 points have no irises): OpenFace's angles.
    gaze = (gaze_from_angles(cols["gaze_pitch"], cols["gaze_yaw"]) if "gaze_pitch" in cols and "gaze_yaw" in cols
            else None)
    return FrameFaces(faces.boxes, faces.scores, lm, aus, emotions, pose, mouth_open_from_landmarks(lm),
                      faces.identity, gaze)


# py-feat frames per model call by device memory (GiB, at least): a 640x360 frame through Detectorv2 is small next
# to its models, so the batch grows with the card; CPUs gain little from batching. Until bench/bench_gpu.py has
# measured cards, these are a starting point (README, GPU machines).
_AUTO_BATCH = {0.0: 8, 11.0: 16, 22.0: 32, 44.0: 64}  # a "24 GB" card reports ~23.6 GiB


def auto_batch_size(device: str, memory_gib: float | None) -> int:
    """py-feat's batch size for ``batch_size: 0``: 8 on a CPU (or MPS), by the GPU's memory on CUDA."""
    if not device.startswith("cuda") or memory_gib is None:
        return _AUTO_BATCH[0.0]
    return max(size for gib, size in _AUTO_BATCH.items() if memory_gib >= gib)


BACKENDS: dict[str, type[FaceBackend]] = {"mediapipe": MediaPipeBackend, "pyfeat": PyFeatBackend}


# -------------------------------------------------------------------------------------------- identity
class Embedder(Protocol):
    """A face-identity embedding for some of one frame's detections."""

    model_id: str
    libraries: tuple[str, ...]
    dim: int | None  # None: known at the first face (a backend's own embedding)
    threshold: float  # same person below this Euclidean distance of L2-normalised embeddings
    needs_frame: bool  # False: the embedding comes with the detections (``embed`` gets no frame)

    def embed(self, frame: VideoFrame | None, faces: FrameFaces, which: np.ndarray) -> np.ndarray | None:
        """(k, E) embeddings of ``faces`` rows ``which`` (bool mask); None when the frame has none."""

    @property
    def info(self) -> dict[str, Any]: ...


class DlibEmbedder:
    """dlib's ResNet face descriptor (128-d), computed on the frame; works with any face backend."""

    libraries = ("dlib-bin", "face-recognition-models")
    dim: int | None = 128
    # Measured on the shared media (Euclidean, L2-normalised): one sample to its track's mean <= 0.34
    # through crying and laughter (WolfgangLanger), the same GRID speaker's tracks in different shots ~0.1
    # apart; different people >= 0.47 sample to sample, ~0.6 track to track. dlib's own "same person
    # below 0.6" on raw descriptors (norm ~1.44) is ~0.42 here.
    threshold = 0.42
    needs_frame = True

    def __init__(self) -> None:
        from ..adapters.dlib_face import MODEL_ID, DlibFaceEmbedder

        self._model = DlibFaceEmbedder()
        self.model_id = f"{MODEL_ID} (package face_recognition_models)"

    @classmethod
    def describe(cls) -> str:
        from ..adapters.dlib_face import MODEL_ID

        return f"{MODEL_ID} (package face_recognition_models)"

    @property
    def info(self) -> dict[str, Any]:
        return {"model": self._model.info}

    def embed(self, frame: VideoFrame | None, faces: FrameFaces, which: np.ndarray) -> np.ndarray | None:
        assert frame is not None
        return self._model.embed(frame.rgb, faces.boxes[which])


class PyFeatEmbedder:
    """The ArcFace embedding (512-d) py-feat computed with the AUs: free, but only with the pyfeat backend."""

    libraries: tuple[str, ...] = ()
    model_id = "py-feat arcface"
    dim: int | None = None
    # Cosine 0.5 between L2-normalised vectors; not calibrated here (no ArcFace weights load offline).
    threshold = 1.0
    needs_frame = False

    @classmethod
    def describe(cls) -> str:
        return cls.model_id

    @property
    def info(self) -> dict[str, Any]:
        return {}

    def embed(self, frame: VideoFrame | None, faces: FrameFaces, which: np.ndarray) -> np.ndarray | None:
        return None if faces.identity is None else faces.identity[which]


EMBEDDERS: dict[str, type[DlibEmbedder] | type[PyFeatEmbedder]] = {"dlib": DlibEmbedder, "pyfeat": PyFeatEmbedder}
