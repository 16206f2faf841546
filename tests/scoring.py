"""Scoring for the tests, with the field's own tools: WER with jiwer, DER with pyannote.metrics. Both score
words after ether-prep's text normalisation (digits spelled out, punctuation dropped)."""

from __future__ import annotations

from collections.abc import Sequence

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
