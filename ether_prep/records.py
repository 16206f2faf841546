"""Small records with stable ids, shared by every layer; all times are in seconds on the session clock (from the
earliest start of the recording's audio and video streams, see :class:`MediaProbe`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NotRequired, TypedDict

__all__ = [
    "DialoguePair",
    "FaceTrack",
    "MediaProbe",
    "RecordingIdentity",
    "Session",
    "Span",
    "Turn",
    "Utterance",
    "Word",
]

Span = tuple[float, float]  # (start, end) in seconds


@dataclass(frozen=True)
class MediaProbe:
    """What PyAV reports about a recording, before any decoding."""

    duration: float
    has_audio: bool
    has_video: bool
    format_name: str
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_codec: str | None = None
    video_fps: float | None = None
    video_frame_count: int | None = None
    video_width: int | None = None  # as displayed: the display matrix's rotation applied
    video_height: int | None = None
    video_codec: str | None = None
    video_rotation: int = 0  # degrees counter-clockwise that turn stored frames upright (0, 90, 180, 270)
    # The session clock: each stream's start on the container's clock (s; None where the container does not
    # say) and ``origin``, the earliest of the audio and video starts: session time 0, which every stage's times
    # count from (audio that starts later is padded with silence, a video that starts later has later times).
    start_time: float | None = None  # the container's own start (counts subtitle/data streams too)
    origin: float = 0.0
    audio_start: float | None = None  # of the first audio track
    video_start: float | None = None  # of the first video stream (cover art is not a video)
    audio_tracks: tuple[dict[str, Any], ...] = ()  # every audio track (track, codec, channels, ...) when several
    cover_art: int = 0  # attached pictures (MP3/M4A cover art) ignored: the session is audio only

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RecordingIdentity:
    """What a recording was when it was read: its size, modification time and a digest of its content (the
    whole file when small, else its first and last MiB), so a replaced or still-growing file is noticed."""

    size: int
    mtime_ns: int
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def change(self, now: RecordingIdentity) -> str | None:
        """How the recording ``now`` differs from this one, in words (None: the same)."""
        if now == self:
            return None
        parts = []
        if now.size != self.size:
            parts.append(f"size {self.size} -> {now.size} bytes")
        if now.mtime_ns != self.mtime_ns:
            parts.append(f"modified {_iso(self.mtime_ns)} -> {_iso(now.mtime_ns)}")
        if not parts:
            parts.append("same size and time, other content")
        return ", ".join(parts)


def _iso(ns: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Session:
    """One recording: a video with audio, or audio alone.

    ``id`` is derived from the path relative to the raw folder, so it is stable across machines and runs.
    ``meta`` holds the row of an optional ``sessions.csv`` beside the file (speaker roles, notes).
    """

    id: str
    path: Path
    relpath: str
    kind: str  # "video", "audio" or "image"
    meta: dict[str, str] = field(default_factory=dict)
    probe: MediaProbe | None = None  # None when the file could not be probed (the session then fails)
    identity: RecordingIdentity | None = None  # the file as probed (None: not probed)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "path": str(self.path), "relpath": self.relpath, "kind": self.kind,
                "meta": dict(self.meta), "probe": self.probe.to_dict() if self.probe else None,
                "identity": self.identity.to_dict() if self.identity else None}


class Word(TypedDict):
    """A recognised word, as it goes from the ASR adapter through the speech logic to the ``transcribe`` and
    ``utterances`` tables (a plain dict, as whisperx passes words). ``interpolated`` marks times filled in,
    not measured; ``speaker`` is set by the utterances stage, ``channel`` and ``source`` by transcribe."""

    text: str
    start: float
    end: float
    score: float
    interpolated: NotRequired[bool]
    speaker: NotRequired[str]
    channel: NotRequired[int]
    source: NotRequired[str]  # "batch" (whisperx's batched pass) or "redecode" (the completeness guard)
    cut: NotRequired[tuple[float, float]]  # inside the completeness guard: the extent of a word it cut back


@dataclass(frozen=True)
class Turn:
    """A diarized stretch of one speaker's speech."""

    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class Utterance:
    """A speaker's consecutive words, split at pauses and at sentence ends past a maximum length."""

    id: str
    session_id: str
    start: float
    end: float
    speaker: str
    text: str
    word_start: int  # index of the first word in the session's word table
    word_end: int  # one past the last word
    score: float


@dataclass(frozen=True)
class FaceTrack:
    """One face followed across analysed frames (within one shot), and the person it belongs to."""

    track: int
    first_time: float
    last_time: float
    n_frames: int
    mean_box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels
    person: int  # the same id for every track of one person (across cuts, gaps and re-entries)
    shot: int


@dataclass(frozen=True)
class DialoguePair:
    """A client turn (one or more utterances) and the counsellor's reply that follows it: the unit
    incongruence labels attach to. ``gap`` is the reply's start minus the client turn's end."""

    client_utterances: tuple[str, ...]
    counsellor_utterances: tuple[str, ...]
    start: float
    end: float
    gap: float
