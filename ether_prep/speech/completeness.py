"""The transcribe stage's completeness guard, as pure functions on words and spans.

Whisper decoding a chunk that holds several turns can skip one and give its audio to a neighbouring word
(the first word after it stretches back over it, the last word before it forward). These functions find
speech without words, plan its re-decoding and put every word back inside speech.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np

from ..records import Span, Word
from .text import normalize_text
from .timing import voiced_spans

__all__ = [
    "cut_long_words",
    "cut_stretched_words",
    "drop_echoes",
    "place_words_in_speech",
    "redecode_windows",
    "refine_speech_regions",
    "restore_cut_words",
    "shift_words",
    "speech_coverage",
    "subtract_spans",
    "uncovered_speech",
]


def _merge_spans(spans: Iterable[Span]) -> list[Span]:
    out: list[list[float]] = []
    for s, e in sorted(spans):
        if out and s <= out[-1][1]:
            out[-1][1] = max(out[-1][1], e)
        else:
            out.append([s, e])
    return [(float(s), float(e)) for s, e in out]


def refine_speech_regions(regions: Sequence[Span], energy_db: np.ndarray, hop: float = 0.01, rel: float = 0.35,
                          min_pause: float = 0.3, min_speech: float = 0.1) -> list[Span]:
    """VAD regions cut to the voiced signal inside them: quiet edges trimmed, quiet pauses of ``min_pause`` s split.

    A VAD region with no voiced frame at all is kept whole: the VAD heard speech the energy cannot confirm
    (soft speech next to a loud speaker), and coverage must still be measured there.
    """
    voiced = np.asarray(voiced_spans(energy_db, hop, rel, min_pause), dtype=np.float64).reshape(-1, 2)
    out: list[Span] = []
    for s, e in regions:
        inside = voiced[(voiced[:, 1] > s) & (voiced[:, 0] < e)]
        if not len(inside):
            out.append((float(s), float(e)))
            continue
        out.extend((max(a, s), min(b, e)) for a, b in inside)
    return [(s, e) for s, e in _merge_spans(out) if e - s >= min_speech]


def subtract_spans(regions: Sequence[Span], spans: Iterable[Span]) -> list[Span]:
    """The parts of ``regions`` that no span covers."""
    cuts = sorted(spans)
    out = []
    for s, e in regions:
        cur = s
        for a, b in cuts:
            if b <= cur or a >= e:
                continue
            if a > cur:
                out.append((cur, a))
            cur = max(cur, b)
        if cur < e:
            out.append((cur, e))
    return out


def speech_coverage(regions: Sequence[Span], words: Sequence[Word], slack: float = 0.0) -> tuple[float, float]:
    """Seconds of speech and seconds of it that word spans cover, each span widened by ``slack`` s per side
    (the precision of word edges, as in :func:`uncovered_speech`)."""
    total = float(sum(e - s for s, e in regions))
    left = subtract_spans(regions, [(w["start"] - slack, w["end"] + slack) for w in words])
    return total, total - float(sum(e - s for s, e in left))


def uncovered_speech(regions: Sequence[Span], words: Sequence[Word], slack: float = 0.15,
                     min_len: float = 0.3) -> list[Span]:
    """Stretches of speech of at least ``min_len`` s that no word covers.

    A word covers its span widened by ``slack`` s on each side: cross-attention word edges are good to about
    0.15 s, so a pause a word was squeezed away from is not mistaken for speech without words.
    """
    spans = [(w["start"] - slack, w["end"] + slack) for w in words]
    return [(s, e) for s, e in subtract_spans(regions, spans) if e - s >= min_len]


def cut_stretched_words(words: Sequence[Word], regions: Sequence[Span]) -> tuple[list[Word], int]:
    """Cut every word that spans the pause between two speech regions down to one of them.

    Alignment gives the audio of skipped speech to the word next to it, so the word belongs on the side of
    its neighbours in the text: the first region when the previous word ends there, the last when the next
    word starts there, otherwise the region it overlaps most. Words must be in time order; returns the words
    and how many were cut.
    """
    out = [dict(w) for w in words]
    if len(regions) < 2:
        return out, 0
    reg = np.asarray(regions, dtype=np.float64)
    n_cut = 0
    for i, w in enumerate(out):
        overlap = np.minimum(reg[:, 1], w["end"]) - np.maximum(reg[:, 0], w["start"])
        touched = np.flatnonzero(overlap > 0)
        if len(touched) < 2:
            continue
        first, last = int(touched[0]), int(touched[-1])
        prev_here = i > 0 and out[i - 1]["end"] > reg[first, 0]
        next_here = i + 1 < len(out) and out[i + 1]["start"] < reg[last, 1]
        keep = int(touched[np.argmax(overlap[touched])])  # both neighbours here, or neither
        if prev_here != next_here:
            keep = first if prev_here else last
        w["start"], w["end"] = max(w["start"], reg[keep, 0]), min(w["end"], reg[keep, 1])
        n_cut += 1
    return out, n_cut


def cut_long_words(words: Sequence[Word], slack: float = 0.15, factor: float = 3.0, floor: float = 1.0
                   ) -> tuple[list[Word], int]:
    """Cut every word far longer than its text takes to say (over ``factor`` times that and over ``floor`` s)
    down to that length, on the side of its neighbours in the text.

    Whisper skipping words inside one stretch of speech gives their audio to a word next to them ("is the
    [apostle of the middle classes and we are glad] to welcome" came out as a 2.3 s "the"): cut back, that
    audio is speech without words, which the guard re-decodes. A word takes about 0.1 s plus 0.08 s per
    letter (12 letters a second). It keeps its start when the previous word ends at it (within ``slack``)
    and the next does not start at its end; its end in the opposite case. A cut word keeps its extent in
    ``cut``, so that re-decoding may reach into it (:func:`redecode_windows`) and it gets its extent back if
    nothing is found there (:func:`restore_cut_words`). Words must be in time order; returns the words and
    how many were cut.
    """
    out = [dict(w) for w in words]
    n_cut = 0
    for i, w in enumerate(out):
        length = 0.1 + 0.08 * max(len("".join(normalize_text(str(w["text"])))), 1)
        if w["end"] - w["start"] <= max(floor, factor * length):
            continue
        prev_here = i > 0 and out[i - 1]["end"] >= w["start"] - slack
        next_here = i + 1 < len(out) and out[i + 1]["start"] <= w["end"] + slack
        w["cut"] = (w["start"], w["end"])
        if next_here and not prev_here:
            w["start"] = w["end"] - length
        else:
            w["end"] = w["start"] + length
        n_cut += 1
    return out, n_cut


def restore_cut_words(words: Sequence[Word]) -> tuple[list[Word], int]:
    """Give each word :func:`cut_long_words` cut back its extent again when re-decoding found no word there
    (``source: redecode``: it was said slowly, not over skipped words); returns the words, without ``cut``,
    and how many stay cut."""
    out = [dict(w) for w in words]
    found = [(o["start"], o["end"]) for o in out if o.get("source") == "redecode"]
    n_cut = 0
    for w in out:
        if (extent := w.pop("cut", None)) is None:
            continue
        if any(s < extent[1] and e > extent[0] for s, e in found):
            n_cut += 1
        else:
            w["start"], w["end"] = extent
    return out, n_cut


def redecode_windows(uncovered: Sequence[Span], words: Sequence[Word], duration: float, pad: float = 0.3,
                     max_len: float = 30.0) -> list[Span]:
    """Windows to re-decode: uncovered stretches with no word between them joined (up to ``max_len`` s),
    each widened by up to ``pad`` s (VAD edges are late on soft onsets) without reaching a word. Next to a
    word that was ``cut`` back, the window takes in the whole word instead: its length is a guess, and what it
    hid may begin inside it (the word, decoded again, is dropped as an echo)."""
    by_start = sorted(words, key=lambda w: w["start"])
    starts = np.array([w["start"] for w in by_start], dtype=np.float64)
    by_end = sorted(words, key=lambda w: w["end"])
    ends = np.array([w["end"] for w in by_end], dtype=np.float64)
    joined: list[list[float]] = []
    for s, e in sorted(uncovered):
        if joined and e - joined[-1][0] <= max_len and not ((starts >= joined[-1][1]) & (starts < s)).any():
            joined[-1][1] = e
        else:
            joined.append([s, e])
    out = []
    for s, e in joined:
        lo, hi = max(s - pad, 0.0), min(e + pad, duration)
        if (i := int(np.searchsorted(ends, s + 1e-9, side="right")) - 1) >= 0:
            before = by_end[i]
            lo = max(before["start"], 0.0) if before.get("cut") else max(lo, before["end"])
        if (j := int(np.searchsorted(starts, e - 1e-9, side="left"))) < len(by_start):
            after = by_start[j]
            hi = min(after["end"], duration) if after.get("cut") else min(hi, after["start"])
        out.append((lo, max(hi, lo)))
    return out


def shift_words(words: Sequence[Word], start: float, end: float) -> list[Word]:
    """Words decoded from the audio of ``[start, end]`` moved to recording time and kept inside that window."""
    out = []
    for w in words:
        s = min(max(w["start"] + start, start), end)
        out.append({**w, "start": s, "end": min(max(w["end"] + start, s), end)})
    return out


def drop_echoes(words: Sequence[Word], new: Sequence[Word], within: float = 0.5) -> tuple[list[Word], list[Word]]:
    """Split re-decoded words ``new`` into those to keep and echoes: words repeating a word already there (same
    normalised text, less than ``within`` s apart), which a re-decoding window reaching its edge decodes again."""
    if not new:
        return [], []
    lo, hi = min(w["start"] for w in new) - within, max(w["end"] for w in new) + within
    old = [(normalize_text(str(w["text"])), w["start"], w["end"]) for w in words if w["end"] > lo and w["start"] < hi]
    keep: list[Word] = []
    echoes: list[Word] = []
    for w in new:
        text = normalize_text(str(w["text"]))
        echo = any(t == text and w["start"] - e < within and s - w["end"] < within for t, s, e in old)
        (echoes if echo else keep).append(w)
    return keep, echoes


def place_words_in_speech(words: Sequence[Word], regions: Sequence[Span], energy_db: np.ndarray,
                          hop: float = 0.01, rel: float = 0.35, max_extend: float = 0.5
                          ) -> tuple[list[Word], list[Span]]:
    """Put every word inside speech, in time order, without overlaps; returns the words and the regions.

    A word running past a region edge over voiced signal shows the VAD closed early (soft onsets and word
    ends): the region grows over that voiced stretch, up to ``max_extend`` s. Otherwise the word is clamped
    into the region it overlaps most; a word that overlaps no region is moved to the nearest region's edge
    and flagged ``interpolated`` (its time is no longer measured). Words must be in time order.
    """
    if not regions:
        return [dict(w) for w in words], []
    reg = np.asarray(regions, dtype=np.float64).copy()
    voiced = np.asarray(voiced_spans(energy_db, hop, rel), dtype=np.float64).reshape(-1, 2)

    def voiced_run(t: float) -> tuple[float, float] | None:
        hit = voiced[(voiced[:, 0] < t) & (voiced[:, 1] > t)]
        return (float(hit[0, 0]), float(hit[0, 1])) if len(hit) else None

    out = []
    for w in words:
        w = dict(w)
        overlap = np.minimum(reg[:, 1], w["end"]) - np.maximum(reg[:, 0], w["start"])
        if (overlap > 0).any():
            k = int(np.argmax(overlap))
        else:
            mid = (w["start"] + w["end"]) / 2
            k = int(np.argmin(np.maximum(reg[:, 0] - mid, 0) + np.maximum(mid - reg[:, 1], 0)))
        s, e = reg[k]
        if w["start"] < s and (run := voiced_run(s)) is not None:
            reg[k, 0] = s = max(run[0], s - max_extend, w["start"], reg[k - 1, 1] if k else 0.0)
        if w["end"] > e and (run := voiced_run(e)) is not None:
            reg[k, 1] = e = min(run[1], e + max_extend, w["end"], reg[k + 1, 0] if k + 1 < len(reg) else np.inf)
        if w["end"] <= s or w["start"] >= e:
            w["interpolated"] = True
        w["start"] = min(max(w["start"], s), e)
        w["end"] = min(max(w["end"], w["start"]), e)
        out.append(w)
    out.sort(key=lambda w: w["start"])
    for a, b in itertools.pairwise(out):
        a["end"] = max(min(a["end"], b["start"]), a["start"])
    return out, _merge_spans(map(tuple, reg))
