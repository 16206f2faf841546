"""Incongruence cues (:mod:`ether_prep.align.cues`) from the words and the face."""

from __future__ import annotations

import numpy as np
import pytest

from ether_prep.align.cues import face_cues, text_cues, utterance_cues
from ether_prep.align.tensors import feature_names
from ether_prep.stages.align import AlignParams


def test_text_cues_find_distress_behind_positive_words() -> None:
    (fine_tired, happy, neutral) = text_cues(["I am fine, really, everything is good, just a bit tired",
                                              "I love this, it is wonderful!", "bin blue at f two now"])
    assert fine_tired[0] > 0  # VADER's compound calls it positive ...
    assert fine_tired[2] >= 0.35 and fine_tired[3] == "tired"  # ... but "tired" is -1.9 on VADER's scale
    assert happy[0] > 0.8 and happy[1] > 0.5
    assert neutral[:3] == (0.0, 0.0, 0.0)


def test_face_cues_and_flags() -> None:
    names = feature_names(["AU01", "AU04", "AU12", "AU15", "AU25", "AU26"],
                          ["anger", "disgust", "fear", "happiness", "sadness", "surprise", "neutral"])
    dim = len(names)
    neutral_face = np.zeros((10, dim))
    neutral_face[:, names.index("neutral")] = 0.95
    neutral_face[:, names.index("AU26")] = 0.9  # talking: ignored by expressivity
    mask = np.ones(10, bool)
    val, expr = face_cues(neutral_face, mask, names)
    assert val == pytest.approx(0.0) and expr == pytest.approx(0.025)
    text = text_cues(["I'm fine, just tired and lonely"])[0]
    cues = utterance_cues(text, val, expr, coverage=1.0, params=AlignParams())
    assert cues.flags == ("minimizing",)
    assert 0 <= cues.mismatch <= 1
    assert utterance_cues(text, val, expr, coverage=0.2, params=AlignParams()).flags == ()  # too little face to judge
    sad = np.zeros((10, dim))
    sad[:, names.index("sadness")] = 0.8
    sad[:, names.index("AU15")] = 0.7
    sad[:, names.index("AU04")] = 0.6
    s_val, s_expr = face_cues(sad, mask, names)
    assert s_val < -0.5 and s_expr > 0.3
    happy_words = text_cues(["This is great, I love it"])[0]
    assert "positive_words_negative_face" in utterance_cues(happy_words, s_val, s_expr, 1.0, AlignParams()).flags
    assert np.isnan(face_cues(sad, np.zeros(10, bool), names)[0])
