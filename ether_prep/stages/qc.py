"""Stage ``qc``: a quality check per session, so that a session whose data cannot be trusted says so.

Every check compares one measured value with a configurable threshold; a session failing any check is
marked ``needs_review`` with the reasons, in the store, in ``ether-prep status`` and in the manifests.
Checks that do not apply (no audio: the speech checks; no video: the face checks) are recorded as such.

========================  ==============================================================================
check                     value (pass when ...)
========================  ==============================================================================
``speech_found``          share of the recording the VAD found speech in, ``speech_share``
                          (>= ``min_speech_share``)
``speech_coverage``       share of VAD speech seconds covered by word spans, edges within the transcribe
                          stage's ``coverage_slack_s`` (>= ``min_speech_coverage``):
                          speech the transcription lost
``words_per_minute_low``  words per minute of VAD speech (>= ``min_words_per_minute``): text dropped
``words_per_minute_high`` the same (<= ``max_words_per_minute``): text invented (hallucination)
``speakers_with_face``    share of speakers linked to a person on screen (>= ``min_speakers_with_face``)
``link_confidence``       the lowest confidence of a speaker's face link (>= ``min_link_confidence``)
``speaker_face_share``    share of utterance time with the speaker's face on screen
                          (>= ``min_speaker_face_share``)
``corrupt_frames``        share of video packets that failed to decode (<= ``max_corrupt_share``)
``dropped_frames``        share of the frames the container promises that were never decoded
                          (<= ``max_dropped_share``)
``audio_complete``        seconds between the end of the decoded audio (on the session clock) and the end
                          of the recording the probe found, ``audio_missing_s`` (<= ``max_audio_missing_s``):
                          audio cut off, a file still being written, or audio that stops before the video
========================  ==============================================================================

Also recorded (no threshold): ``speakers``, ``persons`` (persons found on screen), ``speech_seconds``.

Example (pipelines.yaml)::

    - stage: qc
      params: {min_speech_coverage: 0.9, min_speaker_face_share: 0.3}

Output group ``qc/``::

    checks   table: check, value (NaN = not measured), threshold, passes ("min" | "max"), applies, ok, reason
    attrs    needs_review (bool), reasons (list of str), metrics (name -> value), thresholds
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import StageError
from ..store import write_table
from .align import read_align
from .audio import read_audio
from .base import Each, Stage
from .face import read_face_counts
from .transcribe import read_words

if TYPE_CHECKING:
    import zarr

    from ..records import Session
    from ..store import SessionGroup
    from .align import AlignOutputs
    from .face import FaceCounts

__all__ = ["Check", "QcParams", "QcStage", "Review", "quality_checks", "read_review"]


@dataclass(frozen=True)
class QcParams:
    """Thresholds of the checks (see the module docstring)."""

    min_speech_share: float = 0.05
    min_speech_coverage: float = 0.9
    min_words_per_minute: float = 40.0
    max_words_per_minute: float = 320.0
    min_speakers_with_face: float = 0.5
    min_link_confidence: float = 0.2
    min_speaker_face_share: float = 0.3
    max_corrupt_share: float = 0.01
    max_dropped_share: float = 0.05
    max_audio_missing_s: float = 1.0

    def validate(self) -> None:
        for f in fields(self):
            if getattr(self, f.name) < 0:
                raise ValueError(f"{f.name} must not be negative")
        if self.min_words_per_minute > self.max_words_per_minute:
            raise ValueError("min_words_per_minute must not exceed max_words_per_minute")


@dataclass(frozen=True)
class Check:
    """One check of one session: ``applies`` is false where the session lacks what it measures."""

    check: str
    value: float
    threshold: float
    passes: str  # "min": value >= threshold passes; "max": value <= threshold passes
    applies: bool
    ok: bool
    reason: str


# (check, metric, QcParams field, "min" | "max", what a failure means)
_RULES: tuple[tuple[str, str, str, str, str], ...] = (
    ("speech_found", "speech_share", "min_speech_share", "min", "little or no speech found"),
    ("speech_coverage", "speech_coverage", "min_speech_coverage", "min", "speech without words"),
    ("words_per_minute_low", "words_per_minute", "min_words_per_minute", "min", "too few words for the speech heard"),
    ("words_per_minute_high", "words_per_minute", "max_words_per_minute", "max", "more words than speech can hold"),
    ("speakers_with_face", "speakers_with_face", "min_speakers_with_face", "min", "speakers without a face on screen"),
    ("link_confidence", "link_confidence", "min_link_confidence", "min", "a face-to-speaker link is uncertain"),
    ("speaker_face_share", "speaker_face_share", "min_speaker_face_share", "min",
     "utterances without the speaker's face"),
    ("corrupt_frames", "corrupt_frames", "max_corrupt_share", "max", "corrupt video packets"),
    ("dropped_frames", "dropped_frames", "max_dropped_share", "max", "frames missing from the video"),
    ("audio_complete", "audio_missing_s", "max_audio_missing_s", "max",
     "the decoded audio ends before the recording does: cut off, or still being written?"),
)


def quality_checks(metrics: dict[str, float], params: QcParams) -> list[Check]:
    """Compare measured ``metrics`` (NaN or absent = does not apply) with the thresholds in ``params``."""
    out = []
    for check, metric, field_name, passes, meaning in _RULES:
        value = float(metrics.get(metric, math.nan))
        threshold = float(getattr(params, field_name))
        applies = math.isfinite(value)
        ok = not applies or (value >= threshold if passes == "min" else value <= threshold)
        sign = "<" if passes == "min" else ">"
        reason = "" if ok else f"{check}: {metric} {value:.3g} {sign} {threshold:.3g} ({meaning})"
        out.append(Check(check, value, threshold, passes, applies, ok, reason))
    return out


_REVIEW_COLUMNS: dict[str, tuple[str, ...]] = {
    "needs_review": ("bool", "the session failed a quality check (null: qc did not run)"),
    "review_reasons": ("list<string>", "why the session needs review"),
}


class QcStage(Stage):
    """Measure each session's completeness and linking, flag it ``needs_review`` when a check fails."""

    name = "qc"
    version = "2"  # 2: audio_complete
    family = "align"
    requires = ("align",)
    Params = QcParams
    libraries = ("pyarrow",)
    # The review flag is a column of every manifest; sessions.parquet also has one column per metric.
    manifest_columns: ClassVar[dict[str, dict[str, tuple[str, ...]]]] = {
        "utterances": _REVIEW_COLUMNS, "dialogue_pairs": _REVIEW_COLUMNS,
        "sessions": {**_REVIEW_COLUMNS, "qc_*": ("float64", "quality-check metric {}")}}

    @classmethod
    def manifest_values(cls, store: SessionGroup) -> dict[str, dict[str, Any]]:
        """The session's verdict on each of its rows (null when qc has not run), and its metrics."""
        review = read_review(store)
        verdict = {"needs_review": review.needs_review, "review_reasons": list(review.reasons)}
        each = {k: Each(v) for k, v in verdict.items()}
        return {"utterances": each, "dialogue_pairs": each,
                "sessions": {**verdict, **{f"qc_{k}": v for k, v in review.metrics.items()}}}

    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        metrics = session_metrics(session, store)
        checks = quality_checks(metrics, self.params)
        write_table(out, "checks", {
            "check": np.array([c.check for c in checks], dtype=str),
            "value": np.array([c.value for c in checks], dtype=np.float64),
            "threshold": np.array([c.threshold for c in checks], dtype=np.float64),
            "passes": np.array([c.passes for c in checks], dtype=str),
            "applies": np.array([c.applies for c in checks], dtype=bool),
            "ok": np.array([c.ok for c in checks], dtype=bool),
            "reason": np.array([c.reason for c in checks], dtype=str),
        }, dim="check")
        reasons = [c.reason for c in checks if not c.ok]
        out.attrs.update({"needs_review": bool(reasons), "reasons": reasons,
                          "metrics": {k: (v if math.isfinite(v) else None) for k, v in metrics.items()},
                          "thresholds": asdict(self.params)})
        applied = sum(c.applies for c in checks)
        return f"needs review: {'; '.join(reasons)}" if reasons else f"ok ({applied} checks passed)"


def session_metrics(session: Session, store: SessionGroup) -> dict[str, float]:
    """What the checks measure, from what the upstream stages stored (NaN where a stage did not run)."""
    nan = math.nan
    m: dict[str, float] = {}
    duration = session.probe.duration if session.probe else nan
    tx = read_words(store)
    if tx is not None:
        speech_s = tx.speech_seconds
        m["speech_seconds"] = speech_s
        m["speech_share"] = speech_s / duration if duration and duration > 0 else nan
        m["speech_coverage"] = tx.speech_coverage if tx.speech_coverage is not None else nan
        m["words_per_minute"] = tx.n_words / (speech_s / 60.0) if speech_s > 0 else nan
    audio = read_audio(store)
    if store.stage_state("audio").state == "done" and session.probe is not None and session.probe.has_audio:
        # What the audio stage decoded (on the session clock: leading silence included) against what the probe
        # it decoded by promised; a probe taken again since (a file still growing) counts too.
        promised = max(float((audio.attrs.get("probe") or {}).get("duration") or 0.0), float(duration or 0.0))
        if audio.duration is not None and promised > 0:
            m["audio_missing_s"] = max(0.0, promised - audio.duration)
    align = read_align(store)
    if align is None:
        raise StageError(f"session {session.id!r}: the align stage is {store.stage_state('align').state}; run it "
                         f"first")
    m["speakers"] = float(len(align.speakers))
    counts = read_face_counts(store)
    if counts is not None:
        m.update(_face_metrics(session, align, counts))
    return m


def _face_metrics(session: Session, align: AlignOutputs, counts: FaceCounts) -> dict[str, float]:
    """The checks' face measures: links, face share of utterance time, corrupt and dropped frames."""
    nan = math.nan
    m: dict[str, float] = {}
    speakers, links = align.speakers, align.links
    linked = {str(s) for s in links["speaker"] if s}
    m["persons"] = float(len(set(links["person"].tolist()))) if "person" in links else nan
    if speakers:
        m["speakers_with_face"] = len(linked & set(speakers)) / len(speakers)
    conf = [float(c) for c, s in zip(links["confidence"], links["speaker"], strict=True) if s]
    m["link_confidence"] = min(conf) if conf else nan
    utts = align.utterances
    durations = utts["end"] - utts["start"]
    if durations.sum() > 0:
        m["speaker_face_share"] = float((durations * utts["speaker_coverage"]).sum() / durations.sum())
    decoded, corrupt = counts.frames_decoded, counts.frames_corrupt
    m["corrupt_frames"] = corrupt / (decoded + corrupt) if decoded + corrupt else nan
    expected = _expected_frames(session)
    m["dropped_frames"] = max(0.0, 1.0 - decoded / expected) if expected else nan
    return m


def _expected_frames(session: Session) -> float | None:
    """How many frames the container promises (its frame count, else duration x frame rate)."""
    probe = session.probe
    if probe is None or not probe.has_video or session.kind == "image":
        return None
    if probe.video_frame_count:
        return float(probe.video_frame_count)
    if probe.video_fps and probe.duration:
        return probe.video_fps * probe.duration
    return None


@dataclass(frozen=True)
class Review:
    """A session's quality verdict: ``needs_review`` is None when its qc stage has not run."""

    needs_review: bool | None = None
    reasons: tuple[str, ...] = ()
    metrics: dict[str, float | None] = field(default_factory=dict)


def read_review(store: SessionGroup) -> Review:
    """The qc stage's verdict for one session (an empty :class:`Review` when qc has not run)."""
    if store.stage_state("qc").state != "done":
        return Review()
    attrs = dict(store.stage_group("qc").attrs)
    return Review(bool(attrs.get("needs_review")), tuple(attrs.get("reasons", [])), dict(attrs.get("metrics", {})))
