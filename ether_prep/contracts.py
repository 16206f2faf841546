"""What stages and the adapters behind them exchange: a leaf module (it imports only :mod:`ether_prep.records`),
so adapters, backends and stages all type against it and every import runs downhill.

- :class:`Transcription`: what a transcriber returns for one recording or one re-decoded piece.
- ``*Params`` protocols: the stage parameters each adapter reads, by the names the stage's Params dataclass
  (and pipelines.yaml) gives them. A stage passes its Params object as it is; ``tests/test_contracts.py``
  checks that every name an adapter reads from its params exists on that Params class, so a renamed
  parameter fails a test (and a type check), not a worker.
- :func:`check_device`: the one rule for every stage's ``device`` parameter.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol

from .records import Span, Word

__all__ = ["AsrParams", "FaceModelParams", "PyannoteParams", "Transcription", "VoiceParams", "check_device"]


@dataclass
class Transcription:
    """Words (dicts: text, start, end, score, interpolated) and what the transcriber decided."""

    words: list[Word]
    language: str
    n_segments: int
    dropped: list[str] = field(default_factory=list)  # texts of segments rejected as non-speech
    aligner: str = "whisper-cross-attention"
    speech: list[Span] = field(default_factory=list)  # the VAD's speech regions (s)
    no_speech_prob: float | None = None  # of a re-decoded window (decode_windows)


# Read-only members (properties): a frozen Params dataclass satisfies them.
class AsrParams(Protocol):
    """What the whisperx transcriber reads of the transcribe stage's parameters (``TranscribeParams``)."""

    @property
    def device(self) -> str: ...
    @property
    def device_index(self) -> int: ...
    @property
    def compute_type(self) -> str: ...
    @property
    def language(self) -> str | None: ...
    @property
    def beam_size(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def threads(self) -> int: ...
    @property
    def vad_onset(self) -> float: ...
    @property
    def vad_offset(self) -> float: ...
    @property
    def vad_step(self) -> float: ...
    @property
    def chunk_s(self) -> int: ...
    @property
    def no_speech_threshold(self) -> float: ...
    @property
    def log_prob_threshold(self) -> float: ...
    @property
    def word_timestamps(self) -> bool: ...
    @property
    def timestamps(self) -> bool: ...
    @property
    def align_model(self) -> str | None: ...
    @property
    def cache_dir(self) -> str | None: ...
    @property
    def local_files_only(self) -> bool: ...


class PyannoteParams(Protocol):
    """What the pyannote diarizer reads of the diarize stage's parameters (``DiarizeParams``)."""

    @property
    def device(self) -> str: ...
    @property
    def cache_dir(self) -> str | None: ...
    @property
    def min_speakers(self) -> int: ...
    @property
    def max_speakers(self) -> int: ...


class VoiceParams(Protocol):
    """What the embeddings diarizer reads of the diarize stage's parameters (``DiarizeParams``)."""

    @property
    def device(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def vad_aggressiveness(self) -> int: ...
    @property
    def min_speech_s(self) -> float: ...
    @property
    def min_silence_s(self) -> float: ...
    @property
    def window_s(self) -> float: ...
    @property
    def hop_s(self) -> float: ...
    @property
    def clustering(self) -> str: ...
    @property
    def min_speakers(self) -> int: ...
    @property
    def max_speakers(self) -> int: ...
    @property
    def method(self) -> str: ...
    @property
    def segmentation_model(self) -> str | None: ...
    @property
    def segmentation_step_s(self) -> float: ...
    @property
    def onset(self) -> float: ...
    @property
    def min_fit_s(self) -> float: ...
    @property
    def min_duration_off_s(self) -> float: ...


class FaceModelParams(Protocol):
    """What the face backends read of the face stage's parameters (``FaceParams``)."""

    @property
    def num_faces(self) -> int: ...
    @property
    def min_detection_confidence(self) -> float: ...
    @property
    def min_presence_confidence(self) -> float: ...
    @property
    def min_tracking_confidence(self) -> float: ...
    @property
    def still_tiles(self) -> int: ...
    @property
    def detector(self) -> str: ...
    @property
    def device(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def batch_size(self) -> int: ...
    @property
    def identity(self) -> str: ...


_INDEXED = re.compile(r"cuda:\d+")


def check_device(device: str, supported: tuple[str, ...]) -> None:
    """Raise ValueError unless ``device`` is one of ``supported`` (``"cuda:N"`` in it admits any GPU index)."""
    if device in supported or ("cuda:N" in supported and _INDEXED.fullmatch(device)):
        return
    raise ValueError(f"device must be {', '.join(repr(s) for s in supported[:-1])} or {supported[-1]!r}, "
                     f"got {device!r}")
