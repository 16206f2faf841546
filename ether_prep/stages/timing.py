"""Stage ``timing``: per-utterance timing cues of the conversation, from the words and the diarized turns:
speech and articulation rate, the pause before, pauses inside, a reply's response latency and overlapped
speech. Definitions: :mod:`ether_prep.speech.turn_timing` (pure numpy).

Example (pipelines.yaml)::

    - stage: timing
      params: {min_pause_s: 0.25}

Output group ``timing/``::

    timing   (N, 7) float64, row i: utterance i (as the utterances stage numbers them); columns (attrs
             ``names``): speech_rate, articulation_rate (words/s), pause_before_s, n_pauses, pause_s,
             response_latency_s, overlap_s; NaN where a cue does not apply
    attrs    names, units, min_pause_s, n_utterances

Items of ``store.utterances()`` carry it as ``item["timing"]`` (and ``pairs()`` turns as (U, 7)); the
utterance manifest has one column per cue, the dialogue pair manifest the reply's latency and each side's
speech rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..speech.turn_timing import TIMING_NAMES, timing_cues
from ..store import write_array
from .align import read_align
from .base import Stage
from .diarize import read_turns
from .utterances import read_transcript

if TYPE_CHECKING:
    import zarr

    from ..records import Session
    from ..store import SessionGroup

__all__ = ["TIMING_NAMES", "TimingParams", "TimingStage", "read_timing"]

_UNITS = {"speech_rate": "words/s", "articulation_rate": "words/s", "n_pauses": "count"}
_COLUMNS: dict[str, tuple[str, ...]] = {
    "speech_rate": ("float64", "words per second over the utterance's span"),
    "articulation_rate": ("float64", "words per second of speech, pauses inside the utterance left out"),
    "pause_before_s": ("float64", "silence before the utterance since anyone's last word, seconds (null: first)"),
    "n_pauses": ("int64", "pauses of at least min_pause_s between the utterance's words"),
    "pause_s": ("float64", "total of those pauses, seconds"),
    "response_latency_s": ("float64", "a reply's start minus the other speaker's end, seconds; negative: "
                                      "overlapping (null: not a reply)"),
    "overlap_s": ("float64", "seconds of the utterance with another speaker talking at once"),
}
_PAIR_COLUMNS: dict[str, tuple[str, ...]] = {
    "reply_latency_s": ("float64", "the counsellor reply's response latency, seconds (negative: it began before "
                                   "the client finished; null: not measured)"),
    "client_speech_rate": ("float64", "words per second over the client's turn"),
    "counsellor_speech_rate": ("float64", "words per second over the counsellor's reply"),
}


@dataclass(frozen=True)
class TimingParams:
    """``min_pause_s``: a gap between two words of one utterance this long or longer is a pause."""

    min_pause_s: float = 0.25

    def validate(self) -> None:
        if not 0 < self.min_pause_s <= 10:
            raise ValueError(f"min_pause_s must be within (0, 10] seconds, got {self.min_pause_s}")


def read_timing(store: SessionGroup) -> np.ndarray | None:
    """The (N, 7) timing cues of one session (None when the stage is not done there)."""
    return TimingStage.read_utterance_array(store, "timing")


class TimingStage(Stage):
    """Timing cues per utterance (see the module docstring)."""

    name = "timing"
    version = "1"
    family = "align"  # training-data features: `ether-prep align` (and `run`) compute them
    requires = ("utterances", "diarize")
    needs_stream = "audio"
    Params = TimingParams
    manifest_columns: ClassVar[dict[str, dict[str, tuple[str, ...]]]] = {
        "utterances": _COLUMNS, "dialogue_pairs": _PAIR_COLUMNS}
    utterance_arrays = ("timing",)

    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        transcript = read_transcript(store)
        cues = timing_cues(transcript.utterances, transcript.words, read_turns(store), self.params.min_pause_s)
        write_array(out, "timing", cues, dims=("utterance", "cue"),
                    attrs={"names": list(TIMING_NAMES), "units": {k: _UNITS.get(k, "s") for k in TIMING_NAMES}})
        out.attrs.update({"names": list(TIMING_NAMES), "min_pause_s": self.params.min_pause_s,
                          "n_utterances": len(cues)})
        return None if len(cues) else "no speech: no utterances to time"

    @classmethod
    def manifest_values(cls, store: SessionGroup) -> dict[str, dict[str, Any]]:
        cues = read_timing(store)
        if cues is None:
            return {}
        columns = {k: _nulls(cues[:, j]) for j, k in enumerate(TIMING_NAMES)}
        columns["n_pauses"] = [None if v is None else int(v) for v in columns["n_pauses"]]
        values: dict[str, dict[str, Any]] = {"utterances": columns}
        aligned = read_align(store)
        if aligned is not None and len(aligned.pairs.get("id", ())):
            values["dialogue_pairs"] = _pair_values(cues, aligned.utterances["id"], aligned.pairs,
                                                    read_transcript(store))
        return values


def _nulls(values: np.ndarray) -> list[float | None]:
    """Manifest values: NaN (a cue that does not apply) becomes null."""
    return [float(v) if np.isfinite(v) else None for v in values]


def _pair_values(cues: np.ndarray, ids: np.ndarray, pairs: dict[str, np.ndarray], transcript: Any) -> dict[str, Any]:
    """The reply's latency and each side's words per second, per dialogue pair."""
    row = {str(u): k for k, u in enumerate(ids)}
    u = transcript.utterances
    latency = TIMING_NAMES.index("response_latency_s")

    def rate(turn: str) -> float | None:
        rows = [row[x] for x in str(turn).split(";") if x in row]
        words = sum(int(u["word_end"][k] - u["word_start"][k]) for k in rows)
        span = sum(float(u["end"][k] - u["start"][k]) for k in rows)
        return words / span if rows and span > 0 else None

    first = [row.get(str(c)) for c in pairs["counsellor_utterance"]]
    return {"reply_latency_s": _nulls(np.array([cues[k, latency] if k is not None else np.nan for k in first])),
            "client_speech_rate": [rate(t) for t in pairs["client_utterances"]],
            "counsellor_speech_rate": [rate(t) for t in pairs["counsellor_utterances"]]}
