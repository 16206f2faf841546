"""Verbal-visual incongruence cues per utterance: how each number is computed.

These scores rank utterances for annotators; they are not labels. All are computed by the ``align``
stage from the utterance's text and the *speaker's own* face resampled over the utterance's core span
``[start, end]`` (steps with a face only).

Text (VADER, :mod:`ether_prep.adapters.vader_text`)
    - ``text_valence`` = VADER ``compound`` in [-1, 1] (negation- and intensifier-aware).
    - ``text_arousal`` = VADER ``pos + neg`` in [0, 1]: the intensity-weighted share of emotionally
      charged wording. VADER has no arousal dimension; this is a proxy (0 for neutral text).
    - ``text_distress`` = ``max(0, -v_min) / 4`` in [0, 1], where ``v_min`` is the most negative lexicon
      valence (VADER's -4..+4 scale, plus a few counselling words VADER lacks) of any word in the text,
      whatever the sentence's overall compound: "I'm fine, just tired" has compound +0.2 but contains
      "tired" (-1.9), distress 0.475. Negation is not applied here (it is in ``text_valence``).

Face (per step, then averaged over the steps with a face)
    - valence from emotions (when the face backend gives them): ``happiness - (anger + disgust + fear +
      sadness)``, clipped to [-1, 1]; valence from AUs: ``AU12 - (AU04 + AU15) / 2`` (smile against brow
      lowering and lip-corner depression), clipped to [-1, 1]. ``face_valence`` is the mean of those
      available.
    - expressivity from AUs: the mean of the 3 largest "expression" AUs, i.e. all AUs except AU25 and AU26
      (speech moves the jaw and lips) and AU43 (blinks); from emotions: ``1 - neutral``.
      ``face_expressivity`` is the mean of those available (0..1 for AUs and probabilities in 0..1).
    - ``face_coverage`` = fraction of core steps with the speaker's face.

Mismatch and flags (NaN / false when ``face_coverage < min_face_coverage``)
    - ``mismatch = 0.5 * |text_valence - face_valence| / 2 + 0.5 * |text_arousal - face_expressivity|``,
      in [0, 1]: words and face disagreeing in sign or in intensity.
    - ``minimizing``: ``text_distress >= distress_min`` (a word at least as negative as -1.4, e.g. "tired",
      "lonely", "stressed") and a neutral face (``face_expressivity < neutral_max`` and
      ``face_valence > -neutral_valence``): distress in the words, nothing in the face.
    - ``positive_words_negative_face``: ``text_valence >= polar`` and ``face_valence <= -polar / 2``.
    - ``negative_words_positive_face``: ``text_valence <= -polar`` and ``face_valence >= polar / 2``
      (e.g. smiling while describing something painful).

Voice (the ``voice`` stage, where the session has audio: eGeMAPS descriptors over the utterance)
    - ``vocal_arousal`` in [0, 1]: ``1 / (1 + exp(-(z_loudness + z_f0_sd) / 2))``, where ``z_loudness`` is the
      utterance's mean loudness and ``z_f0_sd`` its F0 variability (standard deviation in semitones over voiced
      frames), each as a robust z-score (median, 1.4826 MAD) against the same speaker's utterances of the
      session (against all of the session's when the speaker has fewer than ``min_baseline`` with voice; NaN
      with fewer still): loud, lively speech for that speaker is high, a flat, quiet voice low.
    - Where it is known, the ``voice`` stage gives its own ``voice_mismatch`` and ``voice_flags``
      (:func:`voice_cues`): nonverbal arousal is the mean of ``face_expressivity`` and ``vocal_arousal``
      where both are judged, ``mismatch = 0.5 * |text_valence - face_valence| / 2 + 0.5 * |text_arousal -
      arousal|``; without a face to judge ``mismatch = |text_arousal - vocal_arousal|``; ``minimizing`` also
      needs a flat voice (``vocal_arousal < flat_voice_max``), or only that without a face. ``cue_channels``
      names the channels each utterance's pair of outputs used (``text``, ``face``, ``voice``); where the voice
      is not known they equal ``mismatch`` and the flags above (channels ``text``, ``face``).

Thresholds are ``align`` stage parameters (:class:`CueThresholds`); AU scales differ between face backends
(MediaPipe blendshape proxies vs py-feat intensities), so calibrate them per backend before trusting flags.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["CUE_NAMES", "CUE_THRESHOLDS", "FLAGS", "CueThresholds", "UtteranceCues", "face_cue_steps", "face_cues",
           "utterance_cues", "vocal_arousal", "voice_cues"]

# The per-utterance cue scores, in the order the dataset's items stack them (``cues``).
CUE_NAMES = ("text_valence", "text_arousal", "text_distress", "face_valence", "face_expressivity", "mismatch")
FLAGS = ("minimizing", "positive_words_negative_face", "negative_words_positive_face")
_NEG_EMOTIONS = ("anger", "disgust", "fear", "sadness")
_NON_EXPRESSION_AUS = ("AU25", "AU26", "AU43")


class CueThresholds(Protocol):
    """Thresholds of the candidate flags (see the module docstring); the align stage's parameters have them."""

    min_face_coverage: float
    distress_min: float
    neutral_max: float
    neutral_valence: float
    polar: float


CUE_THRESHOLDS = ("min_face_coverage", "distress_min", "neutral_max", "neutral_valence", "polar")


@dataclass(frozen=True)
class UtteranceCues:
    """All cue scores of one utterance (NaN where the face is missing)."""

    text_valence: float
    text_arousal: float
    text_distress: float
    distress_word: str
    face_valence: float
    face_expressivity: float
    face_coverage: float
    mismatch: float
    flags: tuple[str, ...]


def text_cues(texts: Sequence[str]) -> list[tuple[float, float, float, str]]:
    """(valence, arousal, distress, most negative word) per text, from VADER."""
    from ..adapters.vader_text import score_texts

    return [(s.compound, min(1.0, s.pos + s.neg), max(0.0, -s.min_word_valence) / 4.0, s.most_negative_word)
            for s in score_texts(texts)]


def _cols(names: Sequence[str], wanted: Sequence[str]) -> list[int]:
    return [list(names).index(n) for n in wanted if n in names]


def face_cues(values: np.ndarray, mask: np.ndarray, feature_names: Sequence[str],
              available: Sequence[bool] | np.ndarray | None = None) -> tuple[float, float]:
    """(face_valence, face_expressivity) averaged over steps where ``mask``; NaN when no step has a face.

    ``values`` is (G, D) with columns named by ``feature_names`` (AU names, emotion names, ...);
    ``available`` marks the columns the face backend really produced (others are ignored).
    """
    names = list(feature_names)
    avail = np.ones(len(names), bool) if available is None else np.asarray(available, bool)
    ok = [n for n, a in zip(names, avail, strict=True) if a]
    mask = np.asarray(mask, bool)
    if not mask.any():
        return float("nan"), float("nan")
    v = np.asarray(values, dtype=np.float64)[mask]
    valences, expressions = _face_sources(v, names, ok)
    valence = float(np.mean([x.mean() for x in valences])) if valences else float("nan")
    expressivity = float(np.mean([x.mean() for x in expressions])) if expressions else float("nan")
    return valence, expressivity


def _face_sources(v: np.ndarray, names: list[str], ok: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per step of ``v`` (G, D): each available valence (emotions, AUs) and expressivity (AUs, emotions)."""
    valences, expressions = [], []
    if all(n in ok for n in (*_NEG_EMOTIONS, "happiness")):
        emo_val = v[:, names.index("happiness")] - v[:, _cols(names, _NEG_EMOTIONS)].sum(axis=1)
        valences.append(np.clip(emo_val, -1, 1))
    if all(n in ok for n in ("AU12", "AU04", "AU15")):
        au_val = v[:, names.index("AU12")] - v[:, _cols(names, ("AU04", "AU15"))].mean(axis=1)
        valences.append(np.clip(au_val, -1, 1))
    expr_aus = [i for i, n in enumerate(names)
                if n.startswith("AU") and n in ok and n not in _NON_EXPRESSION_AUS]
    if expr_aus:
        top = np.sort(v[:, expr_aus], axis=1)[:, -3:]
        expressions.append(top.mean(axis=1))
    if "neutral" in ok:
        expressions.append(1.0 - v[:, names.index("neutral")])
    return valences, expressions


def face_cue_steps(values: np.ndarray, feature_names: Sequence[str],
                   available: Sequence[bool] | np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(valence, expressivity) at every step of ``values`` (G, D), by the formulas of :func:`face_cues`
    before its average over steps; NaN at steps without a face (a NaN row) or where no source is available."""
    names = list(feature_names)
    avail = np.ones(len(names), bool) if available is None else np.asarray(available, bool)
    ok = [n for n, a in zip(names, avail, strict=True) if a]
    v = np.asarray(values, dtype=np.float64).reshape(-1, len(names))
    valences, expressions = _face_sources(v, names, ok)
    nan = np.full(len(v), np.nan)
    with np.errstate(invalid="ignore"):
        valence = np.mean(valences, axis=0) if valences else nan
        expressivity = np.mean(expressions, axis=0) if expressions else nan
    return valence, expressivity


def utterance_cues(text: tuple[float, float, float, str], face_valence: float, face_expressivity: float,
                   coverage: float, params: CueThresholds) -> UtteranceCues:
    """Combine text and face cues into the mismatch score and flags (see the module docstring)."""
    t_val, t_aro, t_dis, word = text
    flags: list[str] = []
    mismatch = float("nan")
    if coverage >= params.min_face_coverage and np.isfinite(face_valence) and np.isfinite(face_expressivity):
        mismatch = 0.5 * abs(t_val - face_valence) / 2 + 0.5 * abs(t_aro - face_expressivity)
        if (t_dis >= params.distress_min and face_expressivity < params.neutral_max
                and face_valence > -params.neutral_valence):
            flags.append("minimizing")
        if t_val >= params.polar and face_valence <= -params.polar / 2:
            flags.append("positive_words_negative_face")
        if t_val <= -params.polar and face_valence >= params.polar / 2:
            flags.append("negative_words_positive_face")
    return UtteranceCues(t_val, t_aro, t_dis, word, face_valence, face_expressivity, coverage, mismatch,
                         tuple(flags))


def _robust_z(values: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``values`` as z-scores against ``ref`` (median, 1.4826 x MAD; a spread of 0 counts as 1e-6)."""
    med = np.median(ref)
    spread = 1.4826 * np.median(np.abs(ref - med))
    return (values - med) / max(float(spread), 1e-6)


def vocal_arousal(loudness: np.ndarray, f0_sd: np.ndarray, speakers: Sequence[str], min_baseline: int) -> np.ndarray:
    """Per utterance, vocal arousal in [0, 1] from its mean loudness and F0 variability (see the module
    docstring): robust z-scores against the speaker's own utterances, else the session's; NaN without enough."""
    loudness, f0_sd = np.asarray(loudness, np.float64), np.asarray(f0_sd, np.float64)
    speakers = np.asarray(speakers, dtype=str)
    known = np.isfinite(loudness) & np.isfinite(f0_sd)
    out = np.full(len(loudness), np.nan)
    for spk in set(speakers.tolist()):
        rows = (speakers == spk) & known
        ref = rows if rows.sum() >= min_baseline else known
        if ref.sum() < min_baseline or not rows.any():
            continue
        z = (_robust_z(loudness[rows], loudness[ref]) + _robust_z(f0_sd[rows], f0_sd[ref])) / 2
        out[rows] = 1 / (1 + np.exp(-z))
    return out


def voice_cues(cues: UtteranceCues, arousal: float, params: CueThresholds,
               flat_voice_max: float) -> tuple[float, tuple[str, ...], tuple[str, ...]]:
    """(mismatch, flags, channels used) of one utterance with its vocal arousal beside the face (module
    docstring); with ``arousal`` NaN: the face-only ``cues`` as they are, channels ``text`` (+ ``face``)."""
    face = (cues.face_coverage >= params.min_face_coverage and np.isfinite(cues.face_valence)
            and np.isfinite(cues.face_expressivity))
    voice = bool(np.isfinite(arousal))
    channels = ("text", *(("face",) if face else ()), *(("voice",) if voice else ()))
    if not voice:
        return cues.mismatch, cues.flags, channels
    flat = arousal < flat_voice_max
    if face:
        nonverbal = (cues.face_expressivity + arousal) / 2
        mismatch = 0.5 * abs(cues.text_valence - cues.face_valence) / 2 + 0.5 * abs(cues.text_arousal - nonverbal)
        flags = [f for f in cues.flags if f != "minimizing"]
        if "minimizing" in cues.flags and flat:
            flags.insert(0, "minimizing")
        return float(mismatch), tuple(flags), channels
    flags = ("minimizing",) if cues.text_distress >= params.distress_min and flat else ()
    return float(abs(cues.text_arousal - arousal)), flags, channels
