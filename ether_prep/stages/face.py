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
      resources: {num_cpus: 2,
                  window_s: 600}              # optional: long videos in ~600 s windows over several workers

Identity: the tracker ends every track at a shot cut (:mod:`ether_prep.face.shots`); each track's faces are
embedded when it is confirmed, then ``identity_every_s`` later, at intervals doubling from there, at most
``max_embeddings_per_track`` times, during the frame loop; a sample farther than ``identity_threshold`` from
its track's mean splits the track (the face changed without a cut); tracks are clustered into persons with the
rule that two faces in one frame are two people (:mod:`ether_prep.face.identity`). Distances are Euclidean
between L2-normalised embeddings; dlib's "same person below 0.6" on its raw 128-d descriptors (norm ~1.44) is
0.42 here.

Output group ``face/`` (F analysed frames, T tracks; NaN where a track has no face in a frame)::

    time        (F,)          float64  seconds on the session clock (as the audio's waveform; see below)
    au          (F, T, 20)    float32  attrs.names = AU01 ... AU43
    emotion     (F, T, 7)     float32  attrs.names = anger ... neutral
    pose        (F, T, 3)     float32  yaw, pitch, roll in degrees
    box         (F, T, 4)     float32  x0, y0, x1, y1 in pixels
    score       (F, T)        float32  detection score
    mouth_open  (F, T)        float32  lip aperture / mouth width (0 closed .. ~1 wide open)
    landmarks   (F, T, L, 3)  float32  pixel x, y and z (NaN where none); L = 478 (mediapipe) or 68 (pyfeat)
    gaze        (F, T, 8)     float32  attrs.names = gaze_0_x/y/z, gaze_1_x/y/z (unit vectors, camera frame),
                                       gaze_angle_x, gaze_angle_y (radians; OpenFace's conventions, see
                                       ether_prep.face.gaze): from the iris landmarks (mediapipe) or py-feat's
                                       own gaze (angles only)
    tracks      table: track, first_time, last_time, n_frames, box_x0, box_y0, box_x1, box_y1 (mean box),
                       person, shot (index of the shot the track lives in), n_embeddings
    person      (T,)          int64    person id of each track column (0.. in order of first appearance)
    identity    (T, E)        float32  each track's mean L2-normalised identity embedding (NaN row: none);
                                       attrs model, metric, threshold
    shot        (F,)          int32    shot index of each analysed frame

Times are on the session clock: seconds from the earliest start of the recording's audio and video streams, so
a video that starts 1.4 s after its audio has its first frame at 1.4 s, in step with the words. Group attrs
``session_origin`` (session time 0 on the container's clock, s) and ``start_offset`` (the first decoded frame's
time) say where it lies. Cover art (an attached picture) is not a video: such a file has no face stage.

Group attrs add ``n_persons``, ``n_shots``, ``cut_times`` (first frame of each later shot, s),
``identity_model``, ``identity_params`` and ``identity_splits`` (tracks split where the face changed: the
change lies between ``last_same_time`` and ``time``). With ``identity: off`` every track is its own person.

Windows (``resources.window_s``, see :meth:`FaceStage.windows` and :mod:`ether_prep.windows`): a long video is
cut into windows of analysed frames planned from its packets; each window (:meth:`FaceStage.run_window`, any
worker) stores what depends on
its frames alone: faces, the shot signature's difference from the frame before, appearance descriptors; the
join (:meth:`FaceStage.join`) replays every frame in order through shot cuts, tracking and identity, decoding
again only the frames due an identity embedding, and writes what :meth:`FaceStage.run` writes, array for array.

Three parts run at once, joined by bounded queues: frames decode in a background thread (``prefetch`` frames
ahead), the model runs on batches in a thread of its own (up to 2 batches ahead; torch and MediaPipe release
the GIL), and the CPU post-processing (the model's output to arrays, tracking, identity) runs in the stage's
thread, so a GPU never waits for Python; ``batch_size: 0`` lets the device choose py-feat's batch. Detections
are spooled to temporary files and written as time-chunked arrays at the end, so memory stays flat.
The mediapipe backend's AUs are blendshape-derived scores and its emotions EMFACS prototype scores (see
:mod:`ether_prep.face.features`); MediaPipe exposes no per-face detection score, so ``score`` is 1.0 for
every face that passed the configured confidence thresholds.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from ..contracts import check_device
from ..errors import InputError, StageError
from ..face import AU_NAMES, EMOTION_NAMES, GAZE_NAMES, POSE_NAMES, FrameFaces
from ..face.backends import BACKENDS, EMBEDDERS, FaceBackend, FaceDetector
from ..face.gaze import frame_gaze
from ..face.sequence import FaceSequence, descriptors
from ..face.shots import ShotDetector
from ..records import FaceTrack
from ..sessions import check_unchanged
from ..store import create_array, read_table, write_array, write_labels, write_table
from ..windows import (
    Window,
    check_tiling,
    edges_at_times,
    joined_attrs,
    plan_windows,
    span_attrs,
    spans,
    whole_attrs,
    window_length,
)
from .base import Stage

if TYPE_CHECKING:
    import zarr

    from ..adapters.pyav import DecodeStats, FramePlan, VideoFrame
    from ..face.backends import Embedder
    from ..face.sequence import Tracks
    from ..face.spool import DetectionSpool
    from ..records import Session
    from ..spec import StageSpec
    from ..store import SessionGroup

__all__ = ["FaceBlock", "FaceCounts", "FaceOutputs", "FaceParams", "FaceStage", "FaceStream", "open_faces",
           "read_face_counts", "read_faces"]

# Per-face values a window stores: FrameFaces' (boxes .. mouth_open, in its order), then appearance descriptors.
_WINDOW_ROWS = ("box", "score", "landmarks", "au", "emotion", "pose", "mouth_open", "descriptor", "gaze")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
_END = object()
_MODEL_AHEAD = 2  # batches the model may run ahead of the post-processing
T = TypeVar("T")


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
    threads: int = 0  # torch threads (pyfeat); 0 = the worker's num_cpus
    batch_size: int = 8  # pyfeat: frames per model call; 0 = chosen per device (face.backends.auto_batch_size)
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
        check_device(self.device, ("cpu", "cuda", "cuda:N", "mps", "auto"))
        if self.detector not in ("v1", "v2"):
            raise ValueError(f"detector must be 'v1' or 'v2', got {self.detector!r}")
        if self.max_gap_s < 0 or not 0.0 <= self.appearance_weight <= 1.0:
            raise ValueError("max_gap_s must be >= 0 and appearance_weight within [0, 1]")
        if not 1 <= self.still_tiles <= 4:
            raise ValueError(f"still_tiles must be within 1..4, got {self.still_tiles}")
        if self.min_track_frames < 1 or self.prefetch < 1 or self.threads < 0 or self.batch_size < 0:
            raise ValueError("min_track_frames and prefetch must be >= 1, batch_size >= 1 (or 0: chosen per "
                             "device), threads >= 0")
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


def _prefetch(produce: Callable[[], Iterator[T]], name: str, depth: int, join_s: float = 5.0) -> Iterator[T]:
    """Run ``produce`` in a thread of its own, at most ``depth`` items ahead of the consumer (a bounded queue);
    its exceptions are raised here. Closing this generator stops the thread (joined for up to ``join_s``)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        items = produce()
        try:
            for item in items:
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:  # handed to the consumer, re-raised there
            put(exc)
        finally:
            _close(items)  # a generator is closed by the thread that iterates it

    worker = threading.Thread(target=run, name=name, daemon=True)
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
        worker.join(timeout=join_s)


def _close(items: Iterable[Any]) -> None:
    """Close ``items`` when it is a generator (it stops the thread behind a :func:`_prefetch`)."""
    close = getattr(items, "close", None)
    if close is not None:
        close()


def _faces(frames: Iterator[VideoFrame], detector: FaceDetector, name: str,
           overlap: bool) -> Iterator[tuple[list[VideoFrame], list[FrameFaces]]]:
    """Batches of decoded frames with their faces. With ``overlap``, three parts run at once: decoding (the
    thread behind ``frames``), the model (``detector.infer`` in a thread of its own, up to ``_MODEL_AHEAD``
    batches ahead) and the CPU post-processing (``detector.convert`` here, then the caller's tracking and
    storage), so a GPU never waits for Python; the order of frames and results is the same either way."""
    if not overlap:
        try:
            for batch in _batches(frames, detector.batch_size):
                yield batch, detector.detect(batch)
        finally:
            _close(frames)
        return

    def infer() -> Iterator[tuple[list[VideoFrame], Any]]:
        try:
            for batch in _batches(frames, detector.batch_size):
                yield batch, detector.infer(batch)
        finally:
            _close(frames)  # in the model thread, the one that iterates the frames

    # A model call can take seconds on a CPU: wait for it before the detector is closed.
    inferred = _prefetch(infer, f"face-model:{name}", _MODEL_AHEAD, join_s=120.0)
    try:
        for batch, raw in inferred:
            yield batch, detector.convert(batch, raw)
    finally:
        inferred.close()


def _batches(frames: Iterable[VideoFrame], size: int) -> Iterator[list[VideoFrame]]:
    """Consecutive frames in batches of ``size`` (a batch never mixes frame sizes)."""
    batch: list[VideoFrame] = []
    for frame in frames:
        if batch and (len(batch) >= size or frame.rgb.shape != batch[0].rgb.shape):
            yield batch
            batch = []
        batch.append(frame)
    if batch:
        yield batch


class FaceStage(Stage):
    """Faces, AUs, emotions, head pose, landmarks and face tracks per analysed frame."""

    name = "face"
    version = "4"  # 3: times on the session clock (a video starting after its audio has later times); 4: gaze
    family = "extract"
    requires = ()
    needs_stream = "video"
    windowed = True
    reads_recording = True
    backends = tuple(BACKENDS)
    Params = FaceParams

    # Decoding, the model and the post-processing in three threads (see _faces); False: the model and the
    # post-processing take turns in one (the loop before the overlap; the same arrays, kept for comparison).
    overlap = True

    def __init__(self, spec: StageSpec) -> None:
        super().__init__(spec)
        self._backend: FaceBackend | None = None
        self._embedder: Embedder | None = None

    @property
    def backend_class(self) -> type[FaceBackend]:
        return BACKENDS[self.spec.backend]

    def library_names(self) -> tuple[str, ...]:
        embedder = EMBEDDERS.get(self.params.identity)
        return (*self.backend_class.libraries, *(embedder.libraries if embedder else ()))

    def cuda_engines(self) -> tuple[str, ...]:
        return self.backend_class.cuda_engines

    def model_info(self) -> dict[str, str]:
        info = self.backend_class.describe(self.spec.model, self.params)
        if self.params.identity != "off":
            info["identity"] = EMBEDDERS[self.params.identity].describe()
        return info

    def setup(self) -> None:
        if self._backend is None:
            backend = self.backend_class(self.spec.model, self.params)
            backend.load(int(self.spec.resources.num_cpus))
            self._backend = backend
        if self._embedder is None and self.params.identity != "off":
            self._embedder = EMBEDDERS[self.params.identity]()

    def teardown(self) -> None:
        self._backend = None
        self._embedder = None

    def _threshold(self) -> float:
        p = self.params
        if p.identity_threshold is not None:
            return p.identity_threshold
        return EMBEDDERS[p.identity].threshold if p.identity != "off" else 0.0

    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        from ..adapters.pyav import DecodeStats, iter_video_frames

        self.setup()
        assert self._backend is not None
        p: FaceParams = self.params
        still = self._still(session)
        stats = DecodeStats()
        t_start = time.perf_counter()
        with FaceSequence(self._backend.n_landmarks, 1 if still else p.min_track_frames, p.max_gap_s,
                          p.appearance_weight, p.cut_threshold, self._embedder, self._threshold(),
                          p.identity_every_s, p.max_embeddings_per_track) as sequence:
            frames = _prefetch(partial(iter_video_frames, session.path, None if still else p.analysis_fps, stats),
                               f"face-decode:{session.path.name}", p.prefetch)
            with self._backend.open(still) as detector, closing(
                    _faces(frames, detector, session.path.name, self.overlap)) as batches:
                for batch, found in batches:
                    for frame, faces in zip(batch, found, strict=True):
                        sequence.add(frame, faces)
                    self.report_progress(batch[-1].time)
            if stats.decoded == 0:
                raise InputError(f"{session.path}: no video frame could be decoded "
                                 f"({stats.corrupt} corrupt packet(s))")
            check_unchanged(session.path, session.identity)  # a file still being written: not stored as whole
            return self._write(out, sequence, stats, time.perf_counter() - t_start)

    # -- time windows ------------------------------------------------------------------------------------
    # The per-frame work (decoding, detection, AUs, landmarks, shot signatures, appearance descriptors) depends
    # on one frame alone (MediaPipe's VIDEO mode gives bit-identical faces from a fresh landmarker: measured),
    # so windows compute it anywhere; what carries state from frame to frame (shot cuts, tracking, identity
    # sampling and splits, persons) runs in the join over every frame in order, exactly as in ``run``.
    def _still(self, session: Session) -> bool:
        return session.kind == "image" or session.path.suffix.lower() in _IMAGE_SUFFIXES

    def windows(self, session: Session, store: SessionGroup) -> list[Window]:
        """Windows of about ``resources.window_s`` seconds (whole detector batches) for a video at least two
        windows long whose frames can be planned from its packets (else none: the whole recording in one task)."""
        from ..adapters.pyav import plan_video_frames

        p: FaceParams = self.params
        duration = session.probe.duration if session.probe is not None else None
        window_s = window_length(duration, self.spec.resources.window_s)
        if window_s is None or duration is None or self._still(session):
            return []
        plan = plan_video_frames(session.path, p.analysis_fps)
        if plan is None:
            return []
        batch = self.backend_class.frames_per_batch(p)  # a batch never straddles two windows
        edges = edges_at_times(plan.time, window_s, batch)
        return plan_windows(edges, lambda i: float(plan.time[i]), float(duration),
                            [{"plan": plan}] * (len(edges) - 1))

    def run_window(self, session: Session, store: SessionGroup, window: Window, out: zarr.Group) -> None:
        """The per-frame measurements of one window's frames (and, in the first window, the frame plan)."""
        from ..adapters.pyav import PlanMismatch

        self.setup()
        out.attrs.update(span_attrs(window))
        if window.index == 0:  # the join decodes frames again (identity embeddings) by this plan
            _write_plan(out, window.data["plan"])
        try:
            found = self._measure(session, window)
        except PlanMismatch as exc:  # the join computes the recording whole instead (see join)
            out.attrs["mismatch"] = str(exc)
            return
        check_unchanged(session.path, session.identity)
        found.write(out)

    def _measure(self, session: Session, window: Window) -> _WindowFrames:
        """Decode and measure one window's frames, in order."""
        from ..adapters.pyav import iter_planned_frames

        assert self._backend is not None
        p: FaceParams = self.params
        plan, first, stop = window.data["plan"], window.data["first"], window.data["stop"]
        shots = ShotDetector(p.cut_threshold)
        found = _WindowFrames()

        def measured() -> Iterator[VideoFrame]:
            # The frame before the window (context) only gives the first frame's shot-signature difference.
            for k, frame in enumerate(iter_planned_frames(session.path, plan, first, stop, context=min(first, 1))):
                score = shots.difference(frame.rgb)
                if k or not first:
                    found.cut_scores.append(score)
                    yield frame

        frames = _prefetch(measured, f"face-decode:{session.path.name}", p.prefetch)
        with self._backend.open(False) as detector, closing(
                _faces(frames, detector, session.path.name, self.overlap)) as batches:
            for batch, faces_of in batches:
                for frame, faces in zip(batch, faces_of, strict=True):
                    found.add(frame, faces)
                self.report_progress(batch[-1].time - window.start)
        return found

    def join(self, session: Session, store: SessionGroup, windows: list[zarr.Group], out: zarr.Group) -> str | None:
        """Replay every window's frames in order through shot cuts, tracking and identity (the frames due an
        identity embedding are decoded again), then write as :meth:`run` does."""
        from ..adapters.pyav import PlanMismatch

        mismatch = [str(g.attrs["mismatch"]) for g in windows if "mismatch" in g.attrs]
        if not mismatch:
            try:
                return self._join(session, windows, out)
            except PlanMismatch as exc:
                mismatch.append(str(exc))
        # The planned frames were not the decoded ones (a corrupt packet, odd timestamps): no window can be
        # trusted, so the recording is computed whole, as without windows.
        note = self.run(session, store, out)
        out.attrs["windows"] = whole_attrs(len(windows), mismatch[0])
        computed_whole = f"computed whole, not in {len(windows)} windows: {mismatch[0]}"
        return f"{note}; {computed_whole}" if note else computed_whole

    def _join(self, session: Session, windows: list[zarr.Group], out: zarr.Group) -> str | None:
        from ..adapters.pyav import DecodeStats, PlannedFrames

        self.setup()
        assert self._backend is not None
        p: FaceParams = self.params
        t_start = time.perf_counter()
        plan = _read_plan(windows[0])
        found = spans(windows)
        check_tiling(found, f"{session.path}: face", "analysed frame", len(plan.kept))
        with PlannedFrames(session.path, plan) as frames, FaceSequence(
                self._backend.n_landmarks, p.min_track_frames, p.max_gap_s, p.appearance_weight, p.cut_threshold,
                self._embedder, self._threshold(), p.identity_every_s, p.max_embeddings_per_track) as sequence:
            for g, (first, _) in zip(windows, found, strict=True):
                self._replay(sequence, g, first, frames.frame)
            if sequence.n_frames != len(plan.kept):
                raise StageError(f"{session.path}: the windows hold {sequence.n_frames} analysed frames, the plan "
                                 f"{len(plan.kept)}; run again")
            stats = DecodeStats(decoded=len(plan.pts), kept=len(plan.kept), origin=plan.t0, start=plan.start)
            check_unchanged(session.path, session.identity)
            note = self._write(out, sequence, stats, time.perf_counter() - t_start)
        out.attrs["windows"] = joined_attrs(windows, first_frames=[first for first, _ in found])
        return note

    def _replay(self, sequence: FaceSequence, g: zarr.Group, offset: int,
                fetch: Callable[[int], VideoFrame]) -> None:
        """One window's frames into ``sequence``, in order."""
        rows = {k: np.asarray(g[k][...]) for k in _WINDOW_ROWS}
        identity = np.asarray(g["identity"][...]) if "identity" in g else None
        times, sizes = np.asarray(g["time"][...]), np.asarray(g["size"][...])
        scores = np.asarray(g["cut_score"][...])
        bounds = np.concatenate([[0], np.cumsum(np.asarray(g["n_faces"][...]))])
        for i, t in enumerate(times.tolist()):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            faces = FrameFaces(rows["box"][lo:hi], rows["score"][lo:hi], rows["landmarks"][lo:hi],
                               rows["au"][lo:hi], rows["emotion"][lo:hi], rows["pose"][lo:hi],
                               rows["mouth_open"][lo:hi], identity[lo:hi] if identity is not None else None,
                               rows["gaze"][lo:hi])
            score = float(scores[i])
            sequence.add_measured(t, (int(sizes[i, 0]), int(sizes[i, 1])), None if np.isnan(score) else score,
                                  faces, rows["descriptor"][lo:hi] if hi > lo else None,
                                  partial(fetch, offset + i))

    # -- storage -----------------------------------------------------------------------------------------
    def _write(self, out: zarr.Group, sequence: FaceSequence, stats: DecodeStats, elapsed: float) -> str | None:
        tracks = sequence.tracks()
        self._write_arrays(out, sequence, tracks)
        n_frames = sequence.n_frames
        note = f"no face found in {n_frames} analysed frame(s)" if not tracks.summaries else None
        out.attrs.update(self._attrs(sequence, tracks, stats, elapsed, note))
        if n_frames and stats.corrupt:
            suffix = f"{stats.corrupt} corrupt packet(s) skipped"
            note = f"{note}; {suffix}" if note else suffix
        return note

    def _write_arrays(self, out: zarr.Group, sequence: FaceSequence, tracks: Tracks) -> None:
        n_frames, n_tracks = sequence.n_frames, len(tracks.summaries)
        write_array(out, "time", sequence.frames.read("time"), attrs={"units": "s"})
        write_array(out, "shot", sequence.frames.read("shot"), dims=("time",),
                    attrs={"description": "shot index of each analysed frame"})
        for name, dim, labels, attrs in _DENSE:
            dims = ("time", "track", *(("landmark",) if name == "landmarks" else ()), *((dim,) if dim else ()))
            _write_dense(out, sequence.detections, name, tracks, n_frames, attrs, dims)
            if dim:
                write_labels(out, dim, labels)
        write_array(out, "person", tracks.person, dims=("track",),
                    attrs={"description": "person id of each track column"})
        write_array(out, "identity", tracks.identity, dims=("track", "embedding"), attrs={
            "model": self._identity_model(), "metric": "euclidean (L2-normalised embeddings)",
            "threshold": sequence.identities.threshold,
            "description": "mean L2-normalised identity embedding per track; NaN: none"})
        boxes = np.array([s.mean_box for s in tracks.summaries], dtype=np.float64).reshape(-1, 4)
        write_table(out, "tracks", {
            "track": np.arange(n_tracks, dtype=np.int64),
            "first_time": np.array([s.first_time for s in tracks.summaries], dtype=np.float64),
            "last_time": np.array([s.last_time for s in tracks.summaries], dtype=np.float64),
            "n_frames": np.array([s.n_frames for s in tracks.summaries], dtype=np.int64),
            "box_x0": boxes[:, 0], "box_y0": boxes[:, 1], "box_x1": boxes[:, 2], "box_y1": boxes[:, 3],
            "person": tracks.person, "shot": tracks.shot, "n_embeddings": tracks.n_embeddings,
        }, dim="track")

    def _identity_model(self) -> str | None:
        return self._embedder.model_id if self._embedder is not None else None

    def _attrs(self, sequence: FaceSequence, tracks: Tracks, stats: DecodeStats, elapsed: float,
               note: str | None) -> dict[str, Any]:
        """The face group's attrs: backend and model, frame counts, clock, persons, shots and identity."""
        p: FaceParams = self.params
        assert self._backend is not None
        n_frames, n_tracks = sequence.n_frames, len(tracks.summaries)
        shots = sequence.shots
        info = self.model_info()
        return {
            "backend": self.spec.backend, "model": info.get("id"), "model_source": info.get("source"),
            "au_names": list(AU_NAMES), "emotion_names": list(EMOTION_NAMES), "pose_names": list(POSE_NAMES),
            "gaze_names": list(GAZE_NAMES),
            "analysis_fps": p.analysis_fps, "frames_decoded": stats.decoded, "frames_analysed": n_frames,
            "frames_corrupt": stats.corrupt, "session_origin": stats.origin, "start_offset": stats.start,
            "frame_width": sequence.size[0], "frame_height": sequence.size[1],
            "n_tracks": n_tracks, "n_landmarks": self._backend.n_landmarks,
            "fps_analysed": round(n_frames / elapsed, 2) if elapsed > 0 else None,
            "params": self.spec.params_dict(),
            "n_persons": int(tracks.person.max() + 1) if n_tracks else 0, "n_shots": int(shots.shot + 1),
            "cut_times": shots.cut_times, "identity_model": self._identity_model(),
            "identity_params": {
                "threshold": sequence.identities.threshold, "metric": "euclidean (L2-normalised embeddings)",
                "identity_every_s": p.identity_every_s, "max_embeddings_per_track": p.max_embeddings_per_track,
                "cut_threshold": p.cut_threshold, "cut_ratio": shots.ratio,
                "largest_jump_within_a_shot": round(shots.max_within_shot, 3),
                "embeddings_computed": sequence.embeddings_computed,
                "embedding_seconds": round(sequence.embedding_seconds, 3),
                "tracks_without_embedding": int((tracks.n_embeddings == 0).sum()),
                **(self._embedder.info if self._embedder is not None else {})},
            "identity_splits": tracks.splits,
            **self._backend.kinds, **self._backend.info,
            **({"person_kind": "identity off: every track is a person of its own"} if p.identity == "off" else {}),
            **({"note": note} if note else {}),
        }


# (array, its last dimension and that dimension's labels, attrs): xarray reads them as labelled data.
_DENSE = [("au", "au_name", AU_NAMES, {"names": list(AU_NAMES)}),
          ("emotion", "emotion_name", EMOTION_NAMES, {"names": list(EMOTION_NAMES)}),
          ("pose", "angle", POSE_NAMES, {"names": list(POSE_NAMES), "units": "degrees"}),
          ("box", "box_edge", ("x0", "y0", "x1", "y1"), {"names": ["x0", "y0", "x1", "y1"], "units": "px"}),
          ("score", None, (), {}), ("mouth_open", None, (), {"description": "lip aperture / mouth width"}),
          ("landmarks", "xyz", ("x", "y", "z"), {"names": ["x", "y", "z"], "units": "px"}),
          ("gaze", "gaze_name", GAZE_NAMES, {"names": list(GAZE_NAMES), "units": "unit vectors; angles in radians",
                                             "description": "eye gaze, OpenFace's columns (ether_prep.face.gaze)"})]


def _write_dense(out: zarr.Group, spool: DetectionSpool, name: str, tracks: Tracks, n_frames: int,
                 attrs: dict[str, Any], dims: tuple[str, ...]) -> None:
    """The (frame, track, ...) array ``name`` from the spooled detections, one chunk of frames at a time."""
    shape, dtype = spool.fields[name]
    n_tracks = len(tracks.summaries)
    arr = create_array(out, name, (n_frames, n_tracks, *shape), dtype, attrs=attrs, dims=dims)
    for a, b, block in spool.dense_blocks(name, tracks.frame, tracks.track, n_frames, n_tracks, arr.chunks[0]):
        arr[a:b] = block


def _write_plan(out: zarr.Group, plan: FramePlan) -> None:
    """The frame plan, in the first window's group: the join decodes frames again by it."""
    for name in ("pts", "kept", "time", "keyframes"):
        write_array(out, f"plan_{name}", getattr(plan, name), dims=(f"plan_{name}",))
    out.attrs["plan_time_base"] = list(plan.time_base)
    out.attrs["plan_origin"] = plan.origin


def _read_plan(g: zarr.Group) -> FramePlan:
    """The frame plan :func:`_write_plan` stored."""
    from ..adapters.pyav import FramePlan

    return FramePlan(tuple(int(x) for x in g.attrs["plan_time_base"]),  # type: ignore[arg-type]
                     *(np.asarray(g[f"plan_{name}"][...]) for name in ("pts", "kept", "time", "keyframes")),
                     origin=g.attrs.get("plan_origin"))


@dataclass
class _WindowFrames:
    """What one window measures: per analysed frame (time, size, face count, shot-signature difference from the
    frame before) and per face (``_WINDOW_ROWS``, identity embeddings), in frame order."""

    times: list[float] = field(default_factory=list)
    sizes: list[tuple[int, ...]] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    cut_scores: list[float | None] = field(default_factory=list)
    rows: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in _WINDOW_ROWS})
    identity: list[np.ndarray | None] = field(default_factory=list)

    def add(self, frame: VideoFrame, faces: FrameFaces) -> None:
        self.times.append(frame.time)
        self.sizes.append(frame.rgb.shape[1::-1])
        self.counts.append(faces.n)
        desc = descriptors(frame.rgb, faces)
        values = (faces.boxes, faces.scores, faces.landmarks, faces.aus, faces.emotions, faces.pose,
                  faces.mouth_open, desc if desc is not None else np.zeros((0, 64), np.float32), frame_gaze(faces))
        for key, value in zip(_WINDOW_ROWS, values, strict=True):
            self.rows[key].append(value)
        self.identity.append(faces.identity)

    def write(self, out: zarr.Group) -> None:
        """Into a window's scratch group, for :meth:`FaceStage._replay`."""
        write_array(out, "time", np.asarray(self.times, dtype=np.float64))
        write_array(out, "size", np.asarray(self.sizes, dtype=np.int64).reshape(-1, 2), dims=("time", "wh"))
        write_array(out, "n_faces", np.asarray(self.counts, dtype=np.int64), dims=("time",))
        write_array(out, "cut_score", np.array([np.nan if x is None else x for x in self.cut_scores], np.float64),
                    dims=("time",))
        for key, values in self.rows.items():
            data = np.concatenate(values) if values else np.zeros((0,), np.float32)
            write_array(out, key, data, dims=("row", *(f"d{i}" for i in range(1, data.ndim))))
        with_faces = [x for x, c in zip(self.identity, self.counts, strict=True) if c]
        if with_faces and all(x is not None for x in with_faces):
            write_array(out, "identity", np.concatenate(with_faces), dims=("row", "embedding"))


@dataclass(frozen=True)
class FaceOutputs:
    """A session's face stage output, in memory: F analysed frames, T tracks (NaN where a track has no face)."""

    time: np.ndarray  # (F,) seconds
    au: np.ndarray  # (F, T, A)
    emotion: np.ndarray  # (F, T, E)
    pose: np.ndarray  # (F, T, 3) yaw, pitch, roll
    box: np.ndarray  # (F, T, 4)
    score: np.ndarray  # (F, T)
    mouth_open: np.ndarray  # (F, T)
    au_names: list[str]
    emotion_names: list[str]
    tracks: list[FaceTrack]
    gaze: np.ndarray  # (F, T, 8) GAZE_NAMES (NaN in a store written before gaze existed)

    @property
    def present(self) -> np.ndarray:
        """(F, T) whether each track has a face in each frame."""
        return np.isfinite(self.score)

    @property
    def person(self) -> np.ndarray:
        """(T,) person of each track column."""
        return np.array([t.person for t in self.tracks], dtype=np.int64)


def read_faces(store: SessionGroup) -> FaceOutputs | None:
    """The face stage's output for one session; None when the stage was skipped (no video).

    Stores written before persons existed (face stage version 1) read with every track its own person.
    """
    if store.stage_state("face").state == "skipped":
        return None
    g = store.stage_group("face")
    if "au" not in g:
        return None
    arrays = {k: np.asarray(g[k][...], dtype=np.float64) for k in ("time", "au", "emotion", "pose", "box", "score",
                                                                    "mouth_open")}
    t = read_table(g, "tracks")
    n = arrays["au"].shape[1]
    person = t["person"] if "person" in t else np.arange(n)
    shot = t["shot"] if "shot" in t else np.zeros(n, np.int64)
    tracks = [FaceTrack(int(t["track"][i]), float(t["first_time"][i]), float(t["last_time"][i]),
                        int(t["n_frames"][i]), (float(t["box_x0"][i]), float(t["box_y0"][i]),
                                                float(t["box_x1"][i]), float(t["box_y1"][i])),
                        int(person[i]), int(shot[i])) for i in range(n)]
    gaze = (np.asarray(g["gaze"][...], dtype=np.float64) if "gaze" in g
            else np.full((*arrays["score"].shape, len(GAZE_NAMES)), np.nan))
    return FaceOutputs(**arrays, au_names=list(g["au"].attrs["names"]),
                       emotion_names=list(g["emotion"].attrs["names"]), tracks=tracks, gaze=gaze)


@dataclass(frozen=True)
class FaceCounts:
    """How many video frames the face stage decoded of one session, and how many packets failed to."""

    frames_decoded: int
    frames_corrupt: int


def read_face_counts(store: SessionGroup) -> FaceCounts | None:
    """The face stage's frame counts of one session (None when it is not done there); no array is read."""
    if store.stage_state("face").state != "done":
        return None
    attrs = store.stage_group("face").attrs
    return FaceCounts(int(attrs.get("frames_decoded", 0)), int(attrs.get("frames_corrupt", 0)))


@dataclass(frozen=True)
class FaceBlock:
    """The faces of a run of analysed frames (``frames``: absolute indices; arrays (F, T, ...) as stored;
    ``landmarks`` (F, T, L, 2 or 3) or None when the backend gave none)."""

    frames: np.ndarray
    times: np.ndarray
    box: np.ndarray
    score: np.ndarray
    au: np.ndarray
    emotion: np.ndarray
    pose: np.ndarray
    mouth: np.ndarray
    landmarks: np.ndarray | None
    gaze: np.ndarray  # (F, T, 8) GAZE_NAMES; NaN in a store written before gaze existed


class FaceStream:
    """The face stage's output of one session opened for reading a chunk of frames at a time (nothing is held
    whole: exports of long recordings stay in bounded memory)."""

    def __init__(self, group: Any) -> None:
        self._group = group
        self.au_names: list[str] = list(group["au"].attrs["names"])
        self.emotion_names: list[str] = list(group["emotion"].attrs["names"])
        self.n_tracks = int(group["box"].shape[1])
        self.person: np.ndarray | None = group["person"][...] if "person" in group else None

    def blocks(self) -> Iterator[FaceBlock]:
        g = self._group
        times = g["time"][...]
        rows = max(1, g["au"].chunks[0])
        has_landmarks, has_gaze = "landmarks" in g, "gaze" in g
        for a in range(0, g["box"].shape[0], rows):
            b = min(a + rows, g["box"].shape[0])
            gaze = g["gaze"][a:b] if has_gaze else np.full((b - a, self.n_tracks, len(GAZE_NAMES)), np.nan)
            yield FaceBlock(np.arange(a, b), times[a:b], g["box"][a:b], g["score"][a:b], g["au"][a:b],
                            g["emotion"][a:b], g["pose"][a:b], g["mouth_open"][a:b],
                            g["landmarks"][a:b] if has_landmarks else None, gaze)


def open_faces(store: SessionGroup) -> FaceStream | None:
    """The face stage's output of one session for block reads; None when the stage was skipped (no video); a
    StoreError when it is not complete."""
    group = store.stage_group("face")
    return FaceStream(group) if "au" in group else None
