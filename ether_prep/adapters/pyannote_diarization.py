"""pyannote adapter: speaker diarization through whisperx's ``DiarizationPipeline`` (pyannote.audio 4).

The only module that runs pyannote's diarization pipeline. The model is a hub name (gated: needs a token
in ``HF_TOKEN``) or a local directory holding the pipeline's ``config.yaml`` and weights. Usage metrics
are switched off before pyannote is imported, so a run makes no network traffic of its own.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import numpy as np

from ..contracts import PyannoteParams
from ..errors import ModelError, StageError, hub_unreachable, not_local
from ..records import Turn

__all__ = ["DEFAULT_PIPELINE", "PyannoteDiarizer"]

DEFAULT_PIPELINE = "pyannote/speaker-diarization-community-1"


class PyannoteDiarizer:
    """A pyannote diarization pipeline loaded once: the ``pyannote`` backend of the diarize stage (the
    :class:`~ether_prep.speech.backends.Diarizer` interface). Reads the stage's parameters ``device``,
    ``cache_dir``, ``min_speakers`` and ``max_speakers``."""

    libraries: ClassVar[tuple[str, ...]] = ("pyannote-audio", "whisperx", "torch")

    def __init__(self, model: str | None, params: PyannoteParams) -> None:
        os.environ["PYANNOTE_METRICS_ENABLED"] = "0"
        self.params = params
        self.model = model or DEFAULT_PIPELINE
        token = os.environ.get("HF_TOKEN")
        path = Path(self.model).expanduser()
        # A hub id is owner/name; a path has more parts, or starts at /, . or ~.
        looks_like_path = self.model.startswith(("/", ".", "~")) or self.model.count("/") > 1
        if looks_like_path and not path.exists():
            raise ModelError(f"diarization model {self.model!r}: no such file or directory; give a local pyannote "
                             f"pipeline directory (with config.yaml) or a hub name such as {DEFAULT_PIPELINE!r}")
        try:
            from whisperx.diarize import DiarizationPipeline

            self.pipeline = DiarizationPipeline(model_name=str(path) if path.exists() else self.model,
                                                token=token, device=params.device, cache_dir=params.cache_dir)
        except Exception as exc:
            if not path.exists() and hub_unreachable(exc):
                raise ModelError(f"diarization: {not_local(self.model, exc)}") from exc
            hint = ("set HF_TOKEN to a Hugging Face token that accepted the model's conditions"
                    if not token and not path.exists() else
                    "check the path or the network; offline, use the 'embeddings' backend or a local copy")
            raise ModelError(f"cannot load pyannote diarization pipeline {self.model!r} on {params.device}: "
                             f"{type(exc).__name__}: {exc}; {hint}") from exc

    @classmethod
    def describe(cls, model: str | None, params: PyannoteParams) -> dict[str, str]:
        return {"id": model or DEFAULT_PIPELINE, "source": "pyannote.audio via whisperx"}

    def diarize(self, audio: np.ndarray, sample_rate: int, num_speakers: int | None) -> list[Turn]:
        """Turns of one 16 kHz mono signal (whisperx's pipeline takes 16 kHz samples)."""
        try:
            df = self.pipeline(np.ascontiguousarray(audio, dtype=np.float32), num_speakers=num_speakers,
                               min_speakers=self.params.min_speakers, max_speakers=self.params.max_speakers)
        except Exception as exc:
            raise StageError(f"pyannote diarization failed: {exc}") from exc
        return [Turn(float(r.start), float(r.end), str(r.speaker)) for r in df.itertuples()]
