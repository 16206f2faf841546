"""Scoring: text normalisation, word error rate and diarization error rate (pyannote.metrics' conventions)."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from ..records import Turn

__all__ = ["der", "normalize_text", "wer"]

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
    from ..adapters.scipy_optimize import best_assignment

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
