"""Stage ``audio``: decode each session's audio, streamed, to float32 mono at 16 kHz, and store the probe.

Later stages (speech, align) slice utterance audio from ``audio/waveform`` instead of decoding again.

Example (pipelines.yaml)::

    - stage: audio
      params: {sample_rate: 16000, block_seconds: 30}
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ..sessions import check_unchanged
from ..store import create_array
from .base import Stage

if TYPE_CHECKING:
    import zarr

    from ..records import Session
    from ..store import SessionGroup

__all__ = ["AudioStage"]


@dataclass(frozen=True)
class AudioParams:
    """``channel``: None downmixes to mono; 0, 1, ... keeps one channel (one speaker per channel)."""

    sample_rate: int = 16000
    channel: int | None = None
    block_seconds: float = 30.0

    def validate(self) -> None:
        if not 8000 <= self.sample_rate <= 48000:
            raise ValueError(f"sample_rate must be within 8000..48000 Hz, got {self.sample_rate}")
        if self.block_seconds <= 0:
            raise ValueError("block_seconds must be positive")


class AudioStage(Stage):
    """Decode audio to ``waveform`` (float32, 1-D) in blocks, so memory stays flat however long the file."""

    name = "audio"
    version = "1"
    Params = AudioParams
    libraries = ("av",)
    reads_recording = True

    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        from ..adapters import pyav

        probe = session.probe or pyav.probe(session.path)
        out.attrs["probe"] = probe.to_dict()
        if not probe.has_audio:
            out.attrs.update({"sample_rate": self.params.sample_rate, "n_samples": 0, "duration": 0.0})
            return "no audio stream: speech stages are skipped"
        block = int(self.params.block_seconds * self.params.sample_rate)
        wave = create_array(out, "waveform", (0,), np.float32, chunk_len=block, dims=("sample",), fill_value=0.0)
        n = 0
        for samples in pyav.iter_audio_blocks(session.path, self.params.sample_rate, block, self.params.channel):
            wave.append(np.asarray(samples, dtype=np.float32))
            n += samples.size
            self.report_progress(n / self.params.sample_rate)
        check_unchanged(session.path, session.identity)  # a file still being written would be stored as a part
        wave.attrs.update({"sample_rate": self.params.sample_rate, "units": "amplitude [-1, 1]"})
        out.attrs.update({"sample_rate": self.params.sample_rate, "n_samples": n,
                          "duration": n / self.params.sample_rate})
        return None
