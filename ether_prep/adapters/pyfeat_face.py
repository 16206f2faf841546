"""py-feat adapter: the only module that imports ``feat`` (py-feat 2.x).

``Detectorv2`` (RetinaFace -> multitask ConvNeXt: 20 AUs, 7 emotions, pose, 478 mesh -> dlib-68 landmarks;
ArcFace identity, 512-d) or ``Detectorv1`` (RetinaFace, MobileFaceNet landmarks, xgboost AUs, ResMaskNet emotions,
pose MLP) runs on batches of decoded frames.

Weights: by default py-feat downloads them from its ``py-feat/*`` Hugging Face repos into its own
``resources/`` folder (py-feat passes ``cache_dir`` itself, so ``HF_HOME`` is ignored). ``model:`` in
pipelines.yaml may instead name a local directory in the same hub-cache layout
(``models--py-feat--NAME/{refs/main,snapshots/<commit>/FILE}``, plus the files bundled in py-feat's
``resources/``); the adapter then points py-feat at it and runs with ``HF_HUB_OFFLINE=1``.

Note: ``import feat`` sets ``OMP_NUM_THREADS=1`` when unset; the adapter sets torch's thread count itself.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError, hub_unreachable, not_local

__all__ = ["PyFeatFaceDetector", "PyFeatFaces"]

_BOX = ["FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight"]
_IDENTITY = [f"Identity_{i + 1}" for i in range(512)]


@dataclass(frozen=True)
class PyFeatFaces:
    """The faces py-feat found in one frame, in py-feat's own terms (``n`` faces).

    ``columns`` holds every other per-face number py-feat reported, by its column name (``AU01``...,
    ``happiness`` or ``Happy``, ``Pitch``, ...); ``identity`` is Detectorv2's ArcFace embedding (n, 512,
    not normalised; NaN when its identity branch is off) or None when the detector has none.
    """

    boxes: np.ndarray  # (n, 4) x0, y0, x1, y1 pixels
    scores: np.ndarray  # (n,)
    landmarks: np.ndarray  # (n, 68, 2) dlib-68 layout, pixels
    columns: dict[str, np.ndarray]
    identity: np.ndarray | None


def _use_local_resources(weights_dir: Path) -> None:
    """Point every loaded py-feat module's ``get_resource_path`` at ``weights_dir`` and go offline."""
    import feat.utils.io
    import huggingface_hub.constants

    original = feat.utils.io.get_resource_path
    target = str(weights_dir)

    def get_resource_path() -> str:
        return target

    for name, module in list(sys.modules.items()):
        if (name == "feat" or name.startswith("feat.")) and getattr(module, "get_resource_path", None) is original:
            module.get_resource_path = get_resource_path
    # A local directory means "no network": huggingface_hub reads this flag per request.
    huggingface_hub.constants.HF_HUB_OFFLINE = True


class PyFeatFaceDetector:
    """A loaded py-feat detector; :meth:`detect` takes a batch of RGB frames of one size. With
    ``identity`` each face also gets py-feat's ArcFace identity embedding (``FrameFaces.identity``)."""

    def __init__(self, detector: str = "v2", device: str = "cpu", weights_dir: Path | None = None,
                 face_detection_threshold: float = 0.5, max_faces: int | None = None, threads: int = 0,
                 identity: bool = True) -> None:
        if weights_dir is not None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import feat
            import feat.detector
            import feat.detector_v2
            import torch
        except ImportError as exc:
            raise ModelError(f"py-feat is not importable ({exc}); reinstall ether-prep's environment") from exc
        # feat sets OMP_NUM_THREADS=1 on import; decide torch's threads explicitly instead.
        torch.set_num_threads(threads if threads > 0 else max(1, os.cpu_count() or 1))
        self._torch = torch
        if weights_dir is not None:
            if not weights_dir.is_dir():
                raise ModelError(f"{weights_dir}: py-feat weights directory not found; 'model:' of the face "
                                 f"stage must name a folder in Hugging Face hub-cache layout")
            _use_local_resources(weights_dir)
        self.detector_name = detector
        self.threshold = face_detection_threshold
        where = str(weights_dir) if weights_dir is not None else "py-feat's Hugging Face repos"
        try:
            # ArcFace identity (512-d) only when asked for: it is a ResNet-50 on every face.
            identity_model = "arcface" if identity else None
            if detector == "v2":
                self._det = feat.Detectorv2(device=device, face_detection_threshold=face_detection_threshold,
                                            identity_model=identity_model)
            else:
                self._det = feat.Detectorv1(device=device, identity_model=identity_model)
        except Exception as exc:  # hub, safetensors, torch errors: all mean "cannot load the model"
            if hub_unreachable(exc):
                raise ModelError(f"face: {not_local(f'py-feat Detector{detector} weights', exc)}") from exc
            raise ModelError(f"py-feat Detector{detector} cannot be loaded from {where} ({type(exc).__name__}: "
                             f"{exc}); online, py-feat downloads its weights; offline, set 'model:' of the face "
                             f"stage to a local folder of py-feat weights in hub-cache layout") from exc
        face_det = getattr(self._det, "face_detector", None)
        if max_faces is not None and hasattr(face_det, "keep_top_k"):
            face_det.keep_top_k = max_faces
        self.device = str(getattr(self._det, "device", device))
        self.memory_gib: float | None = None  # the CUDA device's memory (batch size per device)
        if self.device.startswith("cuda") and torch.cuda.is_available():
            self.memory_gib = torch.cuda.get_device_properties(torch.device(self.device)).total_memory / 2**30

    @property
    def info(self) -> dict[str, Any]:
        return {k: str(v) for k, v in dict(getattr(self._det, "info", {})).items()}

    def detect(self, frames: list[np.ndarray]) -> list[PyFeatFaces]:
        """Faces per frame for a batch of (H, W, 3) uint8 RGB frames."""
        return self.split(self.infer(frames), len(frames))

    def split(self, fex: Any, n_frames: int) -> list[PyFeatFaces]:
        """:meth:`infer`'s table of a batch of ``n_frames`` frames, per frame (CPU work: pandas to arrays)."""
        return [] if fex is None else _split_fex(fex, n_frames)

    def infer(self, frames: list[np.ndarray]) -> Any:
        """py-feat's Fex table (one row per face) for a batch of (H, W, 3) uint8 RGB frames; None when empty.
        The model part: the frames go to the device here, and py-feat builds its table."""
        if not frames:
            return None
        batch = self._torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous()
        try:
            fex = self._det.detect(batch, data_type="tensor", batch_size=len(frames), progress_bar=False,
                                   face_detection_threshold=self.threshold)
        except Exception as exc:
            raise ModelError(f"py-feat Detector{self.detector_name} failed on a batch of {len(frames)} frames "
                             f"({type(exc).__name__}: {exc})") from exc
        return fex


def _split_fex(fex: Any, n_frames: int) -> list[PyFeatFaces]:
    """A py-feat Fex (one row per face, a NaN placeholder row for a frame without faces) -> per-frame faces."""
    names = set(fex.columns)
    frame = fex["frame"].to_numpy().astype(np.int64)
    box_xywh = fex[_BOX].to_numpy(np.float32)
    keep = ~np.isnan(box_xywh).any(axis=1)
    boxes = np.column_stack([box_xywh[:, 0], box_xywh[:, 1], box_xywh[:, 0] + box_xywh[:, 2],
                             box_xywh[:, 1] + box_xywh[:, 3]]).astype(np.float32)
    scores = fex["FaceScore"].to_numpy(np.float32)
    landmarks = np.stack([fex[[f"x_{i}" for i in range(68)]].to_numpy(np.float32),
                          fex[[f"y_{i}" for i in range(68)]].to_numpy(np.float32)], axis=-1)
    skip = {*_BOX, "FaceScore", "frame", *_IDENTITY}
    numeric = {c: fex[c].to_numpy(np.float32) for c in fex.columns if isinstance(c, str) and c not in skip
               and not c.startswith(("x_", "y_", "mesh_")) and fex[c].dtype.kind in "fiu"}
    # Detectorv2's identity branch (ArcFace, 512-d, not normalised); all NaN when it is switched off.
    identity = fex[_IDENTITY].to_numpy(np.float32) if set(_IDENTITY) <= names else None
    out: list[PyFeatFaces] = []
    for i in range(n_frames):
        sel = np.flatnonzero((frame == i) & keep)
        out.append(PyFeatFaces(boxes[sel], scores[sel], landmarks[sel], {c: v[sel] for c, v in numeric.items()},
                               None if identity is None else identity[sel]))
    return out
