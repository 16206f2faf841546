"""Stage ``utterances``: words get speakers from the diarized turns, and a speaker's consecutive words
become utterances (split at pauses over ``max_gap_s`` and at sentence ends past ``max_duration_s``).

Example (pipelines.yaml)::

    - stage: utterances
      params: {max_gap_s: 1.0, max_duration_s: 15.0, max_word_s: 1.0}

Output group ``utterances/`` (a contract the ``align`` stage reads)::

    words        table: text, start, end, score, speaker, interpolated, channel (time order; when the
                 channels were transcribed apart, grouped by utterance so each utterance's words are contiguous)
    utterances   table: id ("<session>/u00000"), start, end, speaker, text, word_start, word_end
                 (indices into words, end exclusive), score (mean word score)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StageError
from ..speech import assign_speakers, build_utterances, build_utterances_by_stream
from ..store import read_table, write_table
from .base import Stage
from .diarize import read_diarizer, read_turns
from .transcribe import read_words, write_words

if TYPE_CHECKING:
    import zarr

    from ..records import Session
    from ..store import SessionGroup

__all__ = ["Transcript", "UtterancesParams", "UtterancesStage", "read_transcript"]


@dataclass(frozen=True)
class Transcript:
    """A session's speaker-attributed ``words`` and ``utterances`` tables as this stage stored them
    (columns as in the module docstring; strings as plain unicode arrays). Empty when there was no speech."""

    words: dict[str, np.ndarray] = field(default_factory=dict)
    utterances: dict[str, np.ndarray] = field(default_factory=dict)
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def language(self) -> str | None:
        return self.attrs.get("language")

    @property
    def asr_model(self) -> str | None:
        return self.attrs.get("asr_model")

    def __len__(self) -> int:
        return len(self.utterances.get("id", ()))

    @property
    def speakers(self) -> list[str]:
        return sorted({str(s) for s in self.utterances.get("speaker", [])})

    def talk_time(self) -> dict[str, float]:
        """Seconds of utterance time per speaker (in :attr:`speakers` order)."""
        u = self.utterances
        return {s: float(sum(e - b for b, e, k in zip(u["start"], u["end"], u["speaker"], strict=True) if k == s))
                for s in self.speakers}

    def speakers_in_order(self) -> list[str]:
        """Speakers in the order they first speak."""
        if not len(self):
            return []
        order = np.argsort(self.utterances["start"], kind="stable")
        return list(dict.fromkeys(str(s) for s in self.utterances["speaker"][order]))

    def activity_spans(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(speaker, start, end) of speech: words when there are any (tighter than utterance spans)."""
        src = self.words if len(self.words.get("start", ())) else self.utterances
        return src.get("speaker", np.array([], str)), src.get("start", np.zeros(0)), src.get("end", np.zeros(0))


def read_transcript(store: SessionGroup) -> Transcript:
    """The utterances stage's output for one session (empty when the stage was skipped: no audio)."""
    if store.stage_state("utterances").state == "skipped":
        return Transcript()
    group = store.stage_group("utterances")
    if "utterances" not in group:
        return Transcript(attrs=dict(group.attrs))
    return Transcript(words=read_table(group, "words"), utterances=read_table(group, "utterances"),
                      attrs=dict(group.attrs))


@dataclass(frozen=True)
class UtterancesParams:
    """``max_word_s``: longer words vote for a speaker with their first ``max_word_s`` s only."""

    max_gap_s: float = 1.0
    max_duration_s: float = 15.0
    max_word_s: float = 1.0

    def validate(self) -> None:
        if self.max_gap_s < 0 or self.max_duration_s <= 0 or self.max_word_s <= 0:
            raise ValueError("max_gap_s must be >= 0, max_duration_s and max_word_s > 0")


class UtterancesStage(Stage):
    """Speaker-attributed words and utterances."""

    name = "utterances"
    version = "1"
    requires = ("transcribe", "diarize")
    needs_stream = "audio"
    backends = ("builtin",)
    Params = UtterancesParams

    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        p: UtterancesParams = self.params
        tx = read_words(store)
        if tx is None:
            raise StageError(f"session {session.id!r}: the transcribe stage is {store.stage_state('transcribe').state},"
                             f" so there are no words to attribute; run it first")
        cols = tx.words
        n = len(cols["text"])
        words = [{"text": str(cols["text"][i]), "start": float(cols["start"][i]), "end": float(cols["end"][i]),
                  "score": float(cols["score"][i]), "interpolated": bool(cols["interpolated"][i]),
                  "channel": int(cols["channel"][i]) if "channel" in cols else -1} for i in range(n)]
        words = assign_speakers(words, read_turns(store), max_word=p.max_word_s)
        if any(w["channel"] >= 0 for w in words):
            # Channels transcribed apart (one microphone per person): each channel is one speaker, labelled
            # by the diarized speaker most of its words got, and utterances are grouped per channel.
            for ch in {w["channel"] for w in words}:
                votes: dict[str, int] = {}
                for w in words:
                    if w["channel"] == ch:
                        votes[w["speaker"]] = votes.get(w["speaker"], 0) + 1
                label = max(votes.items(), key=lambda kv: kv[1])[0] or f"SPEAKER_{ch:02d}"
                for w in words:
                    if w["channel"] == ch:
                        w["speaker"] = label
            if len({w["speaker"] for w in words}) < len({w["channel"] for w in words}):
                for w in words:  # diarization merged the channels: fall back to channel numbers
                    w["speaker"] = f"SPEAKER_{w['channel']:02d}"
            words, utts = build_utterances_by_stream(words, session.id, "channel", p.max_gap_s, p.max_duration_s)
        else:
            utts = build_utterances(words, session.id, max_gap=p.max_gap_s, max_duration=p.max_duration_s)
        write_words(out, words, ("text", "start", "end", "score", "speaker", "interpolated", "channel"), dim="word")
        write_table(out, "utterances", {
            "id": np.array([u.id for u in utts], dtype=str),
            "start": np.array([u.start for u in utts], dtype=np.float64),
            "end": np.array([u.end for u in utts], dtype=np.float64),
            "speaker": np.array([u.speaker for u in utts], dtype=str),
            "text": np.array([u.text for u in utts], dtype=str),
            "word_start": np.array([u.word_start for u in utts], dtype=np.int64),
            "word_end": np.array([u.word_end for u in utts], dtype=np.int64),
            "score": np.array([u.score for u in utts], dtype=np.float32),
        }, attrs={"units": "seconds"}, dim="utterance")
        out.attrs.update({"language": tx.language, "asr_model": tx.model, "diarization": read_diarizer(store),
                          "n_words": n, "n_utterances": len(utts),
                          "speakers": sorted({u.speaker for u in utts})})
        return None if utts else "no words: zero utterances"
