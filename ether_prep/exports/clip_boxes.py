"""Where a clip's frames are cut from: crop boxes that follow the faces of a clip's people, smoothed over the
clip so the picture neither jitters nor zooms, and the face boxes a de-identified clip pixelates. Pure NumPy."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

__all__ = ["Crop", "crop_track", "face_boxes_at", "output_size", "person_boxes", "pixelate"]


@dataclass(frozen=True)
class Crop:
    """A clip's crop: ``boxes`` (n, 4) integer x0, y0, x1, y1 per output frame, all of one size; ``coverage``
    per person asked for: the fraction of the clip's analysed frames showing that person's face (None: the
    person has no face linked)."""

    boxes: np.ndarray
    coverage: list[float | None]

    @property
    def size(self) -> tuple[int, int]:
        b = self.boxes[0]
        return int(b[2] - b[0]), int(b[3] - b[1])

    @property
    def mean_box(self) -> list[int]:
        return [round(v) for v in self.boxes.mean(axis=0)]


def person_boxes(box: np.ndarray, track_person: np.ndarray, person: int) -> np.ndarray:
    """(F, 4) the face box of ``person`` in each analysed frame (its tracks merged: a person is on at most one
    track a frame), NaN where that person has no face; ``box`` is the face stage's (F, T, 4)."""
    out = np.full((box.shape[0], 4), np.nan)
    for col in np.flatnonzero(np.asarray(track_person) == person):
        here = np.isfinite(box[:, col, 0]) & ~np.isfinite(out[:, 0])
        out[here] = box[here, col]
    return out


def _smooth_track(times: np.ndarray, t: np.ndarray, values: np.ndarray, sigma: float) -> np.ndarray:
    """``values`` (seen at ``t``) at ``times``, interpolated (held past the ends) and smoothed by a Gaussian of
    ``sigma`` frames over the clip's frame grid extended on both sides, so the clip's first and last frames
    are smoothed with what the face did just before and after, not pulled towards a held edge."""
    if sigma <= 0 or len(times) < 2:
        return np.interp(times, t, values)
    radius = int(np.ceil(3 * sigma))
    step = float(times[1] - times[0])
    ahead = step * np.arange(1, radius + 1)
    grid = np.concatenate([times[0] - ahead[::-1], times, times[-1] + ahead])
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    return np.convolve(np.interp(grid, t, values), kernel / kernel.sum(), mode="valid")


def _follow(times: np.ndarray, face_time: np.ndarray, boxes: np.ndarray, span: tuple[float, float],
            scale: float, sigma: float, context_s: float) -> tuple[np.ndarray, float] | None:
    """One person's square box over the clip: centre interpolated between analysed frames (held over gaps and
    beyond the face's last sight), smoothed; side ``scale`` x the median face size. None without a face in the
    clip's span; also the fraction of the span's analysed frames that show the face."""
    inside = (face_time >= span[0]) & (face_time <= span[1])
    seen = np.isfinite(boxes[:, 0])
    if not (seen & inside).any():
        return None
    coverage = float((seen & inside).sum() / max(inside.sum(), 1))
    near = seen & (face_time >= span[0] - context_s) & (face_time <= span[1] + context_s)
    t, b = face_time[near], boxes[near]
    cx = _smooth_track(times, t, (b[:, 0] + b[:, 2]) / 2, sigma)
    cy = _smooth_track(times, t, (b[:, 1] + b[:, 3]) / 2, sigma)
    side = scale * float(np.median(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1), coverage


def crop_track(times: np.ndarray, face_time: np.ndarray, persons: list[np.ndarray | None],
               frame_size: tuple[int, int], scale: float = 1.6, smooth_s: float = 0.5) -> Crop | None:
    """The crop of a clip whose frames are at ``times`` (s) around the faces of ``persons`` (each (F, 4) boxes
    over the analysed frames ``face_time``, or None for a person without a face): one box holding every
    person seen in the clip, of one size for the whole clip (the largest it needs), its centre smoothed with a
    Gaussian of ``smooth_s``; kept inside the frame (``frame_size`` = width, height). None when no person's face
    is in view during the clip."""
    times = np.asarray(times, dtype=np.float64)
    step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0
    span = (float(times[0]), float(times[-1]) + step)
    sigma = smooth_s / step
    followed = [None if b is None else _follow(times, face_time, b, span, scale, sigma, 2 * smooth_s)
                for b in persons]
    coverage = [None if b is None else (0.0 if f is None else f[1]) for b, f in zip(persons, followed, strict=True)]
    tracks = [f[0] for f in followed if f is not None]
    if not tracks:
        return None
    stacked = np.stack(tracks)  # (P, n, 4)
    x0, y0 = stacked[:, :, 0].min(axis=0), stacked[:, :, 1].min(axis=0)
    x1, y1 = stacked[:, :, 2].max(axis=0), stacked[:, :, 3].max(axis=0)
    width, height = frame_size
    w = min(float((x1 - x0).max()), width)
    h = min(float((y1 - y0).max()), height)
    # Even sizes and corners: 4:2:0 video is cut on whole chroma samples (frame_size is even, see ShownFrame).
    w_px, h_px = min(max(2, 2 * round(w / 2)), width - width % 2), min(max(2, 2 * round(h / 2)), height - height % 2)
    cx = np.clip((x0 + x1) / 2, w_px / 2, width - w_px / 2)
    cy = np.clip((y0 + y1) / 2, h_px / 2, height - h_px / 2)
    left = np.clip(2 * np.round((cx - w_px / 2) / 2).astype(np.int64), 0, width - w_px)
    top = np.clip(2 * np.round((cy - h_px / 2) / 2).astype(np.int64), 0, height - h_px)
    left, top = left - left % 2, top - top % 2
    return Crop(np.stack([left, top, left + w_px, top + h_px], axis=1), coverage)


def output_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """The clip's size for a crop of ``width`` x ``height``: its short side ``short_side`` pixels, the other in
    proportion; both even (H.264's 4:2:0 sampling needs it)."""
    scale = short_side / min(width, height)
    return max(2, 2 * round(width * scale / 2)), max(2, 2 * round(height * scale / 2))


def face_boxes_at(face_time: np.ndarray, box: np.ndarray, times: np.ndarray, reach_s: float = 0.5,
                  margin: float = 0.25) -> np.ndarray:
    """(n, T, 4) every track's face box at each of ``times``: the nearest analysed frame within ``reach_s``
    that shows it, grown by ``margin`` of its size on each side (the face moves between analysed frames); NaN
    where none."""
    times = np.asarray(times, dtype=np.float64)
    out = np.full((len(times), box.shape[1], 4), np.nan)
    for col in range(box.shape[1]):
        seen = np.flatnonzero(np.isfinite(box[:, col, 0]))
        if not seen.size:
            continue
        pos = np.clip(np.searchsorted(face_time[seen], times), 1, max(seen.size - 1, 1))
        before, after = seen[np.maximum(pos - 1, 0)], seen[np.minimum(pos, seen.size - 1)]
        nearest = np.where(np.abs(face_time[before] - times) <= np.abs(face_time[after] - times), before, after)
        ok = np.abs(face_time[nearest] - times) <= reach_s
        b = box[nearest, col]
        grow = margin * np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
        grown = np.concatenate([b[:, :2] - grow, b[:, 2:] + grow], axis=1)
        out[ok, col] = grown[ok]
    return out


def pixelate(rgb: np.ndarray, boxes: np.ndarray, cells: int = 8) -> np.ndarray:
    """A copy of ``rgb`` with each box (x0, y0, x1, y1 in its pixels; NaN rows ignored) replaced by a mosaic of
    ``cells`` x ``cells`` blocks of their mean colour: the face is no longer recognisable."""
    out = np.array(rgb, copy=True)
    height, width = out.shape[:2]
    for x0, y0, x1, y1 in boxes:
        if not np.isfinite(x0):
            continue
        a, b = int(np.clip(np.floor(x0), 0, width)), int(np.clip(np.ceil(x1), 0, width))
        c, d = int(np.clip(np.floor(y0), 0, height)), int(np.clip(np.ceil(y1), 0, height))
        if b - a < 1 or d - c < 1:
            continue
        xs = np.linspace(a, b, min(cells, b - a) + 1).round().astype(int)
        ys = np.linspace(c, d, min(cells, d - c) + 1).round().astype(int)
        for r0, r1 in itertools.pairwise(ys):
            for q0, q1 in itertools.pairwise(xs):
                if r1 > r0 and q1 > q0:
                    out[r0:r1, q0:q1] = out[r0:r1, q0:q1].reshape(-1, out.shape[2]).mean(axis=0)
    return out
