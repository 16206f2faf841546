"""Pure alignment logic over numpy arrays: faces to speakers, per-utterance resampling, pooling, pairs.

Nothing here touches Zarr or a model; the ``align`` stage feeds these functions with what the upstream
stages stored, so every step can be tested on arrays cut from real recordings.

Face-to-speaker linking (:func:`link_tracks`)
    1. *Mouth signal* per track and analysed frame (:func:`mouth_signal`): the face stage's ``mouth_open``
       (jaw opening / lip aperture, 0..~1); where it is missing, the mean of AU25 (lips part) and AU26
       (jaw drop). NaN where the track has no face.
    2. *Mouth movement* (:func:`mouth_movement`): the standard deviation of the mouth signal in a centred
       window (default 0.5 s). Talking opens and closes the mouth several times a second, so movement is
       high while a person speaks and ~0 for a still or silent face whatever its resting opening.
    3. *Speech activity* (:func:`speech_activity`): 1 where a speaker's words (or utterances) cover a frame
       time, else 0, per diarized speaker.
    4. ``corr[t, s]`` is the Pearson correlation of track ``t``'s movement with speaker ``s``'s activity,
       over the frames where the track has a face (at least ``min_frames`` of them, else 0).
    5. Tracks and speakers are matched one-to-one by maximising the summed correlation
       (``scipy.optimize.linear_sum_assignment``); a match with ``corr < min_corr`` is dropped, so a face
       that never speaks, or a speaker with no visible face, stays unlinked.
    6. ``margin = corr - r_alt`` where ``r_alt`` is the best competing correlation in the same row or
       column (the same track with another speaker, or the same speaker with another track; 0 when there
       is no competitor). ``confidence = clip(corr, 0, 1) * clip(margin / corr, 0, 1)``: the correlation
       itself when no alternative comes close, 0 when another track or speaker fits as well.
    7. Fragments: a face track often breaks (the person turns away, is hidden, leaves the frame) and comes
       back as a new track. A still unlinked track that is never on screen together with a speaker's
       linked tracks joins that speaker when its mean box overlaps the speaker's primary track's mean box
       (IoU >= ``min_seat_iou``: same seat; confidence = primary confidence x IoU), or else when its own
       mouth movement correlates best with that speaker (>= ``min_corr``; confidence as in 6). So
       one-to-one holds among faces on screen at the same time, and a person's face survives track breaks.

Per-utterance tensors (:func:`utterance_grid`, :func:`resample_track`, :func:`pool`)
    The grid runs from ``max(0, start - pad)`` in steps of ``1 / rate`` up to and including the last step
    ``<= end + pad``. A grid time takes the linear interpolation of the two analysed frames around it when
    both have a face and are at most 1.5 frame intervals apart, else the nearest frame with a face within
    half a frame interval; otherwise the mask is false and the values are 0 (so a masked step never puts a
    NaN into a loss). Pooled statistics (mean, std, max per feature, and the fraction of steps with a face)
    are taken over the steps inside ``[start, end]`` only, not the padding.

Dialogue pairs (:func:`pair_dialogue`)
    Utterances are walked in time order and grouped into turns (consecutive utterances of one role). Each
    client turn followed directly by a counsellor turn that starts within ``max_gap`` seconds of the client
    turn's end forms one pair: the client's utterances and the counsellor's reply.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

__all__ = [
    "TrackLink",
    "frame_interval",
    "link_tracks",
    "merge_tracks",
    "mouth_movement",
    "mouth_signal",
    "offsets_from_lengths",
    "pair_dialogue",
    "pool",
    "resample_track",
    "speech_activity",
    "str_array",
    "track_presence",
    "utterance_grid",
]


@dataclass(frozen=True)
class TrackLink:
    """A face track and the diarized speaker it is linked to (``speaker == ""`` when unlinked)."""

    track: int
    speaker: str
    confidence: float
    corr: float
    margin: float
    n_frames: int


# ---------------------------------------------------------------------------------------------- linking
def str_array(values: Sequence[object] | np.ndarray) -> np.ndarray:
    """A fixed-width unicode array from anything (zarr returns numpy's variable-width StringDType)."""
    return np.array([str(v) for v in values], dtype=str) if len(values) else np.array([], dtype=str)


def track_presence(score: np.ndarray | None, box: np.ndarray | None = None) -> np.ndarray:
    """(F, T) bool: whether each track has a face in each frame (finite detection score, or finite box)."""
    if score is not None:
        return np.isfinite(np.asarray(score, dtype=np.float64))
    if box is not None:
        return np.isfinite(np.asarray(box, dtype=np.float64)).all(axis=-1)
    raise ValueError("track_presence needs the face stage's score or box array")


def mouth_signal(mouth_open: np.ndarray | None, au: np.ndarray | None = None,
                 au_names: Sequence[str] = ()) -> np.ndarray:
    """(F, T) mouth opening per frame and track: ``mouth_open``, else mean(AU25, AU26); NaN = no face."""
    fallback = None
    if au is not None and au.size:
        cols = [list(au_names).index(n) for n in ("AU25", "AU26") if n in au_names]
        if cols:
            with warnings.catch_warnings():  # all-NaN rows (no face) are meant to stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                fallback = np.nanmean(np.asarray(au, dtype=np.float64)[..., cols], axis=-1)
    if mouth_open is None:
        if fallback is None:
            raise ValueError("no mouth activity: the face stage stored neither mouth_open nor AU25/AU26")
        return fallback
    sig = np.asarray(mouth_open, dtype=np.float64).copy()
    if fallback is not None:
        missing = ~np.isfinite(sig)
        sig[missing] = fallback[missing]
    return sig


def frame_interval(times: np.ndarray) -> float:
    """The typical spacing of analysed frames (median difference), 1.0 when there are fewer than 2."""
    times = np.asarray(times, dtype=np.float64)
    if times.size < 2:
        return 1.0
    return float(np.median(np.diff(times)))


def mouth_movement(signal: np.ndarray, times: np.ndarray, window_s: float = 0.5) -> np.ndarray:
    """(F, T) standard deviation of the mouth signal in a centred window of ``window_s`` (NaN where no face).

    Only frames with a face enter a window; a frame whose window holds fewer than 2 such frames gets 0.
    """
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim == 1:
        signal = signal[:, None]
    n_frames = signal.shape[0]
    half = max(1, round(window_s / frame_interval(times) / 2))
    present = np.isfinite(signal)
    x = np.where(present, signal, 0.0)
    # Windowed sums through cumulative sums: O(F*T) whatever the window.
    zero = np.zeros((1, signal.shape[1]))
    c1 = np.concatenate([zero, np.cumsum(x, axis=0)])
    c2 = np.concatenate([zero, np.cumsum(x * x, axis=0)])
    cn = np.concatenate([zero, np.cumsum(present, axis=0)])
    lo = np.clip(np.arange(n_frames) - half, 0, n_frames)
    hi = np.clip(np.arange(n_frames) + half + 1, 0, n_frames)
    n = cn[hi] - cn[lo]
    s1 = c1[hi] - c1[lo]
    s2 = c2[hi] - c2[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(n >= 2, s2 / np.maximum(n, 1) - (s1 / np.maximum(n, 1)) ** 2, 0.0)
    move = np.sqrt(np.clip(var, 0.0, None))
    move[~present] = np.nan
    return move


def speech_activity(speakers: Sequence[str], word_speaker: Sequence[str], word_start: np.ndarray,
                    word_end: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(S, F) 1.0 where one of speaker ``s``'s intervals covers frame time ``times[f]``, else 0.0."""
    times = np.asarray(times, dtype=np.float64)
    act = np.zeros((len(speakers), times.size))
    word_speaker = str_array(word_speaker)
    starts = np.asarray(word_start, dtype=np.float64)
    ends = np.asarray(word_end, dtype=np.float64)
    for i, spk in enumerate(speakers):
        sel = word_speaker == spk
        for a, b in zip(starts[sel], ends[sel], strict=True):
            act[i, (times >= a) & (times <= b)] = 1.0
    return act


def _masked_corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant."""
    x = x - x.mean()
    y = y - y.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 1e-12 else 0.0


def _box_iou(a: np.ndarray, b: np.ndarray) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def link_tracks(movement: np.ndarray, activity: np.ndarray, speakers: Sequence[str],
                tracks: Sequence[int] | None = None, min_corr: float = 0.2, min_frames: int = 10,
                boxes: np.ndarray | None = None, min_seat_iou: float = 0.3) -> tuple[list[TrackLink], np.ndarray]:
    """Link face tracks to speakers (see the module docstring); returns one link per track and ``corr``.

    ``movement`` is (F, T) (NaN where a track has no face), ``activity`` (S, F). ``boxes`` (T, 4), the
    tracks' mean boxes, enables seat continuity for fragments. ``speaker == ""`` means unlinked.
    """
    from .adapters.scipy_optimize import best_assignment

    movement = np.asarray(movement, dtype=np.float64)
    activity = np.asarray(activity, dtype=np.float64)
    n_tracks = movement.shape[1] if movement.ndim == 2 else 0
    tracks = list(range(n_tracks)) if tracks is None else [int(t) for t in tracks]
    present = np.isfinite(movement)
    corr = np.zeros((n_tracks, len(speakers)))
    n_present = present.sum(axis=0).astype(int) if n_tracks else np.zeros(0, int)
    for t in range(n_tracks):
        ok = present[:, t]
        if n_present[t] < min_frames:
            continue
        for s in range(len(speakers)):
            corr[t, s] = _masked_corr(movement[ok, t], activity[s, ok])
    links = {t: TrackLink(tracks[t], "", 0.0, float(corr[t].max()) if corr.shape[1] else 0.0, 0.0,
                          int(n_present[t])) for t in range(n_tracks)}
    if not (n_tracks and len(speakers)):
        return [links[t] for t in range(n_tracks)], corr
    # 1. one-to-one among all tracks: each speaker's primary face
    rows, cols = best_assignment(corr)
    owner: dict[int, list[int]] = {}  # speaker index -> linked track columns
    for t, s in zip(rows, cols, strict=True):
        r = float(corr[t, s])
        if r < min_corr:
            continue
        rivals = np.concatenate([np.delete(corr[t], s), np.delete(corr[:, s], t)])
        margin = r - max(float(rivals.max()) if rivals.size else 0.0, 0.0)
        confidence = float(np.clip(r, 0, 1) * np.clip(margin / r, 0, 1))
        links[t] = TrackLink(tracks[t], str(speakers[s]), confidence, r, margin, int(n_present[t]))
        owner.setdefault(int(s), []).append(int(t))
    # 2. fragments: a track never on screen together with a speaker's tracks is the same person when it
    #    sits where the primary face sat (seat continuity), or when its own mouth matches that speaker.
    primary = {s: ts[0] for s, ts in owner.items()}
    for t in sorted((t for t in range(n_tracks) if not links[t].speaker), key=lambda t: -n_present[t]):
        best: tuple[float, int, float, float] | None = None  # confidence, speaker, corr, margin
        for s, ts in owner.items():
            if any((present[:, t] & present[:, u]).any() for u in ts):
                continue  # on screen together: two different people
            p = primary[s]
            iou = _box_iou(boxes[t], boxes[p]) if boxes is not None else 0.0
            if iou >= min_seat_iou and np.isfinite(iou):
                cand = (links[p].confidence * iou, s, float(corr[t, s]), links[p].margin)
            elif n_present[t] >= min_frames and corr[t, s] >= min_corr and corr[t, s] == corr[t].max():
                rival = max(float(np.delete(corr[t], s).max()) if corr.shape[1] > 1 else 0.0, 0.0)
                r = float(corr[t, s])
                cand = (float(np.clip(r, 0, 1) * np.clip((r - rival) / r, 0, 1)), s, r, r - rival)
            else:
                continue
            if best is None or cand[0] > best[0]:
                best = cand
        if best is not None:
            conf, s, r, margin = best
            links[t] = TrackLink(tracks[t], str(speakers[s]), float(conf), r, float(margin), int(n_present[t]))
            owner[s].append(t)
    return [links[t] for t in range(n_tracks)], corr


def merge_tracks(features: np.ndarray, present: np.ndarray, cols: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One person's (F, D) features and (F,) presence from the tracks ``cols`` linked to them.

    The tracks never overlap in time (see :func:`link_tracks`); where they would, the first wins.
    """
    n_frames = present.shape[0]
    feats = np.full((n_frames, features.shape[2]), np.nan)
    pres = np.zeros(n_frames, dtype=bool)
    for c in cols:
        take = present[:, c] & ~pres
        feats[take] = features[take, c]
        pres |= take
    return feats, pres


# ------------------------------------------------------------------------------------------ resampling
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


# ---------------------------------------------------------------------------------------------- pairs
def pair_dialogue(ids: Sequence[str], starts: np.ndarray, ends: np.ndarray, roles: Sequence[str],
                  max_gap: float = 10.0) -> list[dict[str, object]]:
    """Client turns and the counsellor replies that follow them (see the module docstring).

    Returns dicts with ``client_utterances`` / ``counsellor_utterances`` (lists of ids, in order),
    ``start`` (client turn start), ``end`` (reply end) and ``gap`` (reply start - client turn end).
    """
    order = np.argsort(np.asarray(starts, dtype=np.float64), kind="stable")
    turns: list[tuple[str, list[int]]] = []
    for i in order:
        role = roles[i]
        if turns and turns[-1][0] == role:
            turns[-1][1].append(int(i))
        else:
            turns.append((role, [int(i)]))
    pairs: list[dict[str, object]] = []
    for (r1, client), (r2, reply) in itertools.pairwise(turns):
        if r1 != "client" or r2 != "counsellor":
            continue
        client_end = float(max(ends[i] for i in client))
        gap = float(starts[reply[0]]) - client_end
        if gap > max_gap:
            continue
        pairs.append({"client_utterances": [ids[i] for i in client],
                      "counsellor_utterances": [ids[i] for i in reply],
                      "start": float(starts[client[0]]), "end": float(max(ends[i] for i in reply)),
                      "gap": gap})
    return pairs
