"""MediaPipe Face Landmarker adapter: the only module that imports ``mediapipe``.

The Face Landmarker bundle (``face_landmarker.task``: BlazeFace detector, 478-point mesh, 52 blendshapes)
runs in VIDEO mode on a recording's frames (its own landmark tracking between frames, monotonically
increasing millisecond timestamps) and in IMAGE mode on a still. Where the model comes from, in order:

1. ``model:`` in pipelines.yaml, when it is a path to an existing file (``~`` expanded);
2. ``$ETHER_PREP_MODELS/<name>`` (``<name>`` is ``model:`` or ``face_landmarker.task``);
3. the download cache ``$ETHER_PREP_CACHE`` (default ``~/.cache/ether-prep``) ``/models/<name>``;
4. a download of Google's published bundle into that cache, when online: one process downloads while the
   others wait on a lock file beside it, and the download is used only if its sha256 is the published one.

``mediapipe`` is imported when a landmarker is built, so resolving the model (for provenance) is cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError, LockError, ModelError
from ..lock import FileLock

__all__ = ["DEFAULT_MODEL", "MODEL_SHA256", "MODEL_URL", "MediaPipeFaceLandmarker", "read_model", "resolve_model"]

DEFAULT_MODEL = "face_landmarker.task"
MODEL_URL = ("https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/"
             "face_landmarker.task")
# sha256 of that published bundle (the same file as ../shared/models/face_landmarker.task): a download that
# differs is refused.
MODEL_SHA256 = "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff"
_DOWNLOAD_WAIT_S = 600.0  # how long a worker waits for another one's download of the same bundle


def _cache_dir() -> Path:
    root = os.environ.get("ETHER_PREP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "ether-prep")
    return Path(root) / "models"


def resolve_model(model: str | None, download: bool = True) -> tuple[Path | None, str]:
    """Find the Face Landmarker bundle: returns ``(path or None, source)`` without loading it.

    With ``download=False`` a model that is not on disk yet resolves to ``(None, MODEL_URL)``.
    Raises :class:`ModelError` when ``model`` names a missing file or the download fails.
    """
    name = model or DEFAULT_MODEL
    given = Path(name).expanduser()
    if given.is_file():
        return given.resolve(), "path"
    if model and (given.is_absolute() or len(given.parts) > 1):
        raise ModelError(f"face model {model!r}: no such file; set 'model:' of the face stage in pipelines.yaml "
                         f"to the path of a MediaPipe face_landmarker.task bundle")
    models_dir = os.environ.get("ETHER_PREP_MODELS")
    if models_dir and (Path(models_dir) / name).is_file():
        return (Path(models_dir) / name).resolve(), "ETHER_PREP_MODELS"
    cached = _cache_dir() / name
    if cached.is_file():
        return cached, "cache"
    if name != DEFAULT_MODEL:
        raise ModelError(f"face model {name!r} not found in $ETHER_PREP_MODELS ({models_dir or 'unset'}) or "
                         f"{cached.parent}; give 'model:' as a path to the .task file")
    if not download:
        return None, MODEL_URL
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(f"{cached.parent}: cannot create the model cache ({exc.strerror}); set ETHER_PREP_CACHE "
                         f"to a writable folder, or ETHER_PREP_MODELS to a folder holding {DEFAULT_MODEL}") from exc
    # Workers of one host (Ray actors, several runs) share the cache: one downloads, the others wait for it.
    return _download(cached), MODEL_URL


def _download(cached: Path) -> Path:
    """Download the bundle into ``cached`` under a lock file, verifying its sha256 before it is used."""
    lock = FileLock(cached.with_name(cached.name + ".lock"), purpose=f"the download of {cached.name}")
    try:
        lock.acquire(wait=_DOWNLOAD_WAIT_S)
    except LockError as exc:
        raise ModelError(f"{exc}; it has been downloading for over {_DOWNLOAD_WAIT_S:.0f} s") from exc
    try:
        if cached.is_file():  # another process finished the download while this one waited
            return cached
        tmp = cached.with_name(f"{cached.name}.{os.getpid()}.part")
        digest = hashlib.sha256()
        try:
            with urllib.request.urlopen(MODEL_URL, timeout=60) as resp, open(tmp, "wb") as fh:
                while block := resp.read(1 << 20):
                    digest.update(block)
                    fh.write(block)
            if digest.hexdigest() != MODEL_SHA256:
                raise ModelError(f"the face model downloaded from {MODEL_URL} has sha256 {digest.hexdigest()}, not "
                                 f"the published {MODEL_SHA256}: it was damaged or altered on the way, so it is not "
                                 f"used; try again, or fetch it elsewhere and set ETHER_PREP_MODELS to its folder")
            tmp.replace(cached)
        except OSError as exc:
            raise ModelError(
                f"cannot download the MediaPipe face model from {MODEL_URL} ({exc}); offline, download "
                f"face_landmarker.task elsewhere and either set ETHER_PREP_MODELS to its folder or give its path "
                f"as 'model:' of the face stage in pipelines.yaml") from exc
        finally:
            tmp.unlink(missing_ok=True)
        return cached
    finally:
        lock.release()


@contextlib.contextmanager
def _native_stderr_captured() -> Iterator[Callable[[], str]]:
    """File descriptor 2 sent to a scratch file while MediaPipe builds its graph: its C++ code (glog, TFLite)
    writes there directly, five lines per landmarker ("Logging before InitGoogle()", "XNNPACK delegate",
    "inference_feedback_manager"), ignoring ``GLOG_minloglevel`` in mediapipe 1.2, and the lines tear progress
    bars. Yields a function returning what was written (for an error message). At DEBUG nothing is redirected."""
    if os.environ.get("ETHER_PREP_LOG_LEVEL", "WARNING").upper() == "DEBUG":
        yield lambda: ""
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        try:
            yield lambda: (sink.seek(0), sink.read().decode("utf-8", "replace"))[1]
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


class MediaPipeFaceLandmarker:
    """A Face Landmarker for one recording (VIDEO mode) or one still (IMAGE mode).

    Build one per session: VIDEO mode carries tracking state and requires increasing timestamps.
    Use as a context manager or call :meth:`close` (left to ``__del__`` at exit, MediaPipe raises).
    """

    def __init__(self, model_bytes: bytes, model_name: str, still: bool = False, num_faces: int = 4,
                 min_detection_confidence: float = 0.5, min_presence_confidence: float = 0.5,
                 min_tracking_confidence: float = 0.5) -> None:
        try:
            import mediapipe as mp
            from mediapipe.tasks.python import BaseOptions, vision
        except ImportError as exc:  # pragma: no cover - mediapipe is a dependency
            raise ModelError(f"mediapipe is not importable ({exc}); reinstall ether-prep's environment") from exc
        self._mp = mp
        self.still = still
        options = vision.FaceLandmarkerOptions(
            base_options=BaseOptions(model_asset_buffer=model_bytes),
            running_mode=vision.RunningMode.IMAGE if still else vision.RunningMode.VIDEO,
            num_faces=num_faces,
            min_face_detection_confidence=min_detection_confidence,
            min_face_presence_confidence=min_presence_confidence,
            min_tracking_confidence=min_tracking_confidence,
            output_face_blendshapes=True,
            output_facial_transformation_matrixes=True,
        )
        with _native_stderr_captured() as captured:
            try:
                self._landmarker = vision.FaceLandmarker.create_from_options(options)
            except (RuntimeError, ValueError) as exc:
                said = captured().strip()
                raise ModelError(f"{model_name}: MediaPipe cannot load this face landmarker bundle ({exc}"
                                 f"{'; it printed: ' + said[-500:] if said else ''}); it must be a "
                                 f"face_landmarker.task file") from exc
        self._last_ms = -1
        self._first = True

    def detect(self, rgb: np.ndarray, time_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces in one RGB frame: landmarks (n, 478, 3) normalised (x, y in [0, 1] of width/height; z in
        the scale of x), blendshape scores (n, 52), transformation matrices (n, 4, 4)."""
        image = self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=np.ascontiguousarray(rgb))
        try:
            if self._first:  # the graph's threads print their own start-up lines on the first frame
                self._first = False
                with _native_stderr_captured():
                    return self._detect(image, time_s)
            return self._detect(image, time_s)
        except (RuntimeError, ValueError) as exc:
            raise InputError(f"MediaPipe face landmarker failed on a frame at {time_s:.3f} s ({exc})") from exc

    def _detect(self, image: Any, time_s: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.still:
            result = self._landmarker.detect(image)
        else:
            # VIDEO mode rejects equal or decreasing timestamps (rounding of close VFR frame times).
            ms = max(round(time_s * 1000.0), self._last_ms + 1)
            self._last_ms = ms
            result = self._landmarker.detect_for_video(image, ms)
        n = len(result.face_landmarks)
        if not n:
            return np.zeros((0, 478, 3), np.float32), np.zeros((0, 52), np.float32), np.zeros((0, 4, 4), np.float32)
        landmarks = np.array([[(p.x, p.y, p.z) for p in face] for face in result.face_landmarks], dtype=np.float32)
        blend = np.array([[c.score for c in face] for face in result.face_blendshapes], dtype=np.float32)
        matrices = np.array(result.facial_transformation_matrixes, dtype=np.float32).reshape(n, 4, 4)
        return landmarks, blend, matrices

    def close(self) -> None:
        if self._landmarker is not None:
            self._landmarker.close()
            self._landmarker = None

    def __enter__(self) -> MediaPipeFaceLandmarker:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_model(path: Path) -> bytes:
    """The bundle's bytes (read once per worker; each session's landmarker is built from them)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ModelError(f"{path}: cannot read the face landmarker bundle ({exc})") from exc
    if not zipfile.is_zipfile(io.BytesIO(data)):  # a .task bundle is a zip archive
        raise ModelError(f"{path}: not a MediaPipe .task bundle (expected a zip archive)")
    return data
