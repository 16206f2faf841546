"""Speech backends: one interface per stage family, each chosen once from the config by its backend name.

- :class:`Transcriber` (stage ``transcribe``): words with times from 16 kHz mono audio, and short stretches
  re-decoded on their own for the completeness guard. ``whisperx``:
  :class:`ether_prep.adapters.whisperx_asr.WhisperxTranscriber`.
- :class:`Diarizer` (stage ``diarize``): speaker turns. ``embeddings``: :class:`EmbeddingDiarizer` here (WebRTC
  VAD, resemblyzer windows, clustering; offline); ``pyannote``:
  :class:`ether_prep.adapters.pyannote_diarization.PyannoteDiarizer`.

A backend is built from the stage's ``model`` (None: the backend's default) and the stage's parameters object
as it is, and names its model without loading it (``describe``). The registries name classes as strings, so
choosing a backend imports nothing heavy; the stages hold no backend branches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import numpy as np

from ..contracts import AsrParams, Transcription, VoiceParams
from ..records import Turn
from ..registry import resolve
from .diarization import cluster_embeddings, speech_regions, speech_windows, turns_from_windows

__all__ = ["DIARIZERS", "TRANSCRIBERS", "Diarizer", "EmbeddingDiarizer", "Transcriber", "diarizer_class",
           "transcriber_class"]

TRANSCRIBERS: dict[str, str] = {"whisperx": "ether_prep.adapters.whisperx_asr:WhisperxTranscriber"}
DIARIZERS: dict[str, str] = {
    "embeddings": "ether_prep.speech.backends:EmbeddingDiarizer",
    "pyannote": "ether_prep.adapters.pyannote_diarization:PyannoteDiarizer",
}


class Transcriber(Protocol):
    """An ASR model loaded once per worker; :meth:`transcribe` takes a whole recording."""

    libraries: ClassVar[tuple[str, ...]]  # distributions whose versions are recorded with the outputs
    model_id: str
    model_path: str
    source: str

    def __init__(self, model: str | None, params: AsrParams) -> None: ...

    @classmethod
    def describe(cls, model: str | None, params: AsrParams) -> dict[str, str]:
        """``{"id", "source", ...}`` of the model ``model`` resolves to, without loading it."""
        ...

    def transcribe(self, audio: np.ndarray, progress: Callable[[float], None] | None = None) -> Transcription:
        """Words of one 16 kHz mono recording, with the speech regions the transcriber found; ``progress``
        (when given) is called with the share of the recording's speech decoded so far (0..1)."""
        ...

    def decode_windows(self, pieces: list[np.ndarray], language: str | None = None) -> list[Transcription]:
        """Short pieces of audio decoded on their own (word times relative to each piece); one result each."""
        ...

    def close(self) -> None:
        """Release the model."""
        ...


class Diarizer(Protocol):
    """A diarization model loaded once per worker."""

    libraries: ClassVar[tuple[str, ...]]

    def __init__(self, model: str | None, params: Any) -> None: ...

    @classmethod
    def describe(cls, model: str | None, params: Any) -> dict[str, str]:
        """``{"id", "source"}`` of the model ``model`` resolves to, without loading it."""
        ...

    def diarize(self, audio: np.ndarray, sample_rate: int, num_speakers: int | None) -> list[Turn]:
        """Turns of one mono signal; ``num_speakers`` (when given) fixes the count."""
        ...


def transcriber_class(backend: str) -> type[Transcriber]:
    """The class of the ``transcribe`` backend ``backend`` (imports its adapter module, not its library)."""
    return resolve(TRANSCRIBERS, backend, "transcribe backend")


def diarizer_class(backend: str) -> type[Diarizer]:
    """The class of the ``diarize`` backend ``backend`` (imports its module, not its library)."""
    return resolve(DIARIZERS, backend, "diarize backend")


class EmbeddingDiarizer:
    """Offline diarization: WebRTC VAD finds speech, resemblyzer embeds fixed windows sliding over it, the
    windows are clustered into speakers and every speech frame takes the vote of the windows covering it.

    Reads the diarize stage's parameters: ``device``, ``threads``, ``vad_aggressiveness``, ``min_speech_s``,
    ``min_silence_s``, ``window_s``, ``hop_s``, ``clustering``, ``min_speakers``, ``max_speakers``.
    """

    libraries: ClassVar[tuple[str, ...]] = ("resemblyzer", "webrtcvad", "scikit-learn", "torch")
    _FRAME = 0.03  # s per WebRTC VAD frame

    def __init__(self, model: str | None, params: VoiceParams) -> None:
        from ..adapters.resemblyzer_voice import VoiceEmbedder

        self.params = params
        self._embedder = VoiceEmbedder(device=params.device, weights=model, threads=params.threads)

    @classmethod
    def describe(cls, model: str | None, params: VoiceParams) -> dict[str, str]:
        return {"id": model or "resemblyzer GE2E (shipped)", "source": "package resemblyzer"}

    def diarize(self, audio: np.ndarray, sample_rate: int, num_speakers: int | None) -> list[Turn]:
        from ..adapters.resemblyzer_voice import webrtc_voiced

        p = self.params
        regions = speech_regions(webrtc_voiced(audio, p.vad_aggressiveness, int(self._FRAME * 1000)), self._FRAME,
                                 p.min_speech_s, p.min_silence_s)
        duration = len(audio) / sample_rate
        if not regions or duration < p.window_s:
            # Too little speech to compare voices: one speaker for whatever speech there is.
            return [Turn(s, e, "SPEAKER_00") for s, e in regions]
        windows = speech_windows(regions, p.window_s, p.hop_s, duration)
        labels = cluster_embeddings(self._embedder.embed(audio, windows), num_speakers, p.min_speakers,
                                    p.max_speakers, method=p.clustering)
        return turns_from_windows(windows, labels, regions)
