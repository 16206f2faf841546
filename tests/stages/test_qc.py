"""The per-session quality check as a pure function: thresholds and reasons. Where the flag shows on a real run
(the store, ``status``, sessions.parquet and utterances.parquet) is tested in tests/scenarios/test_dialogue.py."""

from __future__ import annotations

import math

import pytest

from ether_prep.stages.qc import QcParams, quality_checks


def _failed(metrics: dict[str, float], **params: float) -> dict[str, str]:
    return {c.check: c.reason for c in quality_checks(metrics, QcParams(**params)) if not c.ok}


def test_each_check_names_itself_in_its_reason() -> None:
    good = {"speech_share": 0.6, "speech_coverage": 0.98, "words_per_minute": 150.0, "speakers_with_face": 1.0,
            "link_confidence": 0.7, "speaker_face_share": 0.9, "corrupt_frames": 0.0, "dropped_frames": 0.0}
    assert _failed(good) == {}
    cases = {
        "speech_found": {"speech_share": 0.01},
        "speech_coverage": {"speech_coverage": 0.42},
        "words_per_minute_low": {"words_per_minute": 12.0},
        "words_per_minute_high": {"words_per_minute": 900.0},
        "speakers_with_face": {"speakers_with_face": 0.0},
        "link_confidence": {"link_confidence": 0.05},
        "speaker_face_share": {"speaker_face_share": 0.0},
        "corrupt_frames": {"corrupt_frames": 0.2},
        "dropped_frames": {"dropped_frames": 0.5},
    }
    for check, bad in cases.items():
        failed = _failed({**good, **bad})
        assert list(failed) == [check], (check, failed)
        metric = next(iter(bad))
        assert failed[check].startswith(f"{check}: {metric} ")


def test_checks_that_do_not_apply_pass_and_say_so() -> None:
    checks = quality_checks({"speech_share": 0.5, "speaker_face_share": math.nan}, QcParams())
    by_name = {c.check: c for c in checks}
    assert by_name["speech_found"].applies and by_name["speech_found"].ok
    assert not by_name["speaker_face_share"].applies and by_name["speaker_face_share"].ok
    assert not by_name["dropped_frames"].applies


def test_thresholds_are_configurable_and_validated() -> None:
    assert "speech_coverage" in _failed({"speech_coverage": 0.93}, min_speech_coverage=0.95)
    assert _failed({"speech_coverage": 0.93}, min_speech_coverage=0.9) == {}
    with pytest.raises(ValueError, match="min_words_per_minute"):
        QcParams(min_words_per_minute=400.0).validate()
    with pytest.raises(ValueError, match="must not be negative"):
        QcParams(max_corrupt_share=-1.0).validate()
