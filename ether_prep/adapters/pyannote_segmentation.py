"""pyannote segmentation adapter: frame-level activity of up to 3 local speakers per 5 s chunk, from the PyanNet
segmentation network that whisperx ships in its wheel (``whisperx/assets/pytorch_model.bin``, the model its VAD
runs) or any pyannote segmentation checkpoint given as a local file. The only module that loads it.

The network is slid over the recording here (batched, no pyannote pipeline around it), so the output is plain
NumPy: ``(chunks, frames, local speakers)`` activations with the chunk and frame timing.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError

__all__ = ["Segmentation", "SegmentationModel", "shipped_segmentation_path"]


def shipped_segmentation_path() -> Path:
    """Where whisperx's wheel keeps pyannote's segmentation checkpoint (found without importing whisperx)."""
    from importlib.util import find_spec

    spec = find_spec("whisperx")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("diarize: whisperx is not installed, so its shipped segmentation model "
                         "(whisperx/assets/pytorch_model.bin) is missing; reinstall whisperx or give `model:` a "
                         "local pyannote segmentation checkpoint")
    return Path(next(iter(spec.submodule_search_locations))) / "assets" / "pytorch_model.bin"


@dataclass(frozen=True)
class Segmentation:
    """Sliding-window output: ``activations[c, f, s]`` is local speaker ``s``'s activity in frame ``f`` of chunk
    ``c``; chunk ``c`` starts at ``c * chunk_step`` s, frame ``f`` of it is centred at ``start + (f + 0.5) *
    frame_step``."""

    activations: np.ndarray
    chunk_duration: float
    chunk_step: float
    frame_step: float

    def frame_times(self) -> np.ndarray:
        """(chunks, frames) centre time of every frame, in seconds."""
        c, f = self.activations.shape[:2]
        return np.arange(c)[:, None] * self.chunk_step + (np.arange(f)[None, :] + 0.5) * self.frame_step


class SegmentationModel:
    """pyannote's segmentation network loaded once (CPU or CUDA), applied to whole recordings."""

    def __init__(self, path: str | None = None, device: str = "cpu", threads: int | None = None) -> None:
        os.environ["PYANNOTE_METRICS_ENABLED"] = "0"
        self.path = str(Path(path).expanduser()) if path else str(shipped_segmentation_path())
        if not Path(self.path).is_file():
            raise ModelError(f"diarize: segmentation model {self.path!r} is not a file; give a pyannote segmentation "
                             f"checkpoint (.bin/.ckpt) or leave `segmentation_model` unset for whisperx's shipped one")
        try:
            import torch
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                from pyannote.audio import Model
                self.model = Model.from_pretrained(self.path)
            if threads:
                torch.set_num_threads(threads)
            self.model.eval().to(torch.device(device))
        except Exception as exc:
            raise ModelError(f"cannot load the pyannote segmentation model {self.path!r} on {device}: "
                             f"{type(exc).__name__}: {exc}") from exc
        self.device = device
        spec = self.model.specifications
        self.duration = float(spec.duration)
        self.sample_rate = int(self.model.hparams.sample_rate)
        self.powerset = bool(getattr(spec, "powerset", False))
        if self.powerset:
            raise ModelError(f"diarize: {self.path} is a powerset segmentation model (pyannote 3.x); the embeddings "
                             f"diarizer takes multi-label ones such as whisperx's shipped model")

    def __call__(self, audio: np.ndarray, step_s: float, batch: int = 32) -> Segmentation:
        """Activations of every ``duration``-long chunk, ``step_s`` apart (the last chunk zero-padded)."""
        import torch

        n = round(self.duration * self.sample_rate)
        hop = max(round(step_s * self.sample_rate), 1)
        x = np.asarray(audio, dtype=np.float32)
        chunks = max(int(np.ceil(max(len(x) - n, 0) / hop)) + 1, 1)
        x = np.pad(x, (0, max(n + (chunks - 1) * hop - len(x), 0)))
        out = []
        with torch.inference_mode():
            for i in range(0, chunks, batch):
                starts = range(i * hop, min(i + batch, chunks) * hop, hop)
                b = torch.from_numpy(np.stack([x[s:s + n] for s in starts])[:, None, :]).to(self.model.device)
                out.append(self.model(b).float().cpu().numpy())
        act = np.concatenate(out)
        return Segmentation(act, self.duration, hop / self.sample_rate, self.duration / act.shape[1])
