"""pyannote adapter: speaker diarization through whisperx's ``DiarizationPipeline`` (pyannote.audio 4).

The only module that runs pyannote's diarization pipeline. The model is a hub name (gated: needs a token
in ``HF_TOKEN``) or a local directory holding the pipeline's ``config.yaml`` and weights. Usage metrics
are switched off before pyannote is imported, so a run makes no network traffic of its own.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import ModelError, StageError
from ..records import Turn

__all__ = ["DEFAULT_PIPELINE", "PyannoteDiarizer"]

DEFAULT_PIPELINE = "pyannote/speaker-diarization-community-1"


class PyannoteDiarizer:
    """A pyannote diarization pipeline loaded once."""

    def __init__(self, model: str | None = None, device: str = "cpu", cache_dir: str | None = None,
                 token: str | None = None) -> None:
        os.environ["PYANNOTE_METRICS_ENABLED"] = "0"
        self.model = model or DEFAULT_PIPELINE
        token = token or os.environ.get("HF_TOKEN")
        path = Path(self.model).expanduser()
        if (os.sep in self.model or self.model.startswith(".")) and not path.exists():
            raise ModelError(f"diarization model {self.model!r}: no such file or directory; give a local pyannote "
                             f"pipeline directory (with config.yaml) or a hub name such as {DEFAULT_PIPELINE!r}")
        try:
            from whisperx.diarize import DiarizationPipeline

            self.pipeline = DiarizationPipeline(model_name=str(path) if path.exists() else self.model,
                                                token=token, device=device, cache_dir=cache_dir)
        except Exception as exc:
            hint = ("set HF_TOKEN to a Hugging Face token that accepted the model's conditions"
                    if not token and not path.exists() else
                    "check the path or the network; offline, use the 'embeddings' backend or a local copy")
            raise ModelError(f"cannot load pyannote diarization pipeline {self.model!r} on {device}: "
                             f"{type(exc).__name__}: {exc}; {hint}") from exc

    def __call__(self, audio: np.ndarray, num_speakers: int | None = None, min_speakers: int | None = None,
                 max_speakers: int | None = None) -> list[Turn]:
        try:
            df = self.pipeline(np.ascontiguousarray(audio, dtype=np.float32), num_speakers=num_speakers,
                               min_speakers=min_speakers, max_speakers=max_speakers)
        except Exception as exc:
            raise StageError(f"pyannote diarization failed: {exc}") from exc
        return [Turn(float(r.start), float(r.end), str(r.speaker)) for r in df.itertuples()]
