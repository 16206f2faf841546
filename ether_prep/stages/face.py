"""Stage ``face``: every face in every analysed frame: box, score, landmarks, AUs, emotions, head pose,
mouth activity, a track id that follows each face through one shot, and a person id that stays the same
across shot cuts, gaps and re-entries.

Example (pipelines.yaml)::

    - stage: face
      backend: mediapipe            # or pyfeat
      model: face_landmarker.task   # a path, or a name looked up in $ETHER_PREP_MODELS / the cache
      params: {analysis_fps: null, num_faces: 4, min_detection_confidence: 0.3,
               min_presence_confidence: 0.3,
               identity: dlib,                # dlib (any backend), pyfeat (its ArcFace), or off
               identity_threshold: null,      # null: the model's own (dlib 0.42, ArcFace 1.0)
               identity_every_s: 2.0, max_embeddings_per_track: 6,
               cut_threshold: 20.0}           # null: no shot-cut detection
      resources: {num_cpus: 2, batch_size: 8}

Identity: the tracker ends every track at a shot cut (:mod:`ether_prep.face.shots`); each track's faces are
embedded when it is confirmed, then ``identity_every_s`` later, at intervals doubling from there, at most
``max_embeddings_per_track`` times, during the frame loop; a sample farther than ``identity_threshold`` from
its track's mean splits the track (the face changed without a cut); tracks are clustered into persons with the
rule that two faces in one frame are two people (:mod:`ether_prep.face.identity`). Distances are Euclidean
between L2-normalised embeddings; dlib's "same person below 0.6" on its raw 128-d descriptors (norm ~1.44) is
0.42 here.

Output group ``face/`` (F analysed frames, T tracks; NaN where a track has no face in a frame)::

    time        (F,)          float64  seconds from the first frame
    au          (F, T, 20)    float32  attrs.names = AU01 ... AU43
    emotion     (F, T, 7)     float32  attrs.names = anger ... neutral
    pose        (F, T, 3)     float32  yaw, pitch, roll in degrees
    box         (F, T, 4)     float32  x0, y0, x1, y1 in pixels
    score       (F, T)        float32  detection score
    mouth_open  (F, T)        float32  lip aperture / mouth width (0 closed .. ~1 wide open)
    landmarks   (F, T, L, 3)  float32  pixel x, y and z (NaN where none); L = 478 (mediapipe) or 68 (pyfeat)
    tracks      table: track, first_time, last_time, n_frames, box_x0, box_y0, box_x1, box_y1 (mean box),
                       person, shot (index of the shot the track lives in), n_embeddings
    person      (T,)          int64    person id of each track column (0.. in order of first appearance)
    identity    (T, E)        float32  each track's mean L2-normalised identity embedding (NaN row: none);
                                       attrs model, metric, threshold
    shot        (F,)          int32    shot index of each analysed frame

Group attrs add ``n_persons``, ``n_shots``, ``cut_times`` (first frame of each later shot, s),
``identity_model``, ``identity_params`` and ``identity_splits`` (tracks split where the face changed: the
change lies between ``last_same_time`` and ``time``). With ``identity: off`` every track is its own person.

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
from ..face.identity import TrackIdentities, cannot_link_pairs, cluster_persons
from ..face.shots import ShotDetector
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


@dataclass
class _Identity:
    """Shot and identity state of one recording's frame loop."""

    shots: ShotDetector
    tracks: TrackIdentities
    dim: int  # embedding size (py-feat's is known at its first face)
    computed: int = 0  # embeddings computed by the stage's own model
    seconds: float = 0.0  # ... and the time they took


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
    identity: str = "dlib"  # "dlib" (ResNet descriptor, any backend), "pyfeat" (its ArcFace), "off"
    identity_threshold: float | None = None  # same person below this distance; None = the model's own
    identity_every_s: float = 2.0  # first interval between a track's identity samples; then doubling
    max_embeddings_per_track: int = 6
    cut_threshold: float | None = 20.0  # shot-cut signature jump (0..255); None = no cut detection

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
        if self.identity not in ("dlib", "pyfeat", "off"):
            raise ValueError(f"identity must be 'dlib', 'pyfeat' or 'off', got {self.identity!r}")
        if self.identity_threshold is not None and self.identity_threshold <= 0:
            raise ValueError(f"identity_threshold must be positive or null, got {self.identity_threshold}")
        if self.identity_every_s < 0 or self.max_embeddings_per_track < 1:
            raise ValueError("identity_every_s must be >= 0 and max_embeddings_per_track >= 1")
        if self.cut_threshold is not None and self.cut_threshold <= 0:
            raise ValueError(f"cut_threshold must be positive or null (no cut detection), got {self.cut_threshold}")

    def validate_backend(self, backend: str) -> None:
        if self.identity == "pyfeat" and backend != "pyfeat":
            raise ValueError(f"identity 'pyfeat' needs the pyfeat backend (this stage uses {backend!r}); "
                             f"use identity: dlib")


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
    version = "2"
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
        self._embedder: Any = None

    def library_names(self) -> tuple[str, ...]:
        names = ("av", "py-feat", "torch", "scipy") if self.spec.backend == "pyfeat" else self.libraries
        if self.params.identity == "dlib":
            names = (*names, "dlib-bin", "face-recognition-models")
        return names

    # -- models ----------------------------------------------------------------------------------------
    def model_info(self) -> dict[str, str]:
        if self.spec.backend == "mediapipe":
            from ..adapters.mediapipe_face import resolve_model

            path, source = resolve_model(self.spec.model, download=False)
            info = {"id": Path(self.spec.model or "face_landmarker.task").name, "source": str(path) if path else source}
        elif self.spec.model:
            info = {"id": f"py-feat Detector{self.params.detector}", "source": str(Path(self.spec.model).expanduser())}
        else:
            info = {"id": f"py-feat Detector{self.params.detector}", "source": "huggingface:py-feat/*"}
        if self.params.identity != "off":
            info["identity"] = self._identity_model()
        return info

    def _identity_model(self) -> str | None:
        if self.params.identity == "dlib":
            from ..adapters.dlib_face import MODEL_ID

            return f"{MODEL_ID} (package face_recognition_models)"
        return "py-feat arcface" if self.params.identity == "pyfeat" else None

    def _identity_threshold(self) -> float:
        if self.params.identity_threshold is not None:
            return self.params.identity_threshold
        # dlib, measured on the shared media (Euclidean, L2-normalised): one sample to its track's mean
        # <= 0.34 through crying and laughter (WolfgangLanger), the same GRID speaker's tracks in different
        # shots ~0.1 apart; different people >= 0.47 sample to sample, ~0.6 track to track. dlib's own
        # "same person below 0.6" on raw descriptors (norm ~1.44) is ~0.42 here. ArcFace: cosine 0.5 (not
        # calibrated here: no ArcFace weights can be loaded offline).
        return 0.42 if self.params.identity == "dlib" else 1.0

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
                threads=p.threads or int(self.spec.resources.num_cpus) or (os.cpu_count() or 1),
                identity=p.identity == "pyfeat")
        if self.params.identity == "dlib" and self._embedder is None:
            from ..adapters.dlib_face import DlibFaceEmbedder

            self._embedder = DlibFaceEmbedder()

    def teardown(self) -> None:
        self._model_bytes = None
        self._pyfeat = None
        self._embedder = None

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

        if (self._model_bytes is None and self._pyfeat is None) or (
                self.params.identity == "dlib" and self._embedder is None):
            self.setup()
        p: FaceParams = self.params
        still = session.kind == "image" or session.path.suffix.lower() in _IMAGE_SUFFIXES
        n_landmarks = 478 if self.spec.backend == "mediapipe" else 68
        min_hits = 1 if still else p.min_track_frames
        tracker = FaceTracker(max_gap_s=p.max_gap_s, appearance_weight=p.appearance_weight, min_hits=min_hits)
        ident = _Identity(ShotDetector(p.cut_threshold),
                          TrackIdentities(every_s=p.identity_every_s, max_per_track=p.max_embeddings_per_track,
                                          min_hits=min_hits, threshold=self._identity_threshold()),
                          dim=self._embedder.dim if self._embedder is not None else 0)
        shots, identities = ident.shots, ident.tracks
        stats = DecodeStats()
        fields = {"frame": ((), np.int64), "track": ((), np.int64),
                  "au": ((len(AU_NAMES),), np.float32), "emotion": ((len(EMOTION_NAMES),), np.float32),
                  "pose": ((3,), np.float32), "box": ((4,), np.float32), "score": ((), np.float32),
                  "mouth_open": ((), np.float32), "landmarks": ((n_landmarks, 3), np.float32)}
        frame_times = DetectionSpool({"time": ((), np.float64), "shot": ((), np.int32)},
                                     prefix="ether-prep-face-times-")
        size = [0, 0]
        n_frames = 0
        t_start = time.perf_counter()
        stop = threading.Event()

        def identify(frame: VideoFrame, faces: FrameFaces, ids: np.ndarray) -> None:
            """Embed the detections that are due (the RGB frame exists only now); split changed faces."""
            want = identities.due(frame.time, ids)
            if not want.any():
                return
            if p.identity == "pyfeat":  # the backend's own embedding, computed with the AUs
                if faces.identity is None:
                    return
                emb = faces.identity[want]
                ident.dim = emb.shape[1]
            else:
                t0 = time.perf_counter()
                emb = self._embedder.embed(frame.rgb, faces.boxes[want])
                ident.computed += len(emb)
                ident.seconds += time.perf_counter() - t0
            for c, e in zip(np.flatnonzero(want), emb, strict=True):
                if not np.isfinite(e).all():
                    continue  # py-feat gives NaN where its identity branch is off
                distance = identities.add(int(ids[c]), frame.time, e)
                if distance is not None and distance > identities.threshold:
                    new = tracker.split(int(ids[c]), frame.time)
                    identities.restart(int(ids[c]), new, frame.time, e, distance)
                    ids[c] = new

        def record(frame: VideoFrame, faces: FrameFaces) -> None:
            nonlocal n_frames
            h, w = frame.rgb.shape[:2]
            size[0], size[1] = w, h
            if shots.update(frame.time, frame.rgb):
                tracker.end_all()  # no track continues across a cut
            frame_times.append(time=np.array([frame.time]), shot=np.array([shots.shot]))
            desc = np.stack([appearance_descriptor(frame.rgb, b) for b in faces.boxes]) if faces.n else None
            ids = tracker.assign(frame.time, faces.boxes, desc)
            if faces.n and p.identity != "off":
                identify(frame, faces, ids)
            tracker.commit(frame.time, faces.boxes, ids)
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
            note = self._write(out, spool, frame_times, tracker, ident, n_frames, stats, size, p,
                               time.perf_counter() - t_start)
        return note

    def _pyfeat_batch(self, batch: list[VideoFrame], record: Any) -> None:
        if not batch:
            return
        for frame, faces in zip(batch, self._pyfeat.detect([f.rgb for f in batch]), strict=True):
            record(frame, faces)

    # -- storage -----------------------------------------------------------------------------------------
    def _write(self, out: zarr.Group, spool: Any, frame_times: Any, tracker: Any, ident: _Identity,
               n_frames: int, stats: Any, size: list[int], p: FaceParams, elapsed: float) -> str | None:
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
        frame_shot = frame_times.read("shot")
        write_array(out, "shot", frame_shot, attrs={"description": "shot index of each analysed frame"})
        dense = [("au", {"names": list(AU_NAMES)}), ("emotion", {"names": list(EMOTION_NAMES)}),
                 ("pose", {"names": list(POSE_NAMES), "units": "degrees"}),
                 ("box", {"names": ["x0", "y0", "x1", "y1"], "units": "px"}), ("score", {}),
                 ("mouth_open", {"description": "lip aperture / mouth width"}),
                 ("landmarks", {"names": ["x", "y", "z"], "units": "px"})]
        for name, attrs in dense:
            spool.write_dense(out, name, name, frame, track, n_frames, n_tracks, attrs=attrs)

        # Persons: track identities clustered, two tracks in one frame never one person.
        identity, n_embeddings = ident.tracks.means([s.track for s in summaries], ident.dim)
        threshold = ident.tracks.threshold
        person = cluster_persons(identity, cannot_link_pairs(frame, track), threshold)
        # A track lives in one shot (the tracker ends tracks at cuts): the shot of its first row.
        kept = np.flatnonzero(track >= 0)
        _, first = np.unique(track[kept], return_index=True)
        track_shot = frame_shot[frame[kept[first]]].astype(np.int64)
        write_array(out, "person", person, attrs={"description": "person id of each track column"})
        write_array(out, "identity", identity, attrs={
            "model": self._identity_model(), "metric": "euclidean (L2-normalised embeddings)",
            "threshold": threshold, "description": "mean L2-normalised identity embedding per track; NaN: none"})

        boxes = np.array([s.mean_box for s in summaries], dtype=np.float64).reshape(-1, 4)
        write_table(out, "tracks", {
            "track": np.arange(n_tracks, dtype=np.int64),
            "first_time": np.array([s.first_time for s in summaries], dtype=np.float64),
            "last_time": np.array([s.last_time for s in summaries], dtype=np.float64),
            "n_frames": np.array([s.n_frames for s in summaries], dtype=np.int64),
            "box_x0": boxes[:, 0], "box_y0": boxes[:, 1], "box_x1": boxes[:, 2], "box_y1": boxes[:, 3],
            "person": person, "shot": track_shot, "n_embeddings": n_embeddings,
        })
        splits = [{"track": int(remap[x.track]), "new_track": int(remap[x.new_track]), "time": x.time,
                   "last_same_time": x.last_same_time, "distance": round(x.distance, 4)}
                  for x in ident.tracks.splits]
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
            "n_persons": int(person.max() + 1) if n_tracks else 0,
            "n_shots": int(ident.shots.shot + 1),
            "cut_times": ident.shots.cut_times,
            "identity_model": self._identity_model(),
            "identity_params": {
                "threshold": threshold, "metric": "euclidean (L2-normalised embeddings)",
                "every_s": p.identity_every_s, "max_per_track": p.max_embeddings_per_track,
                "cut_threshold": p.cut_threshold, "cut_ratio": ident.shots.ratio,
                "largest_jump_within_a_shot": round(ident.shots.max_within_shot, 3),
                "embeddings_computed": ident.computed, "embedding_seconds": round(ident.seconds, 3),
                "tracks_without_embedding": int((n_embeddings == 0).sum()),
                **({"model": self._embedder.info} if self._embedder is not None else {})},
            "identity_splits": splits,
        }
        if p.identity == "off":
            attrs["person_kind"] = "identity off: every track is a person of its own"
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

