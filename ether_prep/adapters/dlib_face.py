"""dlib adapter: face identity embeddings. The only module that imports ``dlib`` or reads
``face_recognition_models``.

dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1``, 128-d; two faces of the same
person are usually closer than 0.6 in Euclidean distance) runs on a face chip aligned with dlib's 5-point
shape predictor, placed in the detector's box. Both model files ship inside the ``face-recognition-models``
wheel; ``dlib-bin`` is a prebuilt dlib. Nothing is downloaded.

The package's ``__init__`` imports ``pkg_resources`` (deprecated, absent without setuptools), so the model
folder is located with :func:`importlib.util.find_spec`, which does not execute it.

Cost: about 75 ms per face on one CPU core (dlib-bin is built without BLAS), so callers embed a sample
of detections, not every one.
"""

from __future__ import annotations

import importlib.util
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError

__all__ = ["DIM", "MODEL_ID", "DlibFaceEmbedder", "model_files"]

MODEL_ID = "dlib_face_recognition_resnet_model_v1"
DIM = 128
_PACKAGE = "face_recognition_models"
_SHAPE_FILE = "shape_predictor_5_face_landmarks.dat"
_RESNET_FILE = f"{MODEL_ID}.dat"
_FIX = "install ether-prep's environment with `uv sync` (it ships dlib-bin and face-recognition-models)"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "unknown"


def model_files() -> tuple[Path, Path]:
    """The 5-point shape predictor and ResNet descriptor files inside ``face_recognition_models``."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the identity model package {_PACKAGE!r} is not installed; {_FIX}")
    folder = Path(next(iter(spec.submodule_search_locations))) / "models"
    files = (folder / _SHAPE_FILE, folder / _RESNET_FILE)
    missing = [f.name for f in files if not f.is_file()]
    if missing:
        raise ModelError(f"{folder}: {', '.join(missing)} missing from the {_PACKAGE} package; reinstall it: {_FIX}")
    return files


class DlibFaceEmbedder:
    """dlib's 5-point aligner and ResNet descriptor, loaded once; :meth:`embed` gives 128-d vectors."""

    dim = DIM
    model_id = MODEL_ID

    def __init__(self) -> None:
        shape_file, resnet_file = model_files()
        try:
            import dlib
        except ImportError as exc:
            raise ModelError(f"dlib is not importable ({exc}); {_FIX}") from exc
        self._dlib = dlib
        try:
            self._shape = dlib.shape_predictor(str(shape_file))
            self._resnet = dlib.face_recognition_model_v1(str(resnet_file))
        except RuntimeError as exc:  # dlib's deserialisation errors
            raise ModelError(f"dlib cannot load {shape_file.parent} ({exc}); the files are damaged: "
                             f"reinstall face-recognition-models ({_FIX})") from exc

    @property
    def info(self) -> dict[str, Any]:
        """Provenance: model id, files, library versions."""
        return {"model": MODEL_ID, "aligner": _SHAPE_FILE, "dim": DIM, "metric": "euclidean",
                "same_person_below": 0.6, "dlib": _version("dlib-bin"),
                "face_recognition_models": _version("face-recognition-models")}

    def embed(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """(n, 128) float32 descriptors of the faces in ``boxes`` ((n, 4) x0, y0, x1, y1 pixels) of an
        (H, W, 3) uint8 RGB frame."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        out = np.zeros((len(boxes), DIM), dtype=np.float32)
        h, w = rgb.shape[:2]
        for i, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
            # dlib wants a contiguous image: copy only the face and a margin (the chip's padding), not
            # the whole frame.
            mx, my = 0.5 * (x1 - x0), 0.5 * (y1 - y0)
            cx0, cy0 = int(max(0, x0 - mx)), int(max(0, y0 - my))
            cx1, cy1 = int(min(w, x1 + mx + 1)), int(min(h, y1 + my + 1))
            crop = np.ascontiguousarray(rgb[cy0:cy1, cx0:cx1], dtype=np.uint8)
            rect = self._dlib.rectangle(round(x0 - cx0), round(y0 - cy0), round(x1 - cx0), round(y1 - cy0))
            shape = self._shape(crop, rect)
            out[i] = np.asarray(self._resnet.compute_face_descriptor(crop, shape, 0), dtype=np.float32)
        return out
