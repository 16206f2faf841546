"""Pure speech logic: word timing fixes, speech regions, clustering, speaker assignment, utterances, metrics.

No model and no heavy library is imported here (numpy always; clustering and assignment go through the
scikit-learn and scipy adapters, imported inside the functions that need them), so this module is cheap to
import and easy to test on hand-made inputs. Words are plain dicts with ``text, start, end, score,
interpolated`` (and ``speaker`` once assigned); turns are :class:`~ether_prep.records.Turn`; all times are
seconds from the start of the recording.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .records import Turn, Utterance

__all__ = [
    "assign_speakers",
    "build_utterances",
    "build_utterances_by_stream",
    "cluster_embeddings",
    "cut_stretched_words",
    "der",
    "drop_echoes",
    "fill_missing_times",
    "frame_energy_db",
    "merge_turns",
    "normalize_text",
    "place_words_in_speech",
    "redecode_windows",
    "refine_speech_regions",
    "refine_word_times",
    "shift_words",
    "speech_coverage",
    "speech_regions",
    "speech_windows",
    "subtract_spans",
    "turns_from_windows",
    "uncovered_speech",
    "utterance_id",
    "voiced_spans",
    "wer",
]

Word = dict[str, Any]
Span = tuple[float, float]
SENTENCE_END = (".", "?", "!", "…")


# ---------------------------------------------------------------------------------------------- word timing
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


# ---------------------------------------------------------------------------------------------- completeness
# Whisper decoding a chunk that holds several turns can skip one and give its audio to a neighbouring word
# (the first word after it stretches back over it, the last word before it forward). These functions find
# speech without words, plan its re-decoding and put every word back inside speech.
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


def speech_coverage(regions: Sequence[Span], words: Sequence[Word]) -> tuple[float, float]:
    """Seconds of speech and seconds of it that word spans cover."""
    total = float(sum(e - s for s, e in regions))
    left = subtract_spans(regions, [(w["start"], w["end"]) for w in words])
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


def redecode_windows(uncovered: Sequence[Span], words: Sequence[Word], duration: float, pad: float = 0.3,
                     max_len: float = 30.0) -> list[Span]:
    """Windows to re-decode: uncovered stretches with no word between them joined (up to ``max_len`` s),
    each widened by up to ``pad`` s (VAD edges are late on soft onsets) without reaching a word."""
    starts = np.sort(np.array([w["start"] for w in words], dtype=np.float64))
    ends = np.sort(np.array([w["end"] for w in words], dtype=np.float64))
    joined: list[list[float]] = []
    for s, e in sorted(uncovered):
        if joined and e - joined[-1][0] <= max_len and not ((starts >= joined[-1][1]) & (starts < s)).any():
            joined[-1][1] = e
        else:
            joined.append([s, e])
    out = []
    for s, e in joined:
        before = ends[ends <= s + 1e-9]
        after = starts[starts >= e - 1e-9]
        lo = max(s - pad, float(before[-1]) if before.size else 0.0, 0.0)
        hi = min(e + pad, float(after[0]) if after.size else duration, duration)
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


# ---------------------------------------------------------------------------------------------- diarization
def speech_regions(voiced: np.ndarray, hop: float, min_speech: float = 0.2, min_silence: float = 0.3
                   ) -> list[tuple[float, float]]:
    """Turn a per-frame voiced flag into (start, end) regions: fill short silences, drop short blips."""
    voiced = np.asarray(voiced, dtype=bool)
    regions: list[list[float]] = []
    idx = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]])))
    for s, e in zip(idx[::2], idx[1::2], strict=True):
        start, end = s * hop, e * hop
        if regions and start - regions[-1][1] < min_silence:
            regions[-1][1] = end
        else:
            regions.append([start, end])
    return [(s, e) for s, e in regions if e - s >= min_speech]


def speech_windows(regions: Sequence[tuple[float, float]], window: float, hop: float,
                   duration: float) -> list[tuple[float, float]]:
    """Fixed-length windows sliding over each speech region (short regions get one centred window)."""
    out = []
    for s, e in regions:
        if e - s <= window:
            c = (s + e) / 2
            a = min(max(c - window / 2, 0.0), max(duration - window, 0.0))
            out.append((a, a + window))
            continue
        t = s
        while t + window < e:
            out.append((t, t + window))
            t += hop
        out.append((e - window, e))
    return out


def cluster_embeddings(embeddings: np.ndarray, num_speakers: int | None = None, min_speakers: int = 1,
                       max_speakers: int = 8, method: str = "spectral", seed: int = 0) -> np.ndarray:
    """Cluster L2-normalised speaker embeddings into speakers; returns labels 0..k-1 by first appearance.

    With ``num_speakers`` the count is fixed; otherwise it is estimated within ``[min_speakers,
    max_speakers]`` by the eigengap of the cosine affinity (spectral) or by silhouette (agglomerative).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=int)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    hi = max(1, min(max_speakers, n))
    if num_speakers is not None:
        k = min(num_speakers, n)
    else:
        k = _estimate_speakers(x, max(1, min(min_speakers, hi)), hi, method)
    if k <= 1:
        return np.zeros(n, dtype=int)
    affinity = np.clip(x @ x.T, 0.0, 1.0)
    from .adapters.sklearn_cluster import agglomerative_labels, spectral_labels

    if method == "spectral":
        labels = spectral_labels(affinity, k, seed)
    elif method == "agglomerative":
        labels = agglomerative_labels(x, k)
    else:
        raise ValueError(f"unknown clustering method {method!r}; use 'spectral' or 'agglomerative'")
    # Relabel by first appearance so SPEAKER_00 is whoever speaks first.
    order = {old: new for new, old in enumerate(dict.fromkeys(labels.tolist()))}
    return np.array([order[v] for v in labels], dtype=int)


def _estimate_speakers(x: np.ndarray, lo: int, hi: int, method: str) -> int:
    if hi <= 1 or len(x) < 3:
        return lo
    affinity = np.clip(x @ x.T, 0.0, 1.0)
    if method == "spectral":
        # Window embeddings of one voice are all fairly alike (cosine 0.5-0.99), so the dense affinity hides
        # the clusters; keep each window's nearest 30% (p-pruning, as in NME-SC) before the eigengap.
        keep = max(2, int(0.3 * len(x)))
        pruned = np.zeros_like(affinity)
        nearest = np.argsort(-affinity, axis=1)[:, :keep]
        np.put_along_axis(pruned, nearest, np.take_along_axis(affinity, nearest, axis=1), axis=1)
        pruned = (pruned + pruned.T) / 2
        lap = np.diag(pruned.sum(axis=1)) - pruned
        eig = np.sort(np.linalg.eigvalsh(lap))[: hi + 1]
        eig = eig / max(eig[-1], 1e-12)
        gaps = np.diff(eig)
        # One speaker: all windows alike, no eigengap stands out (small second eigenvalue).
        k = int(np.argmax(gaps[lo - 1: hi])) + lo
        return max(lo, min(k, hi))
    from .adapters.sklearn_cluster import agglomerative_labels, silhouette

    best, best_k = -1.0, lo
    for k in range(max(lo, 2), hi + 1):
        labels = agglomerative_labels(x, k)
        if len(set(labels)) < 2:
            continue
        score = silhouette(x, labels)
        if score > best:
            best, best_k = score, k
    return 1 if lo == 1 and best < 0.1 else best_k


def turns_from_windows(windows: Sequence[tuple[float, float]], labels: Sequence[int],
                       regions: Sequence[tuple[float, float]], hop: float = 0.05,
                       prefix: str = "SPEAKER_") -> list[Turn]:
    """Speaker turns from labelled overlapping windows, restricted to speech regions.

    Each time step inside a speech region takes the majority label of the windows covering it (the
    nearest window when none does), so overlapping speech is labelled with a speaker, never as silence.
    """
    if not windows or not regions:
        return []
    w = np.asarray(windows, dtype=np.float64)
    lab = np.asarray(labels, dtype=int)
    k = int(lab.max()) + 1
    centres = w.mean(axis=1)
    turns: list[Turn] = []
    for s, e in regions:
        n = max(int(np.ceil((e - s) / hop)), 1)
        t = s + (np.arange(n) + 0.5) * hop
        votes = np.zeros((n, k))
        cover = (w[None, :, 0] <= t[:, None]) & (w[None, :, 1] > t[:, None])
        for j in range(k):
            # Weight windows by closeness of their centre: the middle of a window is its surest part.
            weight = 1.0 / (1e-3 + np.abs(centres[None, lab == j] - t[:, None]))
            votes[:, j] = (cover[:, lab == j] * weight).sum(axis=1)
        empty = votes.sum(axis=1) == 0
        if empty.any():
            nearest = np.abs(centres[None, :] - t[empty, None]).argmin(axis=1)
            votes[np.flatnonzero(empty), lab[nearest]] = 1.0
        best = votes.argmax(axis=1)
        edges = np.flatnonzero(np.diff(best)) + 1
        bounds = [0, *edges.tolist(), n]
        for a, b in itertools.pairwise(bounds):
            turns.append(Turn(start=float(s + a * hop), end=float(min(s + b * hop, e)),
                              speaker=f"{prefix}{int(best[a]):02d}"))
    return merge_turns(turns)


def merge_turns(turns: Iterable[Turn], gap: float = 0.0) -> list[Turn]:
    """Sort turns and merge consecutive ones of the same speaker separated by at most ``gap`` s."""
    out: list[Turn] = []
    for t in sorted(turns, key=lambda t: (t.start, t.end)):
        if out and out[-1].speaker == t.speaker and t.start - out[-1].end <= gap + 1e-9:
            out[-1] = Turn(out[-1].start, max(out[-1].end, t.end), t.speaker)
        else:
            out.append(t)
    return out


# ---------------------------------------------------------------------------------------------- assignment
def assign_speakers(words: list[Word], turns: Sequence[Turn], max_word: float = 1.0,
                    fill_nearest: bool = True) -> list[Word]:
    """Give each word the speaker whose turns cover it most.

    A word longer than ``max_word`` s has usually run into the silence after it, so only its first
    ``max_word`` s are used to vote; a word straddling a speaker change goes to the larger overlap. A word
    in no turn takes the nearest turn's speaker (``fill_nearest``) or ``""``.
    """
    if not turns:
        return [{**w, "speaker": ""} for w in words]
    starts = np.array([t.start for t in turns])
    ends = np.array([t.end for t in turns])
    speakers = [t.speaker for t in turns]
    out = []
    for w in words:
        s = float(w["start"])
        e = min(float(w["end"]), s + max_word)
        if e <= s:  # zero-length words vote with a small window around them
            s, e = s - 0.02, s + 0.02
        overlap = np.minimum(ends, e) - np.maximum(starts, s)
        totals: dict[str, float] = {}
        for j in np.flatnonzero(overlap > 0):
            totals[speakers[j]] = totals.get(speakers[j], 0.0) + float(overlap[j])
        if totals:
            speaker = max(totals.items(), key=lambda kv: kv[1])[0]
        elif fill_nearest:
            mid = (s + e) / 2
            dist = np.maximum(starts - mid, 0) + np.maximum(mid - ends, 0)
            speaker = speakers[int(np.argmin(dist))]
        else:
            speaker = ""
        out.append({**w, "speaker": speaker})
    return out


def utterance_id(session_id: str, index: int) -> str:
    """Stable utterance id: ``"<session>/u00042"``."""
    return f"{session_id}/u{index:05d}"


def build_utterances(words: Sequence[Word], session_id: str, max_gap: float = 1.0,
                     max_duration: float = 15.0) -> list[Utterance]:
    """Group a speaker's consecutive words into utterances.

    A new utterance starts when the speaker changes, at a pause longer than ``max_gap`` s, and at a
    sentence end once the utterance is longer than ``max_duration`` s. ``word_start``/``word_end`` index the
    word table; ``score`` is the mean word score.
    """
    groups: list[list[int]] = []
    for i, w in enumerate(words):
        if groups:
            prev = words[groups[-1][-1]]
            first = words[groups[-1][0]]
            same = w.get("speaker", "") == prev.get("speaker", "")
            long_done = (prev["end"] - first["start"] >= max_duration
                         and str(prev["text"]).rstrip().endswith(SENTENCE_END))
            if same and w["start"] - prev["end"] <= max_gap and not long_done:
                groups[-1].append(i)
                continue
        groups.append([i])
    out = []
    for n, g in enumerate(groups):
        ws = [words[i] for i in g]
        scores = np.array([float(w["score"]) for w in ws], dtype=np.float64)
        out.append(Utterance(
            id=utterance_id(session_id, n), session_id=session_id, start=float(ws[0]["start"]),
            end=float(max(w["end"] for w in ws)), speaker=str(ws[0].get("speaker", "")),
            text=" ".join(str(w["text"]).strip() for w in ws).strip(), word_start=g[0], word_end=g[-1] + 1,
            score=float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan"),
        ))
    return out


def build_utterances_by_stream(words: Sequence[Word], session_id: str, key: str = "channel", max_gap: float = 1.0,
                               max_duration: float = 15.0) -> tuple[list[Word], list[Utterance]]:
    """Utterances built separately per ``key`` stream (e.g. one microphone channel per speaker).

    Two people talking at once on separate channels interleave word by word in time order; grouping
    each stream on its own keeps their sentences whole. Returns the words reordered so that each
    utterance's words are contiguous (utterances in start order) and the utterances indexing them.
    """
    streams: dict[Any, list[Word]] = {}
    for w in sorted(words, key=lambda w: (w["start"], w["end"])):
        streams.setdefault(w.get(key), []).append(w)
    pieces: list[tuple[Utterance, list[Word]]] = []
    for stream in streams.values():
        for u in build_utterances(stream, session_id, max_gap, max_duration):
            pieces.append((u, stream[u.word_start:u.word_end]))
    pieces.sort(key=lambda p: (p[0].start, p[0].end))
    ordered: list[Word] = []
    utts: list[Utterance] = []
    for n, (u, ws) in enumerate(pieces):
        utts.append(Utterance(id=utterance_id(session_id, n), session_id=session_id, start=u.start, end=u.end,
                              speaker=u.speaker, text=u.text, word_start=len(ordered),
                              word_end=len(ordered) + len(ws), score=u.score))
        ordered.extend(ws)
    return ordered, utts


# ---------------------------------------------------------------------------------------------- metrics
_NUMBERS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five", "6": "six",
            "7": "seven", "8": "eight", "9": "nine"}
_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}


def normalize_text(text: str) -> list[str]:
    """Lower-case words with punctuation removed; common abbreviations and single digits spelled out."""
    text = text.lower().replace("’", "'")
    text = re.sub(r"(?<=[a-z])(?=\d)|(?<=\d)(?=[a-z])", " ", text)  # "p2" -> "p 2"
    tokens = re.sub(r"[^a-z0-9' ]+", " ", text).split()
    out = []
    for tok in tokens:
        tok = tok.strip("'")
        if not tok:
            continue
        tok = _ABBREVIATIONS.get(tok, tok)
        out.extend(_NUMBERS[c] for c in tok) if tok.isdigit() and len(tok) <= 1 else out.append(tok)
    return out


def wer(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> float:
    """Word error rate: (substitutions + deletions + insertions) / reference words, after normalisation."""
    ref = normalize_text(reference) if isinstance(reference, str) else list(reference)
    hyp = normalize_text(hypothesis) if isinstance(hypothesis, str) else list(hypothesis)
    if not ref:
        return float(len(hyp) > 0)
    prev = np.arange(len(hyp) + 1)
    for i, r in enumerate(ref, 1):
        cur = np.empty_like(prev)
        cur[0] = i
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return float(prev[-1]) / len(ref)


def der(reference: Sequence[Turn], hypothesis: Sequence[Turn], collar: float = 0.0,
        skip_overlap: bool = False, step: float = 0.001) -> float:
    """Diarization error rate on a fine time grid, with the optimal one-to-one speaker mapping.

    ``collar`` removes +-collar s around every reference boundary from scoring; ``skip_overlap`` removes
    regions where the reference has several speakers (the pyannote.metrics conventions). Overlap, when
    scored, counts every reference speaker: missing one of two is a miss, a wrong one a confusion.
    """
    from .adapters.scipy_optimize import best_assignment

    end = max([t.end for t in (*reference, *hypothesis)], default=0.0)
    n = int(np.ceil(end / step)) + 1
    t = (np.arange(n) + 0.5) * step
    rs = sorted({x.speaker for x in reference})
    hs = sorted({x.speaker for x in hypothesis})
    R = np.zeros((len(rs), n), dtype=bool)
    H = np.zeros((len(hs), n), dtype=bool)
    for x in reference:
        R[rs.index(x.speaker), (t >= x.start) & (t < x.end)] = True
    for x in hypothesis:
        H[hs.index(x.speaker), (t >= x.start) & (t < x.end)] = True
    scored = np.ones(n, dtype=bool)
    if collar > 0:
        for x in reference:
            for b in (x.start, x.end):
                scored &= ~((t > b - collar) & (t < b + collar))
    if skip_overlap:
        scored &= R.sum(axis=0) <= 1
    R, H = R[:, scored], H[:, scored]
    n_ref = R.sum(axis=0)
    n_hyp = H.sum(axis=0)
    total = float(n_ref.sum())
    if total == 0:
        return 0.0
    # Optimal mapping maximises matched (reference, hypothesis) speaker time.
    co = R.astype(np.float64) @ H.T.astype(np.float64) if len(rs) and len(hs) else np.zeros((len(rs), len(hs)))
    correct = np.zeros(R.shape[1])
    if co.size:
        rows, cols = best_assignment(co)
        for r, h in zip(rows, cols, strict=True):
            correct += R[r] & H[h]
    errors = np.maximum(n_ref, n_hyp) - correct
    return float(errors.sum()) / total
