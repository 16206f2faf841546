"""Timing cues of a conversation, per utterance, from its words and the diarized turns. Pure numpy.

Per utterance (times in seconds, rates in words per second):

- ``speech_rate``: words / (end - start);
- ``articulation_rate``: words / (end - start - inner pauses): the pace while actually talking;
- ``pause_before_s``: silence between the end of the latest speech (the words of other utterances, anyone's,
  begun by its start) and its start; 0 when someone was still talking, NaN for a session's first utterance;
- ``n_pauses``, ``pause_s``: gaps of at least ``min_pause_s`` between consecutive words inside the utterance,
  their count and total;
- ``response_latency_s``: for a reply, its start minus the end of the utterance it follows: the one, of those
  that began before it, that ended last, when that one is another speaker's (negative: the reply started
  before the other speaker finished); NaN for a speaker going on after their own utterance and for the first;
- ``overlap_s``: seconds of the utterance during which its speaker and another one talk at once, by the
  diarized turns (a diarizer that finds overlapped speech) or by the words (channels transcribed apart).
  Words and turns are not mixed: a word edge next to the other speaker's turn edge is alignment jitter, not
  overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..records import Turn

__all__ = ["TIMING_NAMES", "timing_cues"]

TIMING_NAMES = ("speech_rate", "articulation_rate", "pause_before_s", "n_pauses", "pause_s",
                "response_latency_s", "overlap_s")


def _merge(spans: Sequence[tuple[float, float]]) -> np.ndarray:
    """Sorted, non-overlapping (K, 2) union of the spans given."""
    out: list[list[float]] = []
    for a, b in sorted((float(a), float(b)) for a, b in spans if b > a):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def _intersect(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Intersection of two merged span lists (as :func:`_merge` returns)."""
    out = []
    i = j = 0
    while i < len(x) and j < len(y):
        a, b = max(x[i, 0], y[j, 0]), min(x[i, 1], y[j, 1])
        if b > a:
            out.append((a, b))
        if x[i, 1] < y[j, 1]:
            i += 1
        else:
            j += 1
    return np.asarray(out, dtype=np.float64).reshape(-1, 2)


def _seconds_within(spans: np.ndarray, start: float, end: float) -> float:
    """Seconds of merged ``spans`` inside [start, end]."""
    if not len(spans):
        return 0.0
    return float(np.clip(np.minimum(spans[:, 1], end) - np.maximum(spans[:, 0], start), 0.0, None).sum())


def _overlap_spans(speaker: str, by_speaker: dict[str, np.ndarray]) -> np.ndarray:
    """Where ``speaker`` and anyone else are active at once, in one source (words or turns)."""
    own = by_speaker.get(speaker)
    if own is None or not len(own):
        return np.zeros((0, 2))
    others = _merge([tuple(s) for k, v in by_speaker.items() if k != speaker for s in v])
    return _intersect(own, others)


def _spans_by_speaker(speakers: Sequence[str], starts: Sequence[float], ends: Sequence[float]) -> dict[str, np.ndarray]:
    grouped: dict[str, list[tuple[float, float]]] = {}
    for k, a, b in zip(speakers, starts, ends, strict=True):
        grouped.setdefault(str(k), []).append((float(a), float(b)))
    return {k: _merge(v) for k, v in grouped.items()}


def _inner_pauses(starts: np.ndarray, ends: np.ndarray, min_pause_s: float) -> tuple[int, float]:
    """Count and total of the gaps of at least ``min_pause_s`` between consecutive words of one utterance."""
    if len(starts) < 2:
        return 0, 0.0
    order = np.argsort(starts, kind="stable")
    reach = np.maximum.accumulate(ends[order])[:-1]  # a long word can cover the next one
    gaps = starts[order][1:] - reach
    long = gaps[gaps >= min_pause_s]
    return int(long.size), float(long.sum())


def _previous(i: int, starts: np.ndarray, ends: np.ndarray) -> int:
    """The utterance that began before ``i`` (ties: the earlier row) and ended last; -1 when none."""
    earlier = np.flatnonzero((starts < starts[i]) | ((starts == starts[i]) & (np.arange(len(starts)) < i)))
    return int(earlier[np.argmax(ends[earlier])]) if earlier.size else -1


def timing_cues(utterances: dict[str, Any], words: dict[str, Any], turns: Sequence[Turn],
                min_pause_s: float = 0.25) -> np.ndarray:
    """(N, len(TIMING_NAMES)) float64 cues of the ``N`` utterances (columns ``start``, ``end``, ``speaker``,
    ``word_start``, ``word_end`` as the utterances stage stores them) from their ``words`` (``start``, ``end``,
    ``speaker``) and the diarized ``turns`` (see the module docstring)."""
    starts = np.asarray(utterances.get("start", []), dtype=np.float64)
    ends = np.asarray(utterances.get("end", []), dtype=np.float64)
    n = len(starts)
    out = np.full((n, len(TIMING_NAMES)), np.nan, dtype=np.float64)
    if not n:
        return out
    speakers = [str(s) for s in utterances["speaker"]]
    w_start = np.asarray(words["start"], dtype=np.float64)
    w_end = np.asarray(words["end"], dtype=np.float64)
    by_words = _spans_by_speaker(words["speaker"], w_start, w_end)
    by_turns = _spans_by_speaker([t.speaker for t in turns], [t.start for t in turns], [t.end for t in turns])
    overlap = {k: _merge([*map(tuple, _overlap_spans(k, by_words)), *map(tuple, _overlap_spans(k, by_turns))])
               for k in set(speakers)}
    for i in range(n):
        a, b = int(utterances["word_start"][i]), int(utterances["word_end"][i])
        duration = ends[i] - starts[i]
        n_pauses, pause_s = _inner_pauses(w_start[a:b], w_end[a:b], min_pause_s)
        talking = duration - pause_s
        prev = _previous(i, starts, ends)
        before = w_start <= starts[i]  # other utterances' words begun by then (a zero-length last word too)
        before[a:b] = False
        out[i] = (
            (b - a) / duration if duration > 0 else np.nan,
            (b - a) / talking if talking > 0 else np.nan,
            max(starts[i] - float(w_end[before].max()), 0.0) if before.any() else np.nan,
            n_pauses, pause_s,
            starts[i] - ends[prev] if prev >= 0 and speakers[prev] != speakers[i] else np.nan,
            _seconds_within(overlap[speakers[i]], starts[i], ends[i]),
        )
    return out
