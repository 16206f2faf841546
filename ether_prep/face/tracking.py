"""Face tracking across frames: stable track ids from box overlap, motion and appearance.

Each analysed frame's detections are matched to live tracks with the Hungarian algorithm
(:func:`ether_prep.adapters.scipy_optimize.best_assignment`) on a similarity that mixes

- position: IoU with the track's box predicted at this frame's time (constant velocity), and centre distance
  relative to face size, so a face that moved fast between sparse analysed frames still matches;
- appearance: the Bhattacharyya coefficient of small colour histograms of the inner face region (skin,
  hair, lighting differ between people), so two faces that cross keep their ids when their boxes overlap.

A track that finds no detection survives ``max_gap_s`` seconds (blinks of the detector, a hand in front of
the face) before it is retired; a later detection then starts a new track. A new track is *tentative* until
it has been seen in ``min_hits`` consecutive analysed frames: a tentative track that misses a frame is
retired at once, so a one-frame false detection (text, a pattern) never captures the real face that appears
later nearby; the caller drops tracks with fewer than ``min_hits`` frames. Track ids are integers in order
of first appearance.

Tracks follow boxes, so two people filmed in turn at the same place would share one track: the caller ends
every live track at a shot cut (:meth:`FaceTracker.end_all`, see :mod:`ether_prep.face.shots`) and gives a
track a new id where its identity embedding changes (:meth:`FaceTracker.split`, see
:mod:`ether_prep.face.identity`), between :meth:`FaceTracker.assign` and :meth:`FaceTracker.commit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..adapters.scipy_optimize import best_assignment
from ..boxes import iou_matrix

__all__ = ["FaceTracker", "TrackSummary", "appearance_descriptor"]

_HIST_BINS = 4  # per RGB channel: 64-bin histogram


def appearance_descriptor(rgb: np.ndarray, box: np.ndarray, samples: int = 24) -> np.ndarray:
    """A 64-bin colour histogram of the inner 60% of ``box`` (square-rooted, so dot products are
    Bhattacharyya coefficients). Sub-sampled to ``samples`` x ``samples`` pixels: cheap at any resolution."""
    h, w = rgb.shape[:2]
    x0, y0, x1, y1 = (float(v) for v in box)
    mx, my = 0.2 * (x1 - x0), 0.2 * (y1 - y0)
    xs = np.clip(np.linspace(x0 + mx, x1 - mx, samples), 0, w - 1).astype(np.intp)
    ys = np.clip(np.linspace(y0 + my, y1 - my, samples), 0, h - 1).astype(np.intp)
    patch = rgb[ys[:, None], xs[None, :]].reshape(-1, 3).astype(np.intp) * _HIST_BINS // 256
    codes = (patch[:, 0] * _HIST_BINS + patch[:, 1]) * _HIST_BINS + patch[:, 2]
    hist = np.bincount(codes, minlength=_HIST_BINS**3).astype(np.float32)
    return np.sqrt(hist / max(hist.sum(), 1.0))


@dataclass
class TrackSummary:
    """Running per-track statistics (for the ``tracks`` table)."""

    track: int
    first_time: float
    last_time: float
    n_frames: int = 0
    box_sum: np.ndarray = field(default_factory=lambda: np.zeros(4))

    @property
    def mean_box(self) -> np.ndarray:
        return self.box_sum / max(self.n_frames, 1)


@dataclass
class _Live:
    track: int
    box: np.ndarray
    velocity: np.ndarray  # box units per second
    time: float
    descriptor: np.ndarray | None
    hits: int = 1


class FaceTracker:
    """Online tracker: call :meth:`update` once per analysed frame, in time order.

    ``appearance_weight`` is the share of appearance in the similarity (0 = position only);
    ``max_center_distance`` gates matches by centre distance in face sizes.
    """

    def __init__(self, max_gap_s: float = 1.0, appearance_weight: float = 0.4,
                 max_center_distance: float = 1.5, min_similarity: float = 0.2, min_hits: int = 1) -> None:
        self.max_gap_s = max_gap_s
        self.min_hits = min_hits
        self.appearance_weight = appearance_weight
        self.max_center_distance = max_center_distance
        self.min_similarity = min_similarity
        self.live: list[_Live] = []
        self.summaries: list[TrackSummary] = []

    def _predict(self, t: float) -> np.ndarray:
        if not self.live:
            return np.zeros((0, 4))
        # Extrapolate at most half a second: a velocity estimate goes stale quickly.
        return np.stack([tr.box + tr.velocity * min(t - tr.time, 0.5) for tr in self.live])

    def _similarity(self, t: float, boxes: np.ndarray, descriptors: np.ndarray | None) -> np.ndarray:
        pred = self._predict(t)
        iou = iou_matrix(pred, boxes)
        cp = (pred[:, :2] + pred[:, 2:]) / 2
        cd = (boxes[:, :2] + boxes[:, 2:]) / 2
        size_p = np.sqrt(np.clip((pred[:, 2] - pred[:, 0]) * (pred[:, 3] - pred[:, 1]), 1e-6, None))
        size_d = np.sqrt(np.clip((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6, None))
        dist = np.linalg.norm(cp[:, None, :] - cd[None, :, :], axis=2) / ((size_p[:, None] + size_d[None, :]) / 2)
        proximity = np.clip(1.0 - dist / self.max_center_distance, 0.0, 1.0)
        position = 0.5 * iou + 0.5 * proximity
        sim = position
        if descriptors is not None and self.appearance_weight > 0:
            app = np.zeros_like(position)
            for i, tr in enumerate(self.live):
                if tr.descriptor is not None:
                    app[i] = descriptors @ tr.descriptor
                else:
                    app[i] = position[i]
            sim = (1 - self.appearance_weight) * position + self.appearance_weight * app
        # Gate: a detection far from a track's predicted place never continues it.
        return np.where(proximity > 0, sim, -1.0)

    def update(self, t: float, boxes: np.ndarray, descriptors: np.ndarray | None = None) -> np.ndarray:
        """Assign track ids to this frame's detections (``boxes`` (n, 4), optional ``descriptors`` (n, D))
        and count them in the track summaries: :meth:`assign` then :meth:`commit`."""
        ids = self.assign(t, boxes, descriptors)
        self.commit(t, boxes, ids)
        return ids

    def assign(self, t: float, boxes: np.ndarray, descriptors: np.ndarray | None = None) -> np.ndarray:
        """Match this frame's detections to live tracks (or start new ones); returns their track ids.
        Call :meth:`commit` with the (possibly :meth:`split`) ids before the next frame."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        self.live = [tr for tr in self.live if t - tr.time <= self.max_gap_s]
        ids = np.full(len(boxes), -1, dtype=np.int64)
        matched: set[int] = set()
        if len(boxes) and self.live:
            sim = self._similarity(t, boxes, descriptors)
            rows, cols = best_assignment(sim)
            for r, c in zip(rows, cols, strict=True):
                if sim[r, c] >= self.min_similarity:
                    ids[c] = self.live[r].track
                    matched.add(r)
                    self._advance(self.live[r], t, boxes[c], None if descriptors is None else descriptors[c])
        # Tentative tracks that missed this frame were noise: retire them now.
        self.live = [tr for i, tr in enumerate(self.live) if i in matched or tr.hits >= self.min_hits]
        for c in np.flatnonzero(ids < 0):
            track = len(self.summaries)
            self.summaries.append(TrackSummary(track, t, t))
            desc = None if descriptors is None else np.asarray(descriptors[c], dtype=np.float32)
            self.live.append(_Live(track, boxes[c].copy(), np.zeros(4), t, desc))
            ids[c] = track
        return ids

    def commit(self, t: float, boxes: np.ndarray, ids: np.ndarray) -> None:
        """Count this frame's detections (``boxes``, final ``ids``) in the track summaries."""
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        for c, track in enumerate(ids):
            s = self.summaries[track]
            s.last_time = t
            s.n_frames += 1
            s.box_sum += boxes[c]

    def split(self, track: int, t: float) -> int:
        """Give live ``track`` a new id from time ``t`` on (its face changed); returns the new id. The
        detection at ``t`` belongs to the new track: split between :meth:`assign` and :meth:`commit`."""
        new = len(self.summaries)
        self.summaries.append(TrackSummary(new, t, t))
        for tr in self.live:
            if tr.track == track:
                tr.track = new
        return new

    def end_all(self) -> None:
        """Retire every live track (a shot cut: no track continues across it)."""
        self.live = []

    @staticmethod
    def _advance(tr: _Live, t: float, box: np.ndarray, desc: np.ndarray | None) -> None:
        dt = t - tr.time
        if dt > 0:
            # Smoothed velocity: detector jitter should not fling the prediction.
            tr.velocity = 0.5 * tr.velocity + 0.5 * (box - tr.box) / dt
        tr.box = box.copy()
        tr.time = t
        tr.hits += 1
        if desc is not None:
            # A slow-moving appearance model: robust to a frame of motion blur or occlusion.
            tr.descriptor = desc if tr.descriptor is None else 0.9 * tr.descriptor + 0.1 * desc
            tr.descriptor = tr.descriptor / max(float(np.linalg.norm(tr.descriptor)), 1e-9)
