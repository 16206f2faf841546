"""Per-utterance face tensors: the speaker's and the listener's face features on a time grid, pooled.

Grid, resampling, pooling
-------------------------
The grid runs from ``max(0, start - pad)`` in steps of ``1 / rate`` up to and including the last step
``<= end + pad``. A grid time takes the linear interpolation of the two analysed frames around it when
both have a face and are at most 1.5 frame intervals apart, else the nearest frame with a face within
half a frame interval; otherwise the mask is false and the values are 0 (so a masked step never puts a
NaN into a loss). Pooled statistics (mean, std, max per feature, and the fraction of steps with a face)
are taken over the steps inside ``[start, end]`` only, not the padding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..face.features import step_feature_names
from .cues import face_cues
from .linking import frame_interval

__all__ = ["UtteranceTensors", "cut_utterances", "feature_names", "frame_means", "offsets_from_lengths", "padded",
           "pool", "resample_track", "utterance_grid"]


def utterance_grid(start: float, end: float, pad: float, rate: float) -> np.ndarray:
    """Times ``max(0, start - pad) + k / rate`` for k = 0.. up to the last one ``<= end + pad``."""
    t0 = max(0.0, float(start) - pad)
    t1 = float(end) + pad
    n = int(np.floor((t1 - t0) * rate + 1e-9)) + 1
    return t0 + np.arange(max(n, 1), dtype=np.float64) / rate


def resample_track(times: np.ndarray, features: np.ndarray, present: np.ndarray, grid: np.ndarray,
                   dt: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Resample one track's (F, D) frame features onto ``grid``: (G, D) float32 values and a (G,) mask.

    NaN features inside frames that have a face (a feature the backend does not provide) become 0; see
    the module docstring for the interpolation rule. ``dt`` (the frame interval) is computed when None.
    """
    times = np.asarray(times, dtype=np.float64)
    grid = np.asarray(grid, dtype=np.float64)
    dim = features.shape[1] if features.ndim == 2 else 0
    n_grid = grid.size
    values = np.zeros((n_grid, dim), dtype=np.float32)
    mask = np.zeros(n_grid, dtype=bool)
    if times.size == 0 or n_grid == 0:
        return values, mask
    dt = frame_interval(times) if dt is None else dt
    # Only the frames around the grid matter: slicing first keeps an utterance O(its length), not O(session).
    lo = max(int(np.searchsorted(times, grid[0] - 2 * dt)) - 1, 0)
    hi = min(int(np.searchsorted(times, grid[-1] + 2 * dt)) + 1, times.size)
    times = times[lo:hi]
    features = np.asarray(features[lo:hi], dtype=np.float64)
    present = np.asarray(present[lo:hi], dtype=bool)
    if times.size == 0 or not present.any():
        return values, mask
    right = np.clip(np.searchsorted(times, grid, side="left"), 0, times.size - 1)
    left = np.clip(right - 1, 0, times.size - 1)
    # searchsorted "left" puts an exact match on the right; make both neighbours that frame then.
    exact = np.isclose(times[right], grid, atol=1e-9, rtol=0)
    left = np.where(exact, right, left)
    tl, tr = times[left], times[right]
    pl, pr = present[left], present[right]
    feats = np.nan_to_num(features, nan=0.0)
    both = pl & pr & (grid >= tl - 1e-9) & (grid <= tr + 1e-9) & ((tr - tl) <= 1.5 * dt + 1e-9)
    span = np.where(tr > tl, tr - tl, 1.0)
    w = np.clip((grid - tl) / span, 0.0, 1.0)[:, None]
    interp = (1 - w) * feats[left] + w * feats[right]
    # nearest frame with a face within half a frame interval
    dl = np.where(pl, np.abs(grid - tl), np.inf)
    dr = np.where(pr, np.abs(tr - grid), np.inf)
    nearest = np.where(dl <= dr, left, right)
    near_ok = np.minimum(dl, dr) <= 0.5 * dt + 1e-6
    mask = both | near_ok
    values = np.where(both[:, None], interp, feats[nearest]).astype(np.float32)
    values[~mask] = 0.0
    return values, mask


def frame_means(frames: np.ndarray, first: int, hop_s: float, frame_s: float, grid: np.ndarray,
                rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Regular frames (acoustic LLDs) onto a step grid: each step the mean of the frames whose centres fall within
    half a step of it, NaN left out per column. ``frames`` (K, D) are frames ``first..first + K`` of a signal
    framed every ``hop_s`` s (frame k centred at ``k * hop_s + frame_s / 2``). Returns (G, D) float32 means (NaN
    where no frame of that column has a value) and (G,) bool: some frame lies within the step."""
    frames = np.asarray(frames, dtype=np.float64)
    dim = frames.shape[1] if frames.ndim == 2 else 0
    centre = frame_s / 2
    lo = np.ceil((grid - 0.5 / rate - centre) / hop_s - 1e-9).astype(np.int64) - first
    hi = np.ceil((grid + 0.5 / rate - centre) / hop_s - 1e-9).astype(np.int64) - first
    lo, hi = np.clip(lo, 0, len(frames)), np.clip(hi, 0, len(frames))
    finite = np.isfinite(frames)
    # Cumulative sums turn every step's mean into two lookups (steps overlap nothing, but are many).
    sums = np.concatenate([np.zeros((1, dim)), np.cumsum(np.where(finite, frames, 0.0), axis=0)])
    counts = np.concatenate([np.zeros((1, dim)), np.cumsum(finite, axis=0)])
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(n > 0, (sums[hi] - sums[lo]) / n, np.nan)
    return means.astype(np.float32), hi > lo


def pool(values: np.ndarray, mask: np.ndarray, core: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Pooled (3, D) [mean, std, max] over masked steps in ``core`` (NaN when none) and the face coverage.

    ``coverage`` is the fraction of ``core`` steps with a face (0 for an empty core).
    """
    values = np.asarray(values, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    core = np.ones_like(mask) if core is None else np.asarray(core, dtype=bool)
    n_core = int(core.sum())
    sel = mask & core
    dim = values.shape[1] if values.ndim == 2 else 0
    if not sel.any():
        return np.full((3, dim), np.nan, dtype=np.float32), 0.0
    v = values[sel]
    stats = np.stack([v.mean(axis=0), v.std(axis=0), v.max(axis=0)]).astype(np.float32)
    return stats, float(sel.sum() / max(n_core, 1))


def offsets_from_lengths(lengths: Sequence[int] | np.ndarray) -> np.ndarray:
    """(N + 1,) int64 offsets of ragged rows: item ``i`` is ``values[offsets[i]:offsets[i + 1]]``."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)


def feature_names(au_names: Sequence[str], emotion_names: Sequence[str]) -> list[str]:
    """Column names of the per-step face feature vector: AUs, emotions, head pose, mouth opening, gaze angles
    (the order lives in :func:`ether_prep.face.features.step_feature_names`)."""
    return step_feature_names(au_names, emotion_names)


@dataclass
class UtteranceTensors:
    """Every utterance's speaker and listener face tensors, as ragged rows plus per-utterance summaries."""

    offsets: np.ndarray  # (N + 1,) utterance i is rows offsets[i]:offsets[i + 1]
    time: np.ndarray  # (L,) grid times
    face: np.ndarray  # (L, 2, D) [speaker, listener], 0 where masked
    mask: np.ndarray  # (L, 2)
    pooled: np.ndarray  # (N, 2, 3, D) mean/std/max over the core span
    coverage: np.ndarray  # (N, 2)
    grid_t0: np.ndarray  # (N,)
    face_valence: np.ndarray  # (N,) the speaker's face over the core span (NaN without a face)
    face_expressivity: np.ndarray  # (N,)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def item(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """Utterance ``i``'s (face, mask) rows."""
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.face[a:b], self.mask[a:b]


def cut_utterances(starts: np.ndarray, ends: np.ndarray, slots: Sequence[tuple[str, str]],
                   faces: dict[str, tuple[np.ndarray, np.ndarray]], times: np.ndarray, names: Sequence[str],
                   available: np.ndarray, rate_hz: float, pad_s: float) -> UtteranceTensors:
    """Resample each utterance's speaker and listener faces onto its grid, pool them, score the speaker's face.

    ``slots[i]`` is (speaker, listener) of utterance ``i``; ``faces`` maps a speaker label to that person's
    (F, D) features and (F,) presence over the analysed frame ``times`` (absent: no face, masked out).
    ``available`` marks features the face backend gives (the others get no statistics).
    """
    dim = len(names)
    n = len(slots)
    frame_dt = frame_interval(times)
    pooled = np.full((n, 2, 3, dim), np.nan, dtype=np.float32)
    coverage = np.zeros((n, 2), dtype=np.float64)
    valence = np.full(n, np.nan)
    expressivity = np.full(n, np.nan)
    grids, values_, masks = [], [], []
    for i, who in enumerate(slots):
        start, end = float(starts[i]), float(ends[i])
        grid = utterance_grid(start, end, pad_s, rate_hz)
        core = (grid >= start - 1e-9) & (grid <= end + 1e-9)
        values = np.zeros((grid.size, 2, dim), dtype=np.float32)
        mask = np.zeros((grid.size, 2), dtype=bool)
        for j, person in enumerate(who):
            if person not in faces:
                continue
            feats, present = faces[person]
            values[:, j], mask[:, j] = resample_track(times, feats, present, grid, frame_dt)
            pooled[i, j], coverage[i, j] = pool(values[:, j], mask[:, j], core)
            if not available.all():  # a feature the backend never gives has no statistics
                pooled[i, j][:, ~available] = np.nan
        valence[i], expressivity[i] = face_cues(values[core, 0], mask[core, 0], names, available)
        grids.append(grid)
        values_.append(values)
        masks.append(mask)
    return UtteranceTensors(
        offsets=offsets_from_lengths([g.size for g in grids]),
        time=np.concatenate(grids) if grids else np.zeros(0),
        face=np.concatenate(values_) if values_ else np.zeros((0, 2, dim), np.float32),
        mask=np.concatenate(masks) if masks else np.zeros((0, 2), bool),
        pooled=pooled, coverage=coverage,
        grid_t0=np.array([g[0] for g in grids], dtype=np.float64),
        face_valence=valence, face_expressivity=expressivity,
    )


def padded(tensors: UtteranceTensors, max_len: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-length (N, max_len, 2, D) faces, (N, max_len, 2) masks and lengths; longer utterances are cut."""
    n = tensors.offsets.size - 1
    face = np.zeros((n, max_len, 2, tensors.face.shape[-1]), dtype=np.float32)
    mask = np.zeros((n, max_len, 2), dtype=bool)
    length = np.zeros(n, dtype=np.int64)
    for i in range(n):
        f, m = tensors.item(i)
        k = min(len(f), max_len)
        face[i, :k], mask[i, :k], length[i] = f[:k], m[:k], k
    return face, mask, length
