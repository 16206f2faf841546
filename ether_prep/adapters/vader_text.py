"""VADER adapter: lexicon-based text sentiment. The only module that imports ``vaderSentiment``.

VADER (Hutto & Gilbert 2014) ships its lexicon (7,506 entries, valences on -4..+4) inside the package, so
it needs no download. It scores valence only; the arousal proxy and distress score built from it are
defined in :mod:`ether_prep.cues`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

__all__ = ["TextScores", "score_texts"]

# Words that signal distress in counselling talk but that VADER lacks or rates as neutral or positive
# ("overwhelmed" is +0.2 there). Valences on VADER's -4..+4 scale.
EXTRA_DISTRESS: dict[str, float] = {
    "afraid": -1.9,
    "overwhelmed": -1.5,
    "overwhelming": -1.5,
    "panicking": -2.3,
    "burnt": -1.5,
    "burned-out": -1.9,
    "sleepless": -1.5,
    "self-harm": -3.0,
    "cutting": -1.0,
}

_TOKEN = re.compile(r"[a-z][a-z'\-]*")


@dataclass(frozen=True)
class TextScores:
    """VADER's scores for one text, plus the most negative word valence found (0 when none)."""

    compound: float  # -1..1
    pos: float
    neu: float
    neg: float
    min_word_valence: float  # most negative lexicon valence of any word (-4..0)
    most_negative_word: str


@cache
def _analyzer() -> Any:
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def score_texts(texts: Sequence[str]) -> list[TextScores]:
    """Score each text with VADER's ``polarity_scores`` and find its most negative lexicon word."""
    analyzer = _analyzer()
    lexicon = analyzer.lexicon
    out = []
    for text in texts:
        text = str(text or "")
        s = analyzer.polarity_scores(text)
        worst, worst_word = 0.0, ""
        for tok in _TOKEN.findall(text.lower()):
            val = EXTRA_DISTRESS.get(tok, lexicon.get(tok, lexicon.get(tok.strip("'-"), 0.0)))
            if val < worst:
                worst, worst_word = float(val), tok
        out.append(TextScores(float(s["compound"]), float(s["pos"]), float(s["neu"]), float(s["neg"]),
                              worst, worst_word))
    return out
