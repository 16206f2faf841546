"""Stage ``diarize``: who spoke when, as speaker turns.

Two backends:

- ``embeddings`` (offline), built like pyannote's pipeline (``method: segmentation``, the default): pyannote's
  segmentation network shipped in whisperx's wheel (the model its VAD runs; ``segmentation_model`` for another
  multi-label checkpoint) gives frame-level activity of up to 3 local speakers per 5 s chunk, every
  ``segmentation_step_s``; resemblyzer embeds each local speaker of each chunk from the frames where it speaks
  alone; the embeddings are clustered (``clustering``: spectral, agglomerative average linkage, or
  ``complete``: complete linkage, where a cluster of one embedding never takes a speaker) into
  ``num_speakers``, or into a count estimated within ``min_speakers..max_speakers`` (rough on short
  recordings, so give the count when known), each chunk's local speakers matched one-to-one to the
  clusters; the chunks are stitched back with the segmentation's speaker count per frame, so two voices at
  once give two overlapping turns (overlap). ``method: windows`` is the older variant: WebRTC VAD, fixed
  resemblyzer windows, a vote per frame (no overlap, turn changes blurred over a window).
- ``pyannote``: pyannote.audio's pipeline through whisperx (``model`` a hub name or a local directory, token
  from ``HF_TOKEN``).

A ``num_speakers`` column in ``sessions.csv`` gives the count for one recording (e.g. 1 for a monologue),
overriding the parameter.

Example (pipelines.yaml)::

    - stage: diarize
      backend: embeddings
      params: {num_speakers: 2, method: segmentation, segmentation_step_s: 0.5}
      resources: {num_cpus: 2}

Output group ``diarize/``::

    turns   table: start, end (float64 s), speaker (str, "SPEAKER_00" ...); turns of different speakers
            overlap where both speak (attrs overlap_s: their total)
    attrs   backend, model, n_speakers (library versions: the stage marker)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contracts import check_device
from ..errors import ConfigError
from ..records import Turn
from ..speech.backends import DIARIZERS, diarizer_class
from ..store import read_table, write_table
from .audio import read_audio
from .base import Stage

if TYPE_CHECKING:
    import zarr

    from ..records import Session
    from ..spec import StageSpec
    from ..speech.backends import Diarizer
    from ..store import SessionGroup

__all__ = ["DiarizeParams", "DiarizeStage", "overlap_seconds", "read_diarizer", "read_turns"]


@dataclass(frozen=True)
class DiarizeParams:
    """Parameters of ``diarize``, passed as they are to the backend; the window/VAD/clustering ones apply to the
    ``embeddings`` backend, ``cache_dir`` to ``pyannote``."""

    num_speakers: int | None = None
    min_speakers: int = 1
    max_speakers: int = 8
    device: str = "cpu"
    threads: int = 2
    window_s: float = 1.5  # seconds of speech per embedding
    hop_s: float = 0.25
    vad_aggressiveness: int = 3  # WebRTC VAD 0 (lenient) .. 3 (strict)
    min_speech_s: float = 0.2
    min_silence_s: float = 0.3
    clustering: str = "spectral"
    method: str = "segmentation"  # embeddings: "segmentation" (pyannote-style) or "windows" (sliding windows)
    segmentation_model: str | None = None  # a pyannote segmentation checkpoint; None: whisperx's shipped one
    segmentation_step_s: float = 0.5  # hop of the 5 s segmentation chunks
    onset: float = 0.5  # segmentation activity above which a local speaker speaks
    min_fit_s: float = 0.5  # speech a local speaker needs in a chunk for its embedding to shape the clusters
    min_duration_off_s: float = 0.0  # gaps within one speaker's speech shorter than this are filled
    cache_dir: str | None = None  # pyannote: where hub models are cached

    def validate(self) -> None:
        if self.num_speakers is not None and self.num_speakers < 1:
            raise ValueError(f"num_speakers must be >= 1, got {self.num_speakers}")
        if not 1 <= self.min_speakers <= self.max_speakers:
            raise ValueError(f"need 1 <= min_speakers <= max_speakers, got {self.min_speakers}..{self.max_speakers}")
        if not 0 < self.hop_s <= self.window_s <= 10:
            raise ValueError("need 0 < hop_s <= window_s <= 10 s")
        if self.vad_aggressiveness not in (0, 1, 2, 3):
            raise ValueError("vad_aggressiveness must be 0, 1, 2 or 3")
        if self.clustering not in ("spectral", "agglomerative", "complete"):
            raise ValueError(f"clustering must be 'spectral', 'agglomerative' or 'complete', got {self.clustering!r}")
        if self.method not in ("segmentation", "windows"):
            raise ValueError(f"method must be 'segmentation' or 'windows', got {self.method!r}")
        if not 0.05 <= self.segmentation_step_s <= 5:
            raise ValueError(f"segmentation_step_s must be within 0.05..5 s, got {self.segmentation_step_s}")
        if not 0 < self.onset < 1:
            raise ValueError(f"onset must be within 0..1 (exclusive), got {self.onset}")
        if not 0 <= self.min_fit_s <= 5 or not 0 <= self.min_duration_off_s <= 5:
            raise ValueError("min_fit_s and min_duration_off_s must be within 0..5 s")
        check_device(self.device, ("cpu", "cuda", "cuda:N"))


def _num_speakers(session: Session) -> int | None:
    """The speaker count a ``sessions.csv`` row gives for this recording (column ``num_speakers``), if any."""
    value = session.meta.get("num_speakers", "").strip()
    if not value:
        return None
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{session.relpath}: sessions.csv gives num_speakers {value!r}; use a whole number >= 1")
    return int(value)


class DiarizeStage(Stage):
    """Speaker turns from the configured :class:`~ether_prep.speech.backends.Diarizer` (chosen once)."""

    name = "diarize"
    version = "1"
    requires = ("audio",)
    needs_stream = "audio"
    backends = tuple(DIARIZERS)
    Params = DiarizeParams

    def __init__(self, spec: StageSpec) -> None:
        super().__init__(spec)
        self._backend = diarizer_class(spec.backend)
        self._model: Diarizer | None = None

    def model_info(self) -> dict[str, str]:
        return self._backend.describe(self.spec.model, self.params)

    def library_names(self) -> tuple[str, ...]:
        return self._backend.libraries

    def cuda_engines(self) -> tuple[str, ...]:
        return ("torch",)  # pyannote and resemblyzer both run on torch

    def fingerprint_inputs(self, session: Session) -> dict[str, Any]:
        n = _num_speakers(session)
        return {"num_speakers": n} if n is not None else {}

    def setup(self) -> None:
        if self._model is None:
            self._model = self._backend(self.spec.model, self.params)

    def teardown(self) -> None:
        self._model = None

    def diarize(self, audio: np.ndarray, sample_rate: int = 16000, num_speakers: int | None = None) -> list[Turn]:
        """Turns of one 16 kHz mono signal (``num_speakers`` overrides the parameter for this signal)."""
        self.setup()
        assert self._model is not None
        return self._model.diarize(audio, sample_rate, num_speakers or self.params.num_speakers)

    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        audio = read_audio(store)
        turns = self.diarize(audio.samples(), audio.sample_rate, _num_speakers(session))
        speakers = sorted({t.speaker for t in turns})
        write_table(out, "turns", {
            "start": np.array([t.start for t in turns], dtype=np.float64),
            "end": np.array([t.end for t in turns], dtype=np.float64),
            "speaker": np.array([t.speaker for t in turns], dtype=str),
        }, attrs={"units": "seconds"}, dim="turn")
        out.attrs.update({"backend": self.spec.backend, "model": self.model_info()["id"],
                          "n_speakers": len(speakers), "speakers": speakers, "overlap_s": overlap_seconds(turns)})
        return None if turns else "no speech found: zero turns"


def overlap_seconds(turns: list[Turn]) -> float:
    """Seconds during which two or more speakers talk at once."""
    edges = sorted([(t.start, 1) for t in turns] + [(t.end, -1) for t in turns])
    total, depth, last = 0.0, 0, 0.0
    for time, step in edges:
        if depth >= 2:
            total += time - last
        depth, last = depth + step, time
    return round(total, 3)


def read_turns(store: SessionGroup) -> list[Turn]:
    """The diarized turns of one session (empty when the stage was skipped: no audio)."""
    if store.stage_state("diarize").state == "skipped":
        return []
    t = read_table(store.stage_group("diarize"), "turns")
    return [Turn(float(a), float(b), str(k)) for a, b, k in zip(t["start"], t["end"], t["speaker"], strict=True)]


def read_diarizer(store: SessionGroup) -> str | None:
    """The backend that diarized one session (None when the stage is not done there)."""
    if store.stage_state("diarize").state != "done":
        return None
    return store.stage_group("diarize").attrs.get("backend")
