"""Words to speakers and utterances: each word takes the speaker whose turns cover it most, and a speaker's
consecutive words become utterances with stable ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..records import Turn, Utterance, Word

__all__ = ["SENTENCE_END", "assign_speakers", "build_utterances", "build_utterances_by_stream", "utterance_id"]

SENTENCE_END = (".", "?", "!", "…")


def assign_speakers(words: list[Word], turns: Sequence[Turn], max_word: float = 1.0,
                    fill_nearest: bool = True) -> list[Word]:
    """Give each word the speaker whose turns cover it most.

    A word longer than ``max_word`` s has usually run into the silence after it, so only its first
    ``max_word`` s are used to vote; a word straddling a speaker change goes to the larger overlap. A word
    in no turn takes the nearest turn's speaker (``fill_nearest``) or ``""``. Where turns of two speakers
    overlap and cover the word alike, the longer turn's speaker takes it.
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
        totals: dict[str, list[float]] = {}
        for j in np.flatnonzero(overlap > 0):
            v = totals.setdefault(speakers[j], [0.0, 0.0])
            v[0] += float(overlap[j])
            v[1] = max(v[1], float(ends[j] - starts[j]))
        if totals:
            # In overlapped speech both speakers cover the word alike: it goes to the one holding the floor
            # (the longer turn), not to a short interjection, which the recogniser rarely transcribes.
            speaker = max(totals.items(), key=lambda kv: (round(kv[1][0], 2), kv[1][1]))[0]
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
