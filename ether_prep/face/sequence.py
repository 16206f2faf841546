"""One recording's faces over time: shot cuts, tracks, identity samples, and the detections spooled to disk.

:class:`FaceSequence` takes the analysed frames in time order with their :class:`~ether_prep.face.FrameFaces`
(:meth:`~FaceSequence.add`) and keeps what the face stage writes at the end: per-frame times and shots, every
detection with its track, each track's identity samples. Tracks end at shot cuts (no track continues across
one) and split where a track's identity embedding changes; see :mod:`ether_prep.face.tracking`,
:mod:`~ether_prep.face.shots` and :mod:`~ether_prep.face.identity`. Detections go to temporary files
(:mod:`~ether_prep.face.spool`), so memory stays flat however long the recording.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..scratch import ScratchDir
from . import AU_NAMES, EMOTION_NAMES, GAZE_NAMES, FrameFaces
from .gaze import frame_gaze
from .identity import TrackIdentities, cannot_link_pairs, cluster_persons
from .shots import ShotDetector
from .spool import DetectionSpool
from .tracking import FaceTracker, TrackSummary, appearance_descriptor

if TYPE_CHECKING:
    from ..adapters.pyav import VideoFrame
    from .backends import Embedder

__all__ = ["FaceSequence", "Tracks", "descriptors"]


def descriptors(rgb: np.ndarray, faces: FrameFaces) -> np.ndarray | None:
    """(n, 64) appearance descriptors of a frame's faces for the tracker (None: no face)."""
    return np.stack([appearance_descriptor(rgb, b) for b in faces.boxes]) if faces.n else None


@dataclass(frozen=True)
class Tracks:
    """The kept tracks of a finished sequence, numbered 0.. in order of first appearance."""

    summaries: list[TrackSummary]
    frame: np.ndarray  # (R,) analysed-frame index of every spooled detection
    track: np.ndarray  # (R,) its track column (-1: a dropped track)
    shot: np.ndarray  # (T,) the shot each track lives in
    person: np.ndarray  # (T,) person id of each track
    identity: np.ndarray  # (T, E) mean identity embedding (NaN rows: none)
    n_embeddings: np.ndarray  # (T,)
    splits: list[dict[str, Any]]  # tracks split where the face changed


class FaceSequence:
    """The frame loop's state for one recording (use as a context manager: it owns temporary files)."""

    def __init__(self, n_landmarks: int, min_hits: int, max_gap_s: float, appearance_weight: float,
                 cut_threshold: float | None, embedder: Embedder | None, threshold: float, every_s: float,
                 max_per_track: int) -> None:
        """Detections are spooled into a private temporary folder of this sequence's own (see
        :mod:`ether_prep.scratch`), removed by :meth:`close`."""
        self.tracker = FaceTracker(max_gap_s=max_gap_s, appearance_weight=appearance_weight, min_hits=min_hits)
        self.shots = ShotDetector(cut_threshold)
        self.identities = TrackIdentities(every_s=every_s, max_per_track=max_per_track, min_hits=min_hits,
                                          threshold=threshold)
        self.embedder = embedder
        self.dim = (embedder.dim if embedder is not None else None) or 0  # py-feat's: known at its first face
        self.embeddings_computed = 0
        self.embedding_seconds = 0.0
        self.n_frames = 0
        self.size = (0, 0)  # width, height of the last frame
        self._scratch = ScratchDir("face")
        try:
            for sub in ("detections", "frames"):
                os.mkdir(self._scratch.path / sub, 0o700)
            self.detections = DetectionSpool({
                "frame": ((), np.int64), "track": ((), np.int64), "au": ((len(AU_NAMES),), np.float32),
                "emotion": ((len(EMOTION_NAMES),), np.float32), "pose": ((3,), np.float32),
                "box": ((4,), np.float32), "score": ((), np.float32), "mouth_open": ((), np.float32),
                "landmarks": ((n_landmarks, 3), np.float32), "gaze": ((len(GAZE_NAMES),), np.float32)},
                self._scratch.path / "detections")
            self.frames = DetectionSpool({"time": ((), np.float64), "shot": ((), np.int32)},
                                         self._scratch.path / "frames")
        except BaseException:
            self._scratch.close()
            raise

    def add(self, frame: VideoFrame, faces: FrameFaces) -> None:
        """Record one analysed frame (frames in time order)."""
        h, w = frame.rgb.shape[:2]
        self.add_measured(frame.time, (w, h), self.shots.difference(frame.rgb), faces,
                          descriptors(frame.rgb, faces), lambda: frame)

    def add_measured(self, t: float, size: tuple[int, int], cut_score: float | None, faces: FrameFaces,
                     desc: np.ndarray | None, frame: Callable[[], VideoFrame]) -> None:
        """Record one analysed frame from what was measured on its pixels: its size, its shot
        signature's difference from the previous frame's, each face's appearance descriptor. ``frame`` gives the
        pixels, asked for only when a face is due an identity embedding (a window join decodes that frame again).
        """
        self.size = size
        if self.shots.decide(t, cut_score):
            self.tracker.end_all()  # no track continues across a cut
        self.frames.append(time=np.array([t]), shot=np.array([self.shots.shot]))
        ids = self.tracker.assign(t, faces.boxes, desc)
        if faces.n and self.embedder is not None:
            self._identify(t, frame, faces, ids)
        self.tracker.commit(t, faces.boxes, ids)
        if faces.n:
            self.detections.append(frame=np.full(faces.n, self.n_frames), track=ids, au=faces.aus,
                                   emotion=faces.emotions, pose=faces.pose, box=faces.boxes, score=faces.scores,
                                   mouth_open=faces.mouth_open, landmarks=faces.landmarks, gaze=frame_gaze(faces))
        self.n_frames += 1

    def _identify(self, t: float, frame: Callable[[], VideoFrame], faces: FrameFaces, ids: np.ndarray) -> None:
        """Embed the detections that are due; split tracks whose face changed."""
        assert self.embedder is not None
        want = self.identities.due(t, ids)
        if not want.any():
            return
        t0 = time.perf_counter()
        emb = self.embedder.embed(frame() if self.embedder.needs_frame else None, faces, want)
        if emb is None:
            return
        if self.embedder.dim is None:  # a backend's own embedding: nothing computed here
            self.dim = emb.shape[1]
        else:
            self.embeddings_computed += len(emb)
            self.embedding_seconds += time.perf_counter() - t0
        for c, e in zip(np.flatnonzero(want), emb, strict=True):
            if not np.isfinite(e).all():
                continue  # py-feat gives NaN where its identity branch is off
            distance = self.identities.add(int(ids[c]), t, e)
            if distance is not None and distance > self.identities.threshold:
                new = self.tracker.split(int(ids[c]), t)
                self.identities.restart(int(ids[c]), new, t, e, distance)
                ids[c] = new

    def tracks(self) -> Tracks:
        """Keep tracks seen in enough frames (a clip shorter than that keeps all), renumbered in order of
        first appearance; cluster them into persons (two tracks in one frame are never one person)."""
        tracker = self.tracker
        min_frames = min(tracker.min_hits, max(self.n_frames, 1))
        summaries = [s for s in tracker.summaries if s.n_frames >= min_frames]
        remap = np.full(len(tracker.summaries) + 1, -1, dtype=np.int64)
        for new, s in enumerate(summaries):
            remap[s.track] = new
        frame = self.detections.read("frame")
        track = remap[self.detections.read("track")] if self.detections.rows else np.zeros(0, np.int64)
        identity, n_embeddings = self.identities.means([s.track for s in summaries], self.dim)
        person = cluster_persons(identity, cannot_link_pairs(frame, track), self.identities.threshold)
        # A track lives in one shot (the tracker ends tracks at cuts): the shot of its first row.
        kept = np.flatnonzero(track >= 0)
        _, first = np.unique(track[kept], return_index=True)
        shot = self.frames.read("shot")[frame[kept[first]]].astype(np.int64)
        splits = [{"track": int(remap[x.track]), "new_track": int(remap[x.new_track]), "time": x.time,
                   "last_same_time": x.last_same_time, "distance": round(x.distance, 4)}
                  for x in self.identities.splits]
        return Tracks(summaries, frame, track, shot, person, identity, n_embeddings, splits)

    def close(self) -> None:
        try:
            self.detections.close()
            self.frames.close()
        finally:
            self._scratch.close()

    def __enter__(self) -> FaceSequence:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
