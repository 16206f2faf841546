"""Stage ``audio``: decode each session's audio, streamed, to float32 mono at 16 kHz, and store the probe.

Later stages (speech, align) slice utterance audio from ``audio/waveform`` instead of decoding again.

The waveform is on the session clock, as face times are: sample ``i`` lies at ``i / sample_rate`` seconds from
session time 0, the earliest start of the recording's audio and video streams. Audio that starts later (an
MP4 whose audio stream starts 1.4 s after its video: edit lists of cameras, OBS and screen recorders) is
preceded by that much silence (zeros), so every reader that indexes the waveform by time stays in sync with the
faces without applying an offset of its own. Group attrs ``session_origin`` (session time 0 on the container's
clock, s), ``start_offset`` (where the track's first decoded sample lies, s) and ``padded_samples`` say so.

A recording with several audio tracks is read from track ``track`` (0: the first); the others are listed in
the note and in ``attrs.audio_tracks``. Cover art (an MP3/M4A's attached picture) is no video: such a file is
an audio-only session.

Example (pipelines.yaml)::

    - stage: audio
      params: {sample_rate: 16000, block_s: 30}
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..sessions import check_unchanged
from ..store import create_array
from .base import Stage

if TYPE_CHECKING:
    import zarr

    from ..records import Session
    from ..store import SessionGroup

__all__ = ["Audio", "AudioParams", "AudioStage", "read_audio"]


@dataclass(frozen=True)
class AudioParams:
    """``channel``: None downmixes to mono; 0, 1, ... keeps one channel (one speaker per channel);
    ``track``: which audio track of a file with several (0: the first)."""

    sample_rate: int = 16000
    channel: int | None = None
    block_s: float = 30.0  # seconds decoded per block (memory only: the waveform is the same)
    track: int = 0

    def validate(self) -> None:
        if not 8000 <= self.sample_rate <= 48000:
            raise ValueError(f"sample_rate must be within 8000..48000 Hz, got {self.sample_rate}")
        if self.block_s <= 0:
            raise ValueError("block_s must be positive (seconds)")
        if self.track < 0:
            raise ValueError(f"track must be 0 (the first audio track) or more, got {self.track}")


class AudioStage(Stage):
    """Decode audio to ``waveform`` (float32, 1-D) in blocks, so memory stays flat however long the file."""

    name = "audio"
    version = "2"  # 2: on the session clock (leading silence for audio that starts late); track
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
        p: AudioParams = self.params
        block = int(p.block_s * p.sample_rate)
        wave = create_array(out, "waveform", (0,), np.float32, chunk_len=block, dims=("sample",), fill_value=0.0)
        n = 0
        clock = pyav.AudioClock()
        for samples in pyav.iter_audio_blocks(session.path, p.sample_rate, block, p.channel, p.track, clock):
            wave.append(np.asarray(samples, dtype=np.float32))
            n += samples.size
            self.report_progress(n / p.sample_rate)
        check_unchanged(session.path, session.identity)  # a file still being written would be stored as a part
        wave.attrs.update({"sample_rate": p.sample_rate, "units": "amplitude [-1, 1]",
                           "time": "session clock: sample i at i / sample_rate s"})
        tracks = list(probe.audio_tracks)
        channels = (tracks[p.track]["channels"] if p.track < len(tracks) else probe.audio_channels) or 1
        out.attrs.update({"sample_rate": p.sample_rate, "n_samples": n, "duration": n / p.sample_rate,
                          "session_origin": clock.origin, "start_offset": clock.start,
                          "padded_samples": clock.padded, "trimmed_samples": clock.trimmed,
                          "track": p.track, "channels": int(channels), "audio_tracks": tracks})
        notes = []
        if clock.padded:
            video_first = probe.video_start is not None and probe.video_start <= clock.origin
            first = "the video" if video_first else "another track"
            notes.append(f"audio starts {clock.start:.3f} s into the session (after {first}): "
                         f"{clock.padded} samples of silence put before it, on the session clock")
        if len(tracks) > 1:
            others = "; ".join(_track_text(t) for t in tracks if t["track"] != p.track)
            notes.append(f"{len(tracks)} audio tracks: track {p.track} read ({_track_text(tracks[p.track])}), not "
                         f"{others}; set the audio stage's track parameter to read another")
        return "; ".join(notes) or None


def _track_text(track: dict) -> str:
    """One audio track in words: ``1 (aac, 2 ch, eng, 'Interviewer')``."""
    bits = [str(track.get("codec")), f"{track.get('channels')} ch", *(str(track[k]) for k in ("language", "title")
                                                                     if track.get(k) and track[k] != "und")]
    return f"{track['track']} ({', '.join(bits)})"


@dataclass(frozen=True)
class Audio:
    """A session's decoded audio as the audio stage stored it: ``waveform`` (opened, read on slicing; None when
    the recording has no audio stream or the stage is not complete) on the session clock, its ``sample_rate``
    and the stage's attributes (``duration``, ``channels``, ``track``, ``probe``, ... see :class:`AudioStage`)."""

    waveform: Any
    sample_rate: int
    attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def n_samples(self) -> int:
        return int(self.attrs.get("n_samples", 0))

    @property
    def duration(self) -> float | None:
        """Seconds decoded (on the session clock), None when the stage is not complete."""
        value = self.attrs.get("duration")
        return None if value is None else float(value)

    def samples(self, first: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples ``first:stop`` as float32 (all of them by default)."""
        if self.waveform is None:
            return np.zeros(0, np.float32)
        return np.asarray(self.waveform[first:stop], dtype=np.float32)


def read_audio(store: SessionGroup) -> Audio:
    """The audio stage's output for one session; when the stage is not complete, no waveform at the default
    sample rate (what an audio stage with default parameters would decode to)."""
    if not store.stage_state("audio").complete:
        return Audio(None, AudioParams.sample_rate)
    group = store.stage_group("audio")
    attrs = dict(group.attrs)
    return Audio(group.get("waveform"), int(attrs["sample_rate"]), attrs)
