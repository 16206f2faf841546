"""Scoring for the tests, with the field's own tools: WER with jiwer, DER with pyannote.metrics. Both score
words after ether-prep's text normalisation (digits spelled out, punctuation dropped)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ether_prep.records import Turn
from ether_prep.speech import normalize_text


def wer(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> float:
    """Word error rate after normalisation; an empty hypothesis is 1.0 (all deleted) against any reference."""
    import jiwer

    ref = normalize_text(reference) if isinstance(reference, str) else list(reference)
    hyp = normalize_text(hypothesis) if isinstance(hypothesis, str) else list(hypothesis)
    if not ref or not hyp:
        return float(len(ref) + len(hyp) > 0)
    return float(jiwer.wer(" ".join(ref), " ".join(hyp)))


def word_errors(reference: str | Sequence[str], hypothesis: str | Sequence[str]) -> int:
    """Substitutions + deletions + insertions after normalisation: bars on short clips are stated as error
    counts, because one misheard word of a 5-word channel is already a WER of 0.2 (and which word a small model
    mishears differs between CPU code paths)."""
    import jiwer

    ref = normalize_text(reference) if isinstance(reference, str) else list(reference)
    hyp = normalize_text(hypothesis) if isinstance(hypothesis, str) else list(hypothesis)
    if not ref or not hyp:
        return len(ref) + len(hyp)
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return int(out.substitutions + out.deletions + out.insertions)


def matched_words(reference: Sequence[str], hypothesis: Sequence[str]) -> list[tuple[int, int]]:
    """(reference index, hypothesis index) of the words an alignment matches exactly, in order (difflib's
    longest matching blocks): timing is scored on these, whatever else the recogniser heard."""
    from difflib import SequenceMatcher

    blocks = SequenceMatcher(a=list(reference), b=list(hypothesis), autojunk=False).get_matching_blocks()
    return [(b.a + k, b.b + k) for b in blocks for k in range(b.size)]


def annotation(turns: Sequence[Turn]):
    """Turns as a pyannote.core Annotation (one track per turn)."""
    from pyannote.core import Annotation, Segment

    ann = Annotation()
    for i, t in enumerate(turns):
        ann[Segment(t.start, t.end), i] = t.speaker
    return ann


def der(reference: Sequence[Turn], hypothesis: Sequence[Turn], collar: float = 0.0,
        skip_overlap: bool = False) -> float:
    """Diarization error rate (pyannote.metrics); ``collar`` is +-collar s around each reference boundary
    (pyannote's own collar is the total width, so it gets twice that)."""
    from pyannote.metrics.diarization import DiarizationErrorRate

    metric = DiarizationErrorRate(collar=2 * collar, skip_overlap=skip_overlap)
    return float(metric(annotation(reference), annotation(hypothesis)))


def read_rttm(path: Path) -> list[Turn]:
    """The speaker turns of a reference RTTM file."""
    turns = []
    for line in path.read_text().splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            turns.append(Turn(float(f[3]), float(f[3]) + float(f[4]), f[7]))
    return turns


def read_stm(path: Path) -> list[tuple[str, float, float, str]]:
    """(speaker, start, end, text) of each line of a reference STM file."""
    rows = []
    for line in path.read_text().splitlines():
        f = line.split(maxsplit=5)
        if len(f) >= 5:
            rows.append((f[2], float(f[3]), float(f[4]), f[5] if len(f) > 5 else ""))
    return rows
