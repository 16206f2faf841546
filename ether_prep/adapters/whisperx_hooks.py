"""whisperx private-API hooks: every place where ether-prep reaches into whisperx (or the libraries it wraps)
past its public functions, in one module of the whisperx adapter.

Each hook names, in its docstring, the upstream function it mirrors and the version it was written against
(whisperx 3.8.6, faster-whisper 1.2.1, pyannote.audio 4.0.7, nltk 3.10). After upgrading any of them, read
those functions again; ``tests/test_speech.py`` runs every hook on real audio.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ModelError

__all__ = ["aligning_model_class", "offline_punkt", "recording_vad", "set_vad_step"]


def _content_frames(features: np.ndarray) -> int:
    """Number of mel frames before whisperx's zero padding.

    whisperx pads every VAD segment with zeros to 30 s; a padded frame sits at the clamped floor of the
    log-mel in every bin. Trailing frames at the floor carry no audio, so aligning over them would only
    let the last word drift into the padding.
    """
    floor = features.min()
    active = np.nonzero((features > floor + 1e-4).any(axis=0))[0]
    return int(active[-1]) + 1 if active.size else 0


def aligning_model_class() -> type:
    """A whisperx WhisperModel whose batched generation also keeps no-speech probabilities and word times.

    Mirrors ``whisperx.asr.WhisperModel.generate_segment_batched`` of whisperx 3.8.6 (the same prompt and
    ``generate`` call, without its initial-prompt handling, which ether-prep never sets), adding
    ``return_no_speech_prob`` and a pass of faster-whisper 1.2.1's ``WhisperModel.find_alignment`` and
    ``faster_whisper.transcribe.merge_punctuations`` (as its ``add_word_timestamps`` does) on the encoder
    output already computed. whisperx calls it once per batch, in order; the extras are appended in that
    order, which the transcriber checks against the segments returned.
    """
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
            # With timestamp tokens in the sequence (nearly always probable) its mean log-probability no longer
            # tells speech from noise; the text tokens' own probabilities, from the alignment pass, still do.
            text_logprobs = list(avg_logprobs)
            alignments: list[list[dict[str, Any]]] = [[] for _ in range(batch_size)]
            if (self.word_timestamps or not options.without_timestamps) and any(tokens):
                alignments = _aligned_words(self, np.asarray(features), tokenizer, options, tokens, encoder_output,
                                            text_logprobs)
            for i, r in enumerate(results):
                self.extras.append({"no_speech_prob": float(r.no_speech_prob), "words": alignments[i],
                                    "avg_logprob": float(text_logprobs[i])})
            text = tokenizer.tokenizer.decode_batch(tokens)
            return {"text": text, "avg_logprob": avg_logprobs}

    return AligningWhisperModel


def _aligned_words(model: Any, feats: np.ndarray, tokenizer: Any, options: Any, tokens: list[list[int]],
                   encoder_output: Any, text_logprobs: list[float]) -> list[list[dict[str, Any]]]:
    """Cross-attention word times of each item of a batch (faster-whisper 1.2.1's ``find_alignment`` and
    ``merge_punctuations``, as its ``add_word_timestamps`` uses them), over its frames before the padding;
    with timestamp tokens decoded, ``text_logprobs[i]`` becomes the mean log-probability of the text tokens."""
    import faster_whisper.transcribe as fwt

    alignments: list[list[dict[str, Any]]] = [[] for _ in tokens]
    frames = [max(_content_frames(feats[i]), 2) for i in range(len(tokens))]
    # ctranslate2 cannot align an empty sequence: give empty items the end-of-text token alone.
    to_align = [t if t else [tokenizer.eot] for t in tokens]
    found = model.find_alignment(tokenizer, to_align, encoder_output, frames)
    for i, words in enumerate(found):
        if not tokens[i]:
            continue
        if not options.without_timestamps and words:
            n = sum(len(w["tokens"]) for w in words)
            text_logprobs[i] = sum(len(w["tokens"]) * np.log(max(w["probability"], 1e-9)) for w in words) / max(n, 1)
        if model.word_timestamps:
            fwt.merge_punctuations(words, options.prepend_punctuations, options.append_punctuations)
            alignments[i] = [w for w in words if w["word"]]
    return alignments


def recording_vad(inner: Any) -> Any:
    """whisperx's VAD, unchanged, keeping the speech regions it found before merging them into chunks.

    Mirrors ``whisperx.vads.Vad`` of whisperx 3.8.6, the interface ``FasterWhisperPipeline.transcribe``
    calls (``__call__``, ``preprocess_audio``, ``merge_chunks``; ``whisperx.vads.pyannote.Pyannote`` and
    ``Silero`` implement it): a ``Vad`` subclass so the pipeline takes the ``issubclass(..., Vad)`` branch,
    delegating every call to the loaded VAD and keeping the regions of the chunks ``merge_chunks`` returns.
    """
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


def set_vad_step(vad_model: Any, fraction: float) -> None:
    """Hop whisperx's pyannote VAD window by ``fraction`` of its length instead of pyannote's 10%.

    Mirrors ``whisperx.vads.pyannote.Pyannote`` of whisperx 3.8.6: its ``vad_pipeline`` (a
    ``VoiceActivitySegmentation``) keeps the pyannote.audio 4.0.7 ``Inference`` it slides over the audio as
    ``_segmentation``, whose ``step`` (seconds) pyannote sets to a tenth of its ``duration``.
    """
    try:
        inference = vad_model.vad_pipeline._segmentation
        inference.step = fraction * inference.duration
    except AttributeError as exc:
        raise ModelError(f"vad_step {fraction} needs whisperx's pyannote VAD, which this whisperx version "
                         f"lays out differently ({exc}); set `vad_step: 0.1` (the default)") from exc


def offline_punkt() -> None:
    """Let whisperx.align split sentences without ``nltk.download`` when punkt_tab is not installed.

    Mirrors ``whisperx.alignment.align`` of whisperx 3.8.6, which loads
    ``tokenizers/punkt_tab/{PUNKT_LANGUAGES.get(lang, 'english')}.pickle`` with ``nltk.data.load`` and calls
    ``nltk.download('punkt_tab')`` when that raises LookupError: the tokenizers are put in nltk 3.10's
    resource cache (``nltk.data._resource_cache``, keyed by the normalised URL and format) under those names.

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
