"""Stage ``face``: every face in every analysed frame: box, score, landmarks, AUs, emotions, head pose,
mouth activity, and a track id that follows each face through the video.

Example (pipelines.yaml)::

    - stage: face
      backend: mediapipe            # or pyfeat
      model: face_landmarker.task   # a path, or a name looked up in $ETHER_PREP_MODELS / the cache
      params: {analysis_fps: null, num_faces: 4, min_detection_confidence: 0.3,
               min_presence_confidence: 0.3}
      resources: {num_cpus: 2, batch_size: 8}

Output group ``face/`` (F analysed frames, T tracks; NaN where a track has no face in a frame)::

    time        (F,)          float64  seconds from the first frame
    au          (F, T, 20)    float32  attrs.names = AU01 ... AU43
    emotion     (F, T, 7)     float32  attrs.names = anger ... neutral
    pose        (F, T, 3)     float32  yaw, pitch, roll in degrees
    box         (F, T, 4)     float32  x0, y0, x1, y1 in pixels
    score       (F, T)        float32  detection score
    mouth_open  (F, T)        float32  lip aperture / mouth width (0 closed .. ~1 wide open)
    landmarks   (F, T, L, 3)  float32  pixel x, y and z (NaN where none); L = 478 (mediapipe) or 68 (pyfeat)
    tracks      table: track, first_time, last_time, n_frames, box_x0, box_y0, box_x1, box_y1 (mean box)

Frames decode in a background thread (a small prefetch queue) while the model runs; detections are
spooled to temporary files and written as time-chunked arrays at the end, so memory stays flat.
The mediapipe backend's AUs are blendshape-derived scores and its emotions EMFACS prototype scores (see
:mod:`ether_prep.face.features`); MediaPipe exposes no per-face detection score, so ``score`` is 1.0 for
every face that passed the configured confidence thresholds.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError
from ..face import AU_NAMES, EMOTION_NAMES, POSE_NAMES, FrameFaces
from ..provenance import library_versions
from ..store import write_array, write_table
from .base import Stage

if TYPE_CHECKING:
    import zarr

    from ..adapters.pyav import VideoFrame
    from ..records import Session
    from ..store import SessionGroup

__all__ = ["FaceParams", "FaceStage"]

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_END = object()


@dataclass(frozen=True)
class FaceParams:
    """Parameters of the face stage."""

    analysis_fps: float | None = None  # frames analysed per second; None = every decoded frame
    num_faces: int = 4  # most faces looked for per frame
    min_detection_confidence: float = 0.5
    min_presence_confidence: float = 0.5  # mediapipe: landmark presence
    min_tracking_confidence: float = 0.5  # mediapipe: frame-to-frame landmark tracking
    still_tiles: int = 2  # mediapipe, stills: also search an n x n grid of tiles (small faces); 1 = off
    detector: str = "v2"  # pyfeat: "v2" (Detectorv2) or "v1" (Detectorv1)
    device: str = "cpu"  # pyfeat: "cpu", "cuda", "cuda:1", "mps", "auto"
    threads: int = 0  # torch threads (pyfeat); 0 = all cores
    max_gap_s: float = 1.0  # a track survives this long without a detection
    appearance_weight: float = 0.4  # share of colour-histogram similarity in track matching
    min_track_frames: int = 3  # a track must be seen in this many consecutive frames (not for stills)
    prefetch: int = 16  # decoded frames queued ahead of the model

    def validate(self) -> None:
        if self.analysis_fps is not None and self.analysis_fps <= 0:
            raise ValueError(f"analysis_fps must be positive or null, got {self.analysis_fps}")
        if self.num_faces < 1:
            raise ValueError(f"num_faces must be >= 1, got {self.num_faces}")
        for key in ("min_detection_confidence", "min_presence_confidence", "min_tracking_confidence"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise ValueError(f"{key} must be within [0, 1], got {getattr(self, key)}")
        if self.detector not in ("v1", "v2"):
            raise ValueError(f"detector must be 'v1' or 'v2', got {self.detector!r}")
        if self.max_gap_s < 0 or not 0.0 <= self.appearance_weight <= 1.0:
            raise ValueError("max_gap_s must be >= 0 and appearance_weight within [0, 1]")
        if not 1 <= self.still_tiles <= 4:
            raise ValueError(f"still_tiles must be within 1..4, got {self.still_tiles}")
        if self.min_track_frames < 1 or self.prefetch < 1 or self.threads < 0:
            raise ValueError("min_track_frames and prefetch must be >= 1, threads >= 0")


def _prefetch(path: Path, analysis_fps: float | None, stats: Any, depth: int,
              stop: threading.Event) -> Iterator[VideoFrame]:
    """Decode in a background thread, ``depth`` frames ahead (PyAV releases the GIL while decoding)."""
    from ..adapters.pyav import iter_video_frames

    q: queue.Queue[Any] = queue.Queue(maxsize=depth)

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for frame in iter_video_frames(path, analysis_fps=analysis_fps, stats=stats):
                if not put(frame):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, re-raised there
            put(exc)

    worker = threading.Thread(target=produce, name=f"face-decode:{path.name}", daemon=True)
    worker.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


class FaceStage(Stage):
    """Faces, AUs, emotions, head pose, landmarks and face tracks per analysed frame."""

    name = "face"
    version = "1"
    family = "extract"
    requires = ()
    needs_stream = "video"
    backends = ("mediapipe", "pyfeat")
    Params = FaceParams
    libraries = ("av", "mediapipe", "scipy")

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self._model_bytes: bytes | None = None
        self._model_path: Path | None = None
        self._pyfeat: Any = None

    def library_names(self) -> tuple[str, ...]:
        if self.spec.backend == "pyfeat":
            return ("av", "py-feat", "torch", "scipy")
        return self.libraries

    # -- models ----------------------------------------------------------------------------------------
    def model_info(self) -> dict[str, str]:
        if self.spec.backend == "mediapipe":
            from ..adapters.mediapipe_face import resolve_model

            path, source = resolve_model(self.spec.model, download=False)
            return {"id": Path(self.spec.model or "face_landmarker.task").name,
                    "source": str(path) if path else source}
        if self.spec.model:
            return {"id": f"py-feat Detector{self.params.detector}", "source": str(Path(self.spec.model).expanduser())}
        return {"id": f"py-feat Detector{self.params.detector}", "source": "huggingface:py-feat/*"}

    def setup(self) -> None:
        if self.spec.backend == "mediapipe":
            from ..adapters.mediapipe_face import read_model, resolve_model

            self._model_path, _ = resolve_model(self.spec.model, download=True)
            self._model_bytes = read_model(self._model_path)
        else:
            from ..adapters.pyfeat_face import PyFeatFaceDetector

            p = self.params
            weights = Path(self.spec.model).expanduser() if self.spec.model else None
            self._pyfeat = PyFeatFaceDetector(
                detector=p.detector, device=p.device, weights_dir=weights,
                face_detection_threshold=p.min_detection_confidence, max_faces=p.num_faces,
                threads=p.threads or int(self.spec.resources.num_cpus) or (os.cpu_count() or 1))

    def teardown(self) -> None:
        self._model_bytes = None
        self._pyfeat = None

    # -- per session -----------------------------------------------------------------------------------
    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        from ..adapters.pyav import DecodeStats
        from ..face.features import (
            aus_from_blendshapes,
            boxes_from_landmarks,
            emotions_from_aus,
            mouth_open_from_landmarks,
            pose_from_matrices,
        )
        from ..face.spool import DetectionSpool
        from ..face.tracking import FaceTracker, appearance_descriptor

        if self._model_bytes is None and self._pyfeat is None:
            self.setup()
        p: FaceParams = self.params
        still = session.kind == "image" or session.path.suffix.lower() in _IMAGE_SUFFIXES
        n_landmarks = 478 if self.spec.backend == "mediapipe" else 68
        tracker = FaceTracker(max_gap_s=p.max_gap_s, appearance_weight=p.appearance_weight,
                              min_hits=1 if still else p.min_track_frames)
        stats = DecodeStats()
        fields = {"frame": ((), np.int64), "track": ((), np.int64),
                  "au": ((len(AU_NAMES),), np.float32), "emotion": ((len(EMOTION_NAMES),), np.float32),
                  "pose": ((3,), np.float32), "box": ((4,), np.float32), "score": ((), np.float32),
                  "mouth_open": ((), np.float32), "landmarks": ((n_landmarks, 3), np.float32)}
        frame_times = DetectionSpool({"time": ((), np.float64)}, prefix="ether-prep-face-times-")
        size = [0, 0]
        n_frames = 0
        t_start = time.perf_counter()
        stop = threading.Event()

        def record(frame: VideoFrame, faces: FrameFaces) -> None:
            nonlocal n_frames
            h, w = frame.rgb.shape[:2]
            size[0], size[1] = w, h
            frame_times.append(time=np.array([frame.time]))
            desc = np.stack([appearance_descriptor(frame.rgb, b) for b in faces.boxes]) if faces.n else None
            ids = tracker.update(frame.time, faces.boxes, desc)
            if faces.n:
                spool.append(frame=np.full(faces.n, n_frames), track=ids,
                             au=faces.aus, emotion=faces.emotions, pose=faces.pose, box=faces.boxes,
                             score=faces.scores, mouth_open=faces.mouth_open, landmarks=faces.landmarks)
            n_frames += 1

        with DetectionSpool(fields) as spool, frame_times:
            frames = _prefetch(session.path, None if still else p.analysis_fps, stats, p.prefetch, stop)
            try:
                if self.spec.backend == "mediapipe":
                    from ..adapters.mediapipe_face import MediaPipeFaceLandmarker

                    assert self._model_bytes is not None
                    with MediaPipeFaceLandmarker(
                            self._model_bytes, str(self._model_path), still=still, num_faces=p.num_faces,
                            min_detection_confidence=p.min_detection_confidence,
                            min_presence_confidence=p.min_presence_confidence,
                            min_tracking_confidence=p.min_tracking_confidence,
                            still_tiles=p.still_tiles) as landmarker:
                        for frame in frames:
                            h, w = frame.rgb.shape[:2]
                            lm, blend, mats = landmarker.detect(frame.rgb, frame.time)
                            lm *= np.array([w, h, w], dtype=np.float32)  # z is in the scale of x
                            mouth = mouth_open_from_landmarks(lm)
                            aus = aus_from_blendshapes(blend, mouth)
                            faces = FrameFaces(boxes_from_landmarks(lm, w, h), np.ones(len(lm), np.float32), lm,
                                               aus, emotions_from_aus(aus), pose_from_matrices(mats), mouth)
                            record(frame, faces)
                else:
                    batch: list[VideoFrame] = []
                    bs = max(1, self.spec.resources.batch_size)
                    for frame in frames:
                        if batch and frame.rgb.shape != batch[0].rgb.shape:
                            self._pyfeat_batch(batch, record)
                            batch = []
                        batch.append(frame)
                        if len(batch) >= bs:
                            self._pyfeat_batch(batch, record)
                            batch = []
                    self._pyfeat_batch(batch, record)
            finally:
                stop.set()
                if hasattr(frames, "close"):
                    frames.close()

            if stats.decoded == 0:
                raise InputError(f"{session.path}: no video frame could be decoded "
                                 f"({stats.corrupt} corrupt packet(s))")
            note = self._write(out, spool, frame_times, tracker, n_frames, stats, size, p,
                               time.perf_counter() - t_start)
        return note

    def _pyfeat_batch(self, batch: list[VideoFrame], record: Any) -> None:
        if not batch:
            return
        for frame, faces in zip(batch, self._pyfeat.detect([f.rgb for f in batch]), strict=True):
            record(frame, faces)

    # -- storage -----------------------------------------------------------------------------------------
    def _write(self, out: zarr.Group, spool: Any, frame_times: Any, tracker: Any, n_frames: int, stats: Any,
               size: list[int], p: FaceParams, elapsed: float) -> str | None:
        # Keep tracks with enough frames (a clip shorter than that keeps all), renumbered in order of
        # first appearance.
        min_frames = min(tracker.min_hits, max(n_frames, 1))
        summaries = [s for s in tracker.summaries if s.n_frames >= min_frames]
        remap = np.full(len(tracker.summaries) + 1, -1, dtype=np.int64)
        for new, s in enumerate(summaries):
            remap[s.track] = new
        n_tracks = len(summaries)
        frame = spool.read("frame")
        track = remap[spool.read("track")] if spool.rows else np.zeros(0, np.int64)

        write_array(out, "time", frame_times.read("time"), attrs={"units": "s"})
        dense = [("au", {"names": list(AU_NAMES)}), ("emotion", {"names": list(EMOTION_NAMES)}),
                 ("pose", {"names": list(POSE_NAMES), "units": "degrees"}),
                 ("box", {"names": ["x0", "y0", "x1", "y1"], "units": "px"}), ("score", {}),
                 ("mouth_open", {"description": "lip aperture / mouth width"}),
                 ("landmarks", {"names": ["x", "y", "z"], "units": "px"})]
        for name, attrs in dense:
            spool.write_dense(out, name, name, frame, track, n_frames, n_tracks, attrs=attrs)

        boxes = np.array([s.mean_box for s in summaries], dtype=np.float64).reshape(-1, 4)
        write_table(out, "tracks", {
            "track": np.arange(n_tracks, dtype=np.int64),
            "first_time": np.array([s.first_time for s in summaries], dtype=np.float64),
            "last_time": np.array([s.last_time for s in summaries], dtype=np.float64),
            "n_frames": np.array([s.n_frames for s in summaries], dtype=np.int64),
            "box_x0": boxes[:, 0], "box_y0": boxes[:, 1], "box_x1": boxes[:, 2], "box_y1": boxes[:, 3],
        })
        note = None
        if n_tracks == 0:
            note = f"no face found in {n_frames} analysed frame(s)"
        info = self.model_info()
        attrs: dict[str, Any] = {
            "backend": self.spec.backend,
            "model": info.get("id"),
            "model_source": info.get("source"),
            "au_names": list(AU_NAMES),
            "emotion_names": list(EMOTION_NAMES),
            "pose_names": list(POSE_NAMES),
            "analysis_fps": p.analysis_fps,
            "frames_decoded": stats.decoded,
            "frames_analysed": n_frames,
            "frames_corrupt": stats.corrupt,
            "frame_width": size[0],
            "frame_height": size[1],
            "n_tracks": n_tracks,
            "n_landmarks": 478 if self.spec.backend == "mediapipe" else 68,
            "fps_analysed": round(n_frames / elapsed, 2) if elapsed > 0 else None,
            "libraries": library_versions(*self.library_names()),
            "params": self.spec.params_dict(),
        }
        if self.spec.backend == "mediapipe":
            attrs["au_kind"] = "blendshape-derived scores (MediaPipe), not FACS-coded intensities"
            attrs["emotion_kind"] = "EMFACS prototype match scores from the AUs, not probabilities"
            attrs["score_kind"] = "1.0 = passed the configured confidences (MediaPipe exposes no score)"
        else:
            attrs["au_kind"] = "py-feat AU probabilities"
            attrs["emotion_kind"] = "py-feat emotion probabilities"
            attrs["detector"] = self._pyfeat.info if self._pyfeat is not None else {}
        if note:
            attrs["note"] = note
        out.attrs.update(attrs)
        if n_frames and stats.corrupt:
            suffix = f"{stats.corrupt} corrupt packet(s) skipped"
            note = f"{note}; {suffix}" if note else suffix
        return note

