"""Stage ``voice``: openSMILE voice descriptors for the whole session, per-utterance functionals, vocal cues.

Reads ``audio/waveform`` and the ``align`` stage's utterances (their times, speakers, tensor grid and cues);
writes per session::

    voice/                      attrs: feature_set, level, opensmile (version), hop_s, frame_s, n_frames,
                                       lld_names, functional_names, loudness, f0 (the descriptors the summaries
                                       use), rate_hz (of the steps), cue_params, flat_voice_max, windows
      lld         (K, D)  float32 low-level descriptors at 100 Hz (eGeMAPS v02: 25), frame k on the session
                          clock at k * hop_s + frame_s / 2 s; voiced-only descriptors (eGeMAPS/GeMAPS
                          ``*_sma3nz``: F0 semitones, jitter, shimmer, HNR, H1-H2, H1-A3, formants; ComParE
                          F0final, jitter, shimmer) are NaN where unvoiced (openSMILE writes 0 there);
                          chunks of 60 s
      functionals (N, F)  float32 openSMILE functionals of each utterance's samples (eGeMAPS v02: 88; NaN for
                          an utterance under ~0.1 s); row i: utterance i
      utterances/ table, one row per utterance: id, f0_median_st, f0_sd_st (voiced frames), loudness_mean,
                          voiced_share, n_frames, vocal_arousal, mismatch, flags (";"-joined), channels
      steps/      ragged, the same rows as align/tensors (utterance i: rows row_start:row_start + n_steps of
                  the align grid): lld (L, D) float32 mean of the frames within half a step (0 where none),
                  mask (L,) bool a frame there, voiced (L,) bool a voiced frame there

Long recordings stay flat in memory: the waveform is read ``block_s`` at a time with ``context_s`` of audio
either side (the frames of each block are the same as one call over the whole file: openSMILE's windows and
smoothing reach far less than a second). With ``resources: {window_s: 600}`` a recording at least two windows
long is computed as windows of frames, each a task of its own, joined in time order (the same arrays). Vocal
arousal and the voice-aware cues are defined in :mod:`ether_prep.align.cues`.

Example (pipelines.yaml)::

    - stage: voice
      params: {feature_set: eGeMAPSv02, level: lld, block_s: 60.0, context_s: 1.0, flat_voice_max: 0.35}
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..align.cues import UtteranceCues, vocal_arousal, voice_cues
from ..align.tensors import frame_means
from ..store import create_array, read_table, write_array, write_labels, write_ragged, write_table
from ..windows import Window, check_tiling, joined_attrs, plan_windows, spans, window_length
from .align import read_align
from .audio import Audio, read_audio
from .base import Stage

if TYPE_CHECKING:
    import zarr

    from ..adapters.opensmile_voice import VoiceExtractor
    from ..records import Session
    from ..store import SessionGroup

__all__ = ["VoiceOutputs", "VoiceStage", "VoiceStageParams", "read_voice", "utterance_inputs"]

_SETS = ("eGeMAPSv02", "GeMAPSv01b", "ComParE_2016")  # as the adapter names them (checked against it in tests)
_LEVELS = {"lld": _SETS, "lld_deltas": ("ComParE_2016",)}
_LOUDNESS = {"eGeMAPSv02": "Loudness_sma3", "GeMAPSv01b": "Loudness_sma3", "ComParE_2016": "audspec_lengthL1norm_sma"}
_F0 = {"eGeMAPSv02": "F0semitoneFrom27.5Hz_sma3nz", "GeMAPSv01b": "F0semitoneFrom27.5Hz_sma3nz",
       "ComParE_2016": "F0final_sma"}  # ComParE's in Hz
_COMPARE_VOICED = ("F0final_sma", "jitterLocal_sma", "jitterDDP_sma", "shimmerLocal_sma")
_CHUNK_FRAMES = 6000  # 60 s of frames per chunk (~0.6 MB for eGeMAPS)


@dataclass(frozen=True)
class VoiceStageParams:
    """``feature_set``: eGeMAPSv02, GeMAPSv01b or ComParE_2016; ``level``: ``lld`` or ``lld_deltas``
    (ComParE_2016 only) for the session's descriptors; functionals are always of ``feature_set``."""

    feature_set: str = "eGeMAPSv02"
    level: str = "lld"
    functionals: bool = True  # false: no per-utterance functionals (N, 0)
    block_s: float = 60.0  # audio per openSMILE call (memory only: the frames are the same)
    context_s: float = 1.0  # audio either side of a block, so its edge frames equal the whole file's
    flat_voice_max: float = 0.35  # vocal arousal under this is a flat voice (the minimizing cue)
    min_baseline: int = 3  # utterances with voice a speaker needs for their own arousal baseline

    def validate(self) -> None:
        if self.feature_set not in _SETS:
            raise ValueError(f"feature_set {self.feature_set!r} is not one of {', '.join(_SETS)}")
        if self.level not in _LEVELS:
            raise ValueError(f"level {self.level!r} is not one of {', '.join(_LEVELS)}")
        if self.feature_set not in _LEVELS[self.level]:
            raise ValueError(f"level {self.level!r} exists only for {', '.join(_LEVELS[self.level])} in openSMILE; "
                             f"use level: lld with {self.feature_set}")
        if not 1 <= self.block_s <= 3600:
            raise ValueError(f"block_s must be within 1..3600 s, got {self.block_s}")
        if not 0.1 <= self.context_s <= 10:
            raise ValueError(f"context_s must be within 0.1..10 s, got {self.context_s}")
        if not 0 <= self.flat_voice_max <= 1:
            raise ValueError(f"flat_voice_max must be within 0..1 (vocal arousal), got {self.flat_voice_max}")
        if self.min_baseline < 2:
            raise ValueError(f"min_baseline must be at least 2 utterances, got {self.min_baseline}")


_UTTERANCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "voice_f0_median_st": ("float64", "median F0 over the utterance's voiced frames, semitones above 27.5 Hz "
                                      "(null: no voiced frame)"),
    "voice_f0_sd_st": ("float64", "F0 variability: standard deviation over voiced frames, semitones"),
    "voice_loudness_mean": ("float64", "mean openSMILE loudness over the utterance's frames"),
    "voice_voiced_share": ("float64", "share of the utterance's frames that are voiced, 0..1"),
    "voice_arousal": ("float64", "vocal arousal, 0..1, against the speaker's own baseline (null: too few "
                                 "utterances)"),
    "voice_mismatch": ("float64", "verbal-nonverbal mismatch with vocal arousal beside the face, 0..1 (null: "
                                  "nothing to judge)"),
    "voice_flags": ("list<string>", "incongruence flags judged with the voice (minimizing, ...)"),
    "cue_channels": ("list<string>", "channels voice_mismatch and voice_flags used: text, face, voice"),
}


class VoiceStage(Stage):
    """openSMILE LLDs over the session, functionals per utterance, voice on the align grid (module docstring)."""

    name = "voice"
    family = "align"
    requires = ("audio", "align")
    needs_stream = "audio"
    Params = VoiceStageParams
    libraries = ("opensmile",)
    windowed = True
    manifest_columns: ClassVar[dict[str, dict[str, tuple[str, ...]]]] = {"utterances": _UTTERANCE_COLUMNS}
    utterance_arrays = ("functionals",)  # (N, 88): the items' ``functionals``
    # Per step of the align grid: the items' ``voice`` (T, D), ``voice_mask`` and ``voice_voiced`` (T,).
    step_arrays: ClassVar[dict[str, str]] = {"voice": "steps/lld", "voice_mask": "steps/mask",
                                             "voice_voiced": "steps/voiced"}

    def __init__(self, spec: Any) -> None:
        super().__init__(spec)
        self._extractors: dict[int, VoiceExtractor] = {}

    def _extractor(self, sample_rate: int) -> VoiceExtractor:
        """The openSMILE extractors for this rate, built once per worker."""
        if sample_rate not in self._extractors:
            from ..adapters.opensmile_voice import VoiceExtractor

            self._extractors[sample_rate] = VoiceExtractor(self.params.feature_set, self.params.level, sample_rate)
        return self._extractors[sample_rate]

    @classmethod
    def read_utterance_array(cls, store: SessionGroup, name: str) -> Any:
        """As :meth:`Stage.read_utterance_array`, None too when computed from another align run (stale)."""
        out = read_voice(store)
        if out is None or out.upstream.get("align") != store.stage_state("align").fingerprint:
            return None
        return super().read_utterance_array(store, name)

    @classmethod
    def manifest_values(cls, store: SessionGroup) -> dict[str, dict[str, Any]]:
        out = read_voice(store)
        # Rows are align's: a voice result computed from another align run (stale, e.g. after `--only align`)
        # would put its values on other utterances, so its columns stay null until voice is rerun.
        if out is None or out.upstream.get("align") != store.stage_state("align").fingerprint:
            return {}
        t = out.utterances
        cols: dict[str, Any] = {f"voice_{k}": _nullable(t[k]) for k in
                                ("f0_median_st", "f0_sd_st", "loudness_mean", "voiced_share")}
        cols.update({"voice_arousal": _nullable(t["vocal_arousal"]), "voice_mismatch": _nullable(t["mismatch"]),
                     "voice_flags": _split(t["flags"]), "cue_channels": _split(t["channels"])})
        return {"utterances": cols}

    # -- the whole recording -----------------------------------------------------------------------------
    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        return self.compute(read_audio(store), _utterances(store), out)

    def compute(self, audio: Audio, utts: dict[str, Any], out: zarr.Group) -> str | None:
        """The whole recording's outputs from its audio and utterances (:func:`utterance_inputs`) into ``out``."""
        ex = self._extractor(audio.sample_rate)
        lld = self._create_lld(out, ex)
        for frames in self._frames(audio, ex, 0, None):
            lld.append(frames, axis=0)
        funcs = self._functionals(audio, ex, utts["start"], utts["end"])
        return self._finish(out, ex, utts, funcs)

    def _create_lld(self, out: zarr.Group, ex: VoiceExtractor) -> zarr.Array:
        return create_array(out, "lld", (0, len(ex.lld_names)), np.float32, chunk_len=_CHUNK_FRAMES,
                            dims=("frame", "descriptor"))

    def _frames(self, audio: Audio, ex: VoiceExtractor, first: int, stop: int | None) -> Iterator[np.ndarray]:
        """LLD frames ``first..stop`` (None: to the end of the audio), ``block_s`` of audio at a time."""
        p: VoiceStageParams = self.params
        rate = audio.sample_rate
        hop = round(ex.hop_s * rate)
        block = max(1, round(p.block_s / ex.hop_s))
        context = round(p.context_s / ex.hop_s) * hop  # whole frames, so each block's frames are on the file's grid
        frame = first
        while (stop is None or frame < stop) and frame * hop < audio.n_samples:
            n = block if stop is None else min(block, stop - frame)
            a = frame * hop
            lo = max(0, a - context)
            got = ex.lld(audio.samples(lo, min(audio.n_samples, a + n * hop + context)))[(a - lo) // hop:][:n]
            if not len(got):
                break
            yield _voiced_only(got, ex.lld_names, p.feature_set, p.level)
            frame += len(got)
            self.report_progress(frame * ex.hop_s)
            if len(got) < n:  # the end of the recording
                break

    def _functionals(self, audio: Audio, ex: VoiceExtractor, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
        """(N, F) functionals of each utterance's samples ((N, 0) with ``functionals: false``)."""
        width = len(ex.functional_names) if self.params.functionals else 0
        out = np.full((len(starts), width), np.nan, np.float32)
        if width and audio.waveform is not None:
            rate = audio.sample_rate
            wave = _Ahead(audio.waveform, round(self.params.block_s * rate))
            for i, (s, e) in enumerate(zip(starts, ends, strict=True)):
                out[i] = ex.functionals(wave[round(s * rate):round(e * rate)])
        return out

    def _finish(self, out: zarr.Group, ex: VoiceExtractor, utts: dict[str, Any], funcs: np.ndarray) -> str | None:
        """Per-utterance summaries, cues and steps from the stored frames; the functionals; the attrs."""
        p: VoiceStageParams = self.params
        lld = _Ahead(out["lld"], 2 * _CHUNK_FRAMES)  # utterances in time order: each chunk decoded about once
        names = ex.lld_names
        write_labels(out, "descriptor", names)
        write_array(out, "functionals", funcs, chunk_len=max(len(funcs), 1), dims=("utterance", "functional"))
        summary = _summaries(lld, names, p.feature_set, ex, utts)
        arousal = vocal_arousal(summary["loudness_mean"], summary["f0_sd_st"], list(utts["speaker"]), p.min_baseline)
        cue_params = utts["cue_params"]
        judged = [voice_cues(c, a, cue_params, p.flat_voice_max) for c, a in zip(utts["cues"], arousal, strict=True)]
        write_table(out, "utterances", {
            "id": np.asarray(utts["id"], dtype=str), **summary, "vocal_arousal": arousal,
            "mismatch": np.array([j[0] for j in judged], np.float64),
            "flags": np.array([";".join(j[1]) for j in judged], dtype=str),
            "channels": np.array([";".join(j[2]) for j in judged], dtype=str)}, dim="utterance")
        self._write_steps(out, lld, ex, utts)
        out.attrs.update({
            "feature_set": p.feature_set, "level": p.level, "opensmile": _version(), "hop_s": ex.hop_s,
            "frame_s": ex.frame_s, "n_frames": len(lld), "lld_names": names,
            "functional_names": ex.functional_names if p.functionals else [], "loudness": _LOUDNESS[p.feature_set],
            "f0": _F0[p.feature_set], "rate_hz": utts["rate_hz"], "flat_voice_max": p.flat_voice_max,
            "cue_params": dict(vars(cue_params)), "time": "frame k at k * hop_s + frame_s / 2 s (session clock)"})
        if not len(funcs):
            return f"{len(lld)} frame(s) of voice descriptors; no utterances: no functionals"
        short = int(np.isnan(funcs).all(axis=1).sum()) if funcs.shape[1] else 0
        return f"{short} utterance(s) too short for functionals (NaN rows)" if short else None

    def _write_steps(self, out: zarr.Group, lld: Any, ex: VoiceExtractor, utts: dict[str, Any]) -> None:
        """The frames on each utterance's align grid, in align's row layout (rows row_start:row_start + n)."""
        rate = float(utts["rate_hz"])
        names = ex.lld_names
        f0 = names.index(_F0[self.params.feature_set]) if _F0[self.params.feature_set] in names else None
        n_rows = int((utts["row_start"] + utts["n_steps"]).max(initial=0))
        values = np.zeros((n_rows, len(names)), np.float32)
        mask = np.zeros(n_rows, bool)
        voiced = np.zeros(n_rows, bool)
        for r0, n, t0 in zip(utts["row_start"], utts["n_steps"], utts["grid_t0"], strict=True):
            grid = float(t0) + np.arange(int(n)) / rate
            a, b = _frame_range(grid[0] - 1 / rate, grid[-1] + 1 / rate, ex, len(lld)) if n else (0, 0)
            means, present = frame_means(lld[a:b], a, ex.hop_s, ex.frame_s, grid, rate)
            rows = slice(int(r0), int(r0) + int(n))
            mask[rows] = present
            voiced[rows] = np.isfinite(means[:, f0]) if f0 is not None else False
            values[rows] = np.nan_to_num(means, nan=0.0)
        offsets = np.concatenate([np.asarray(utts["row_start"], np.int64), [n_rows]])  # align's own offsets
        write_ragged(out, "steps", {"lld": values, "mask": mask, "voiced": voiced}, offsets,
                     dims={"lld": ("step", "descriptor"), "mask": ("step",), "voiced": ("step",)},
                     attrs={"rate_hz": rate, "rows": "the align stage's tensor rows", "fill": "0 where no value"})

    # -- time windows ------------------------------------------------------------------------------------
    def _window_s(self, session: Session) -> float | None:
        probe = session.probe
        if probe is None or not probe.has_audio:
            return None
        return window_length(probe.duration, self.spec.resources.window_s)

    def windows(self, session: Session, store: SessionGroup) -> list[Window]:
        """Windows of about ``window_s`` of frames (even cuts: frames do not depend on where a cut falls)."""
        window_s = self._window_s(session)
        audio = read_audio(store)
        if window_s is None or not audio.n_samples:
            return []
        per = round(window_s / 0.01)  # frames of 10 ms
        n = audio.n_samples // round(0.01 * audio.sample_rate)  # an upper bound: the last window ends with the audio
        count = n // per
        if count < 2:
            return []
        return plan_windows([k * per for k in range(count)] + [n], lambda k: k * 0.01, audio.duration or n * 0.01)

    def run_window(self, session: Session, store: SessionGroup, window: Window, out: zarr.Group) -> None:
        """One window's frames, and the functionals of the utterances that start in it."""
        audio = read_audio(store)
        ex = self._extractor(audio.sample_rate)
        first, last = int(window.data["first"]), window.index == window.count - 1
        lld = self._create_lld(out, ex)
        for frames in self._frames(audio, ex, first, None if last else int(window.data["stop"])):
            lld.append(frames, axis=0)
        utts = _utterances(store)
        mine = np.flatnonzero((utts["start"] >= window.start) & ((utts["start"] < window.end) | last))
        funcs = self._functionals(audio, ex, utts["start"][mine], utts["end"][mine])
        write_array(out, "functionals", funcs, dims=("utterance", "functional"))
        write_array(out, "rows", mine.astype(np.int64), dims=("utterance",))
        out.attrs.update({"first": first, "stop": first + int(lld.shape[0])})

    def join(self, session: Session, store: SessionGroup, windows: list[zarr.Group], out: zarr.Group) -> str | None:
        """The windows' frames in time order (copied window by window), their functionals in utterance order."""
        audio = read_audio(store)
        ex = self._extractor(audio.sample_rate)
        check_tiling(spans(windows), f"{session.path}: voice", "frame")
        lld = self._create_lld(out, ex)
        utts = _utterances(store)
        funcs = np.full((len(utts["start"]), len(ex.functional_names) if self.params.functionals else 0), np.nan,
                        np.float32)
        for g in windows:
            part = g["lld"]
            for a in range(0, part.shape[0], _CHUNK_FRAMES):
                lld.append(np.asarray(part[a:a + _CHUNK_FRAMES]), axis=0)
            funcs[np.asarray(g["rows"][...], np.int64)] = np.asarray(g["functionals"][...])
        note = self._finish(out, ex, utts, funcs)
        out.attrs["windows"] = joined_attrs(windows, first_frames=[int(g.attrs["first"]) for g in windows])
        return note


# ---------------------------------------------------------------------------------------------- helpers
def _version() -> str:
    from ..adapters.opensmile_voice import opensmile_version

    return opensmile_version()


class _Ahead:
    """Slices of a chunked array (waveform, frames) read ``span`` rows at a time and kept: utterances come in time
    order, so each chunk is decoded about once, not once per utterance, and memory stays one span."""

    def __init__(self, arr: Any, span: int) -> None:
        self.arr, self.span, self.lo, self.data = arr, max(int(span), 1), 0, np.zeros((0,))

    def __len__(self) -> int:
        return int(self.arr.shape[0])

    def __getitem__(self, rows: slice) -> np.ndarray:
        a, b = max(int(rows.start), 0), min(int(rows.stop), len(self))
        if b <= a:
            return np.asarray(self.arr[a:a])
        if a < self.lo or b > self.lo + len(self.data):
            self.lo, self.data = a, np.asarray(self.arr[a:max(b, a + self.span)])
        return self.data[a - self.lo:b - self.lo]


def _voiced_only(frames: np.ndarray, names: list[str], feature_set: str, level: str) -> np.ndarray:
    """Voiced-only descriptors NaN where F0 is 0 (unvoiced): openSMILE's 0 there is no measurement."""
    f0 = _F0[feature_set]
    if level != "lld" or f0 not in names:
        return frames
    unvoiced = frames[:, names.index(f0)] <= 0
    cols = [i for i, n in enumerate(names) if n.endswith("nz") or (feature_set == "ComParE_2016"
                                                                   and n in _COMPARE_VOICED)]
    frames = frames.copy()
    frames[np.ix_(unvoiced, cols)] = np.nan
    return frames


def _frame_range(start: float, end: float, ex: VoiceExtractor, n_frames: int) -> tuple[int, int]:
    """Frames whose centres lie in ``[start, end]``, clipped to the stored ones."""
    centre = ex.frame_s / 2
    a = int(np.ceil((start - centre) / ex.hop_s - 1e-9))
    b = int(np.floor((end - centre) / ex.hop_s + 1e-9)) + 1
    return min(max(a, 0), n_frames), min(max(b, 0), n_frames)


def _summaries(lld: Any, names: list[str], feature_set: str, ex: VoiceExtractor,
               utts: dict[str, Any]) -> dict[str, np.ndarray]:
    """Per utterance: median and spread of F0 (semitones) over voiced frames, mean loudness, voiced share."""
    n = len(utts["start"])
    out = {k: np.full(n, np.nan) for k in ("f0_median_st", "f0_sd_st", "loudness_mean", "voiced_share")}
    out["n_frames"] = np.zeros(n, np.int64)
    f0_col, loud_col = _F0[feature_set], _LOUDNESS[feature_set]
    for i, (s, e) in enumerate(zip(utts["start"], utts["end"], strict=True)):
        a, b = _frame_range(float(s), float(e), ex, len(lld))
        frames = np.asarray(lld[a:b], np.float64)
        out["n_frames"][i] = b - a
        if not len(frames):
            continue
        if loud_col in names:
            out["loudness_mean"][i] = float(np.nanmean(frames[:, names.index(loud_col)]))
        if f0_col in names:
            f0 = frames[:, names.index(f0_col)]
            f0 = 12 * np.log2(f0 / 27.5) if feature_set == "ComParE_2016" else f0  # Hz there
            voiced = f0[np.isfinite(f0)]
            out["voiced_share"][i] = len(voiced) / len(f0)
            if len(voiced):
                out["f0_median_st"][i], out["f0_sd_st"][i] = float(np.median(voiced)), float(np.std(voiced))
    return out


def _utterances(store: SessionGroup) -> dict[str, Any]:
    """The align stage's utterances as this stage needs them (:func:`utterance_inputs`)."""
    aligned = read_align(store)
    return utterance_inputs(aligned.utterances if aligned is not None else {},
                            aligned.attrs if aligned is not None else {})


def utterance_inputs(t: dict[str, np.ndarray], attrs: dict[str, Any]) -> dict[str, Any]:
    """What :meth:`VoiceStage.compute` reads of utterances: times, speakers, grid rows and face and text cues,
    from a table with the align stage's columns and its attrs (``rate_hz``, ``cue_params``)."""
    n = len(t.get("id", []))
    flags = [tuple(x for x in str(f).split(";") if x) for f in t.get("flags", [])]
    cues = [UtteranceCues(float(t["text_valence"][i]), float(t["text_arousal"][i]), float(t["text_distress"][i]),
                          str(t["distress_word"][i]), float(t["face_valence"][i]), float(t["face_expressivity"][i]),
                          float(t["speaker_coverage"][i]), float(t["mismatch"][i]), flags[i]) for i in range(n)]
    return {"id": t.get("id", np.zeros(0, str)), "speaker": t.get("speaker", np.zeros(0, str)),
            "start": np.asarray(t.get("start", []), np.float64), "end": np.asarray(t.get("end", []), np.float64),
            "row_start": np.asarray(t.get("row_start", []), np.int64),
            "n_steps": np.asarray(t.get("n_steps", []), np.int64),
            "grid_t0": np.asarray(t.get("grid_t0", []), np.float64), "cues": cues,
            "rate_hz": float(attrs.get("rate_hz", 10.0)), "cue_params": _CueParams(**attrs.get("cue_params", {}))}


@dataclass(frozen=True)
class _CueParams:
    """The align stage's cue thresholds as it recorded them (its attrs ``cue_params``)."""

    min_face_coverage: float = 0.5
    distress_min: float = 0.35
    neutral_max: float = 0.2
    neutral_valence: float = 0.1
    polar: float = 0.5


def _nullable(values: Any) -> list[Any]:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(values, np.float64)]


def _split(values: Any) -> list[list[str]]:
    return [[x for x in str(v).split(";") if x] for v in values]


# ---------------------------------------------------------------------------------------------- reader
@dataclass(frozen=True)
class VoiceOutputs:
    """A session's voice outputs: ``lld`` (opened, (K, D)), ``functionals`` (N, F), the ``utterances`` table and
    the attrs (``lld_names``, ``hop_s``, ``frame_s``, ...)."""

    lld: Any
    functionals: np.ndarray
    utterances: dict[str, np.ndarray]
    attrs: dict[str, Any]
    upstream: dict[str, str] = field(default_factory=dict)  # fingerprints of the audio and align results it read

    @property
    def lld_names(self) -> list[str]:
        return list(self.attrs.get("lld_names", []))

    @property
    def times(self) -> np.ndarray:
        """(K,) seconds of each frame's centre on the session clock."""
        return np.arange(self.lld.shape[0]) * float(self.attrs["hop_s"]) + float(self.attrs["frame_s"]) / 2

    def descriptor(self, name: str) -> np.ndarray:
        """One descriptor over the whole session (e.g. ``F0semitoneFrom27.5Hz_sma3nz``), NaN where unvoiced."""
        return np.asarray(self.lld[:, self.lld_names.index(name)], np.float64)


def read_voice(store: SessionGroup) -> VoiceOutputs | None:
    """The voice stage's output for one session (None when it is not done there: no audio, not run)."""
    state = store.stage_state("voice")
    if state.state != "done":
        return None
    group = store.stage_group("voice")
    return VoiceOutputs(group["lld"], np.asarray(group["functionals"][...]), read_table(group, "utterances"),
                        dict(group.attrs), dict(state.info.get("upstream") or {}))
