"""Word timing on the signal: frame energy, word edges trimmed where they run into silence, times filled in for
words the aligner could not place, and the voiced stretches of a recording. Pure numpy."""

from __future__ import annotations

import numpy as np

from ..records import Span, Word

__all__ = ["fill_missing_times", "frame_energy_db", "refine_word_times", "voiced_spans"]


def frame_energy_db(audio: np.ndarray, sample_rate: int = 16000, hop: float = 0.01,
                    window: float = 0.05) -> np.ndarray:
    """Short-time energy in dB per ``hop`` frame, smoothed over ``window`` (frame i covers [i*hop, (i+1)*hop))."""
    step = max(round(hop * sample_rate), 1)
    n = len(audio) // step
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    power = np.mean(np.square(audio[: n * step].astype(np.float64)).reshape(n, step), axis=1)
    width = max(round(window / hop), 1)
    if width > 1:
        power = np.convolve(power, np.ones(width) / width, mode="same")
    return 10.0 * np.log10(power + 1e-12)


def _energy_threshold(energy_db: np.ndarray, rel: float) -> float:
    """A level ``rel`` of the way from the noise floor (10th percentile) to loud speech (97th)."""
    floor, loud = np.percentile(energy_db, [10, 97])
    return float(floor + rel * (loud - floor))


def refine_word_times(words: list[Word], energy_db: np.ndarray, hop: float = 0.01, rel: float = 0.35,
                      pause: float = 0.3) -> list[Word]:
    """Trim word edges that run into silence.

    Cross-attention alignment (and wav2vec2 on noisy audio) stretches the first word after a pause back to
    the start of the VAD segment, and the last word before a pause into the silence after it. For words at
    such edges (first/last of the list, or next to a gap of at least ``pause`` s, or longer than twice the
    median word), move the start forward to the first frame above an energy threshold and the end back to
    the last one. Words where no frame passes the threshold are left alone.
    """
    if not words or energy_db.size == 0:
        return words
    thr = _energy_threshold(energy_db, rel)
    loud = energy_db > thr
    durations = np.array([w["end"] - w["start"] for w in words])
    long_word = 2.0 * float(np.median(durations[durations > 0])) if (durations > 0).any() else np.inf
    out = []
    for i, w in enumerate(words):
        w = dict(w)
        a, b = int(np.floor(w["start"] / hop)), int(np.ceil(w["end"] / hop))
        seg = loud[max(a, 0): min(b, loud.size)]
        if seg.any() and not w.get("interpolated", False):
            lead_edge = i == 0 or w["start"] - words[i - 1]["end"] >= pause or durations[i] > long_word
            tail_edge = (i == len(words) - 1 or words[i + 1]["start"] - w["end"] >= pause
                         or durations[i] > long_word)
            first, last = int(np.argmax(seg)), int(seg.size - 1 - np.argmax(seg[::-1]))
            if lead_edge:
                w["start"] = max(w["start"], (max(a, 0) + first) * hop)
            if tail_edge:
                w["end"] = min(w["end"], (max(a, 0) + last + 1) * hop)
            w["end"] = max(w["end"], w["start"])
        out.append(w)
    return out


def fill_missing_times(words: list[Word]) -> list[Word]:
    """Give words without a time (NaN start/end, e.g. numbers wav2vec2 cannot align) interpolated times.

    A run of untimed words shares the gap between its timed neighbours evenly and is flagged
    ``interpolated=True``; no word is ever dropped.
    """
    out = [dict(w) for w in words]
    n = len(out)
    i = 0
    while i < n:
        if np.isfinite(out[i]["start"]) and np.isfinite(out[i]["end"]):
            i += 1
            continue
        j = i
        while j < n and not (np.isfinite(out[j]["start"]) and np.isfinite(out[j]["end"])):
            j += 1
        left = out[i - 1]["end"] if i > 0 else (out[j]["start"] if j < n else 0.0)
        right = out[j]["start"] if j < n else left
        right = max(right, left)
        step = (right - left) / (j - i)
        for k in range(i, j):
            out[k]["start"] = left + (k - i) * step
            out[k]["end"] = left + (k - i + 1) * step
            out[k]["interpolated"] = True
        i = j
    return out


def voiced_spans(energy_db: np.ndarray, hop: float = 0.01, rel: float = 0.35, min_pause: float = 0.3
                 ) -> list[Span]:
    """Stretches above the voicing level of :func:`refine_word_times`, with quiet dips under ``min_pause`` s filled."""
    if energy_db.size == 0:
        return []
    loud = np.concatenate([[0], (energy_db > _energy_threshold(energy_db, rel)).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(loud))
    spans: list[list[float]] = []
    for a, b in zip(edges[::2] * hop, edges[1::2] * hop, strict=True):
        if spans and a - spans[-1][1] < min_pause:
            spans[-1][1] = float(b)
        else:
            spans.append([float(a), float(b)])
    return [(a, b) for a, b in spans]


def longest_pause(energy_db: np.ndarray, target: float, hop: float = 0.01, rel: float = 0.35) -> tuple[float, float]:
    """Where to cut a signal near ``target`` s: the middle of its longest pause (frames below the voicing level
    of :func:`voiced_spans`; of two pauses as long, the nearer ``target``) and that pause's length in seconds.

    A signal without loud and quiet parts (under 10 dB between them) is one pause if it is quiet (digital
    silence, a quiet room: under -55 dB), else it has none (a steady tone, noise): then its quietest frame near
    ``target`` is given, with length 0, so the caller can say the cut falls in sound.
    """
    n = energy_db.size
    if n == 0:
        return target, 0.0
    lowest, floor, loud = np.percentile(energy_db, [1, 10, 97])
    if loud - lowest < 10.0:
        if loud < -55.0:
            return target, n * hop
        i = int(np.argmin(energy_db + 1e-9 * np.abs(np.arange(n) * hop - target)))  # ties: nearest the target
        return (i + 0.5) * hop, 0.0
    # A stretch of speech may pause for less than a tenth of its time: its floor is then at most 30 dB under
    # loud speech.
    floor = min(floor, loud - 30.0)
    quiet = np.concatenate([[0], (energy_db <= floor + rel * (loud - floor)).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(quiet)) * hop
    a, b = max(zip(edges[::2], edges[1::2], strict=True),
               key=lambda p: (round(p[1] - p[0], 6), -abs((p[0] + p[1]) / 2 - target)))
    return float(a + b) / 2, float(b - a)
