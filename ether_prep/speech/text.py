"""Text normalisation, so that words from different sources compare: the completeness guard's echo check (and
the tests' WER, scored with jiwer) see "P2" and "p two" as the same words."""

from __future__ import annotations

import re

__all__ = ["normalize_text"]

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
