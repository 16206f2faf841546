"""PyAV adapter: probing and streamed decoding of audio and video. The only module that imports ``av``.

PyAV wheels bundle their own FFmpeg, so decoding does not depend on the system's FFmpeg version.
Every FFmpeg error is translated into :class:`~ether_prep.errors.InputError` naming the file.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

from ..errors import InputError
from ..records import MediaProbe

__all__ = ["AudioClock", "ClipEncoder", "FramePlan", "PlanMismatch", "PlannedFrames", "ShownFrame", "VideoFrame",
           "check_complete", "frames_at", "iter_audio_blocks", "iter_frames_shown", "iter_planned_frames",
           "iter_video_frames", "plan_video_frames", "probe"]

# A decoded length this much shorter than the container promises means the file was cut off.
_TRUNCATION_TOLERANCE_S = 0.5


def _unreachable(path: Path, exc: OSError) -> str:
    """Why ``path`` cannot even be looked at, and what to do about it."""
    if path.is_symlink():
        target = os.readlink(path)
        if exc.errno == errno.ELOOP:
            return (f"{path}: a symbolic link loop ({path.name} -> {target} -> ... never reaches a file); "
                    f"replace the link with the recording or a link to it")
        return f"{path}: a symbolic link to {target}, which does not exist; fix or remove the link"
    if exc.errno == errno.EACCES:
        return (f"{path}: permission denied on a folder above it; give the user running ether-prep "
                f"execute permission on its folders")
    return f"{path}: file not found (moved or deleted since it was found?)"


def _check_file(path: Path) -> None:
    """Raise :class:`InputError` with the cause and the fix when ``path`` cannot be opened for reading."""
    try:
        st = path.stat()
    except OSError as exc:
        raise InputError(_unreachable(path, exc)) from exc
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file; recordings must be files")
    if st.st_size == 0:
        raise InputError(f"{path}: file is empty (0 bytes); copy the recording again from its source")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied: the user running ether-prep (uid {os.getuid()}) cannot "
                         f"read it; give it read access (e.g. `chmod a+r`) or run as its owner")


@contextmanager
def _open(path: Path) -> Iterator[av.container.InputContainer]:
    _check_file(path)
    try:
        container = av.open(str(path), mode="r")
    except PermissionError as exc:
        raise InputError(f"{path}: permission denied ({exc.strerror}); give the user running ether-prep read "
                         f"access (e.g. `chmod a+r`)") from exc
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise InputError(
            f"{path}: not a readable media file: {reason} (corrupt, truncated, or not audio/video); "
            f"check it plays, then copy or export the original recording again"
        ) from exc
    try:
        yield container
    finally:
        container.close()


def _is_cover_art(stream: av.stream.Stream) -> bool:
    """An ``attached_pic`` stream: the cover art of an MP3/M4A/FLAC, one still picture, not a video."""
    return bool(stream.disposition & av.stream.Disposition.attached_pic)


def _video_stream(c: av.container.InputContainer) -> av.video.stream.VideoStream | None:
    """The first video stream that is a video (cover art is not)."""
    return next((s for s in c.streams.video if not _is_cover_art(s)), None)


def _decoding_video_stream(path: Path, c: av.container.InputContainer,
                           threads: int | None = None) -> av.video.stream.VideoStream:
    """The video stream to decode, set up for threaded decoding (``threads`` 0/None: FFmpeg chooses); an
    InputError naming the file when it has none."""
    stream = _video_stream(c)
    if stream is None:
        raise InputError(f"{path}: has no video stream" + (" (only cover art)" if c.streams.video else ""))
    stream.thread_type = "AUTO"
    if threads:
        stream.codec_context.thread_count = threads
    return stream


def _audio_stream(path: Path, c: av.container.InputContainer, track: int = 0) -> av.audio.stream.AudioStream:
    """Audio track ``track`` (0: the first audio stream of the file)."""
    if not c.streams.audio:
        raise InputError(f"{path}: has no audio stream")
    if not 0 <= track < len(c.streams.audio):
        raise InputError(f"{path}: has {len(c.streams.audio)} audio track(s); track {track} does not exist "
                         f"(set the audio stage's track parameter to 0..{len(c.streams.audio) - 1})")
    return c.streams.audio[track]


def _seconds(ts: int, time_base: av.utils.Fraction | tuple[int, int]) -> float:
    # PyAV's Frame.time, operation for operation (see _frame_time), so that a stream that starts the session
    # gives its first frame the time 0.0 exactly.
    num, den = (time_base.numerator, time_base.denominator) if not isinstance(time_base, tuple) else time_base
    return float(ts) * num / den


def _stream_start(stream: av.stream.Stream) -> float | None:
    """When the stream starts on the container's clock (s), as the container says; None when it does not say."""
    if stream.start_time is None or stream.time_base is None:
        return None
    return _seconds(int(stream.start_time), stream.time_base)


def _origin(c: av.container.InputContainer) -> float | None:
    """Session time 0 on the container's clock: the earliest start of its audio and video streams (cover art,
    subtitle, data and timecode streams excepted: they carry no session content, yet may start elsewhere, so
    the container's own ``start_time``, which counts them, is not used). None when no stream says when it
    starts (WAV, raw AAC): then each stream starts at 0."""
    starts = [t for s in (*c.streams.audio, *(v for v in c.streams.video if not _is_cover_art(v)))
              if (t := _stream_start(s)) is not None]
    return min(starts) if starts else None


def _stream_duration(stream: av.stream.Stream) -> float | None:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    # Matroska keeps each track's length in a DURATION tag ("00:00:05.855000000") instead.
    tag = (stream.metadata or {}).get("DURATION")
    try:
        h, m, sec = str(tag).split(":")
        return int(h) * 3600 + int(m) * 60 + float(sec)
    except ValueError:
        return None


def _quarter_turns(frame: av.VideoFrame) -> int:
    """Counter-clockwise quarter turns that show ``frame`` as players do (its display matrix: phone
    videos are often stored sideways with a rotation to apply). Mirroring is not undone."""
    return round((frame.rotation or 0) / 90.0) % 4


def _display_rotation(c: av.container.InputContainer, stream: av.video.stream.VideoStream) -> int:
    """The display rotation (0, 90, 180, 270 degrees counter-clockwise) of the first decodable frame."""
    try:
        for i, packet in enumerate(c.demux(stream)):
            for frame in packet.decode():
                return _quarter_turns(frame) * 90
            if i >= 100:
                break
    except av.FFmpegError:
        pass  # an undecodable start is reported by the stages that decode; the probe stays metadata
    return 0


def probe(path: Path) -> MediaProbe:
    """Read the container's metadata: duration, streams, rate, fps, frame count, and the video's display size
    and rotation (one frame is decoded for that: the display matrix travels with frames)."""
    with _open(path) as c:
        audio = c.streams.audio[0] if c.streams.audio else None
        video = _video_stream(c)
        cover_art = sum(_is_cover_art(s) for s in c.streams.video)
        if audio is None and video is None:
            what = "only cover art" if cover_art else "no audio or video stream"
            raise InputError(f"{path}: holds {what}; is it a recording?")
        durations = [d for s in (audio, video) if s is not None and (d := _stream_duration(s)) is not None]
        origin = _origin(c)
        # Where each stream ends on the session clock (a stream that starts late ends that much later).
        durations += [start - origin + d for s in (audio, video) if s is not None and origin is not None
                      and (d := _stream_duration(s)) is not None and (start := _stream_start(s)) is not None]
        if c.duration is not None:
            durations.append(c.duration / av.time_base)
        duration = max(durations) if durations else 0.0
        fps = float(video.average_rate) if video is not None and video.average_rate else None
        frames = int(video.frames) if video is not None and video.frames else None
        if video is not None and frames is None and fps:
            frames = round(duration * fps)
        width = video.codec_context.width if video is not None else None
        height = video.codec_context.height if video is not None else None
        rotation = _display_rotation(c, video) if video is not None else 0
        if rotation in (90, 270):
            width, height = height, width
        return MediaProbe(
            duration=duration,
            has_audio=audio is not None,
            has_video=video is not None,
            format_name=c.format.name,
            audio_sample_rate=audio.codec_context.sample_rate if audio is not None else None,
            audio_channels=audio.codec_context.channels if audio is not None else None,
            audio_codec=audio.codec_context.name if audio is not None else None,
            video_fps=fps,
            video_frame_count=frames,
            video_width=width,
            video_height=height,
            video_codec=video.codec_context.name if video is not None else None,
            video_rotation=rotation,
            start_time=c.start_time / av.time_base if c.start_time is not None else None,
            origin=origin or 0.0,
            audio_start=_stream_start(audio) if audio is not None else None,
            video_start=_stream_start(video) if video is not None else None,
            audio_tracks=tuple({"track": k, **_track_info(s)} for k, s in enumerate(c.streams.audio))
            if len(c.streams.audio) > 1 else (),
            cover_art=cover_art,
        )


def _track_info(stream: av.audio.stream.AudioStream) -> dict[str, object]:
    """What tells one audio track from another: codec, channels, rate, language, title, start (s)."""
    meta = stream.metadata or {}
    return {"codec": stream.codec_context.name, "channels": stream.codec_context.channels,
            "sample_rate": stream.codec_context.sample_rate, "language": meta.get("language"),
            "title": meta.get("title") or meta.get("handler_name"), "start": _stream_start(stream)}


def check_complete(path: Path) -> MediaProbe:
    """Probe, then seek to the last second and decode a frame: a cheap check that the file is not cut off."""
    info = probe(path)
    with _open(path) as c:
        stream = c.streams.audio[0] if c.streams.audio else _video_stream(c)
        assert stream is not None  # the probe found audio or video
        target = max(0.0, info.duration - 1.0)
        try:
            if stream.time_base is not None and target > 0:
                c.seek(int(target / stream.time_base), stream=stream, backward=True)
            frame = None
            # After a seek the first packets may start mid-frame (MPEG-PS audio): skip their errors.
            for i, packet in enumerate(c.demux(stream)):
                try:
                    frame = next(iter(packet.decode()), None)
                except av.FFmpegError:
                    frame = None
                if frame is not None or i >= 50:
                    break
        except av.FFmpegError as exc:
            raise InputError(f"{path}: corrupt near {target:.1f} s ({exc}); copy the recording again from its "
                             f"source") from exc
        if frame is None:
            raise InputError(f"{path}: truncated: no data near the end ({target:.1f} s) that the header promises "
                             f"({info.duration:.1f} s in all); copy the complete recording again from its source")
    return info


@dataclass
class AudioClock:
    """Where :func:`iter_audio_blocks` put the decoded track on the session clock (filled in while decoding).

    ``origin``: session time 0 on the container's clock (s, see :func:`_origin`); ``start``: the session time
    of the track's first decoded sample (s); ``padded``: leading zero samples put before it, so that sample
    index / sample_rate is session time; ``trimmed``: leading samples dropped (decoded before time 0);
    ``track``, ``tracks``: the track read and how many the file has."""

    origin: float = 0.0
    start: float = 0.0
    padded: int = 0
    trimmed: int = 0
    track: int = 0
    tracks: int = 1


def iter_audio_blocks(
    path: Path, sample_rate: int = 16000, block_samples: int = 480_000, channel: int | None = None,
    track: int = 0, clock: AudioClock | None = None,
) -> Iterator[np.ndarray]:
    """Decode audio track ``track`` (0: the first) to float32 at ``sample_rate``, yielding blocks of
    ``block_samples``, on the session clock: a track that starts after the session's first stream (audio that
    starts 1.4 s after the video, as edit lists of cameras and screen recorders have it) comes after as many
    zeros (silence), so that sample ``i`` lies at session time ``i / sample_rate`` as the video's frames do;
    ``clock`` receives the offset.

    Memory stays bounded by one block however long the file is. ``channel=None`` downmixes to mono;
    an integer keeps that channel alone (e.g. one speaker per channel). Raises :class:`InputError` when
    the file cannot be decoded or is shorter than its header says (truncated).
    """
    clock = clock if clock is not None else AudioClock()
    with _open(path) as c:
        stream = _audio_stream(path, c, track)
        origin = _origin(c)
        clock.origin, clock.track, clock.tracks = origin or 0.0, track, len(c.streams.audio)
        expected = _stream_duration(stream) or (c.duration / av.time_base if c.duration else None)
        n_channels = stream.codec_context.channels
        if channel is not None and not 0 <= channel < n_channels:
            raise InputError(f"{path}: has {n_channels} audio channel(s); channel {channel} does not exist")
        layout = "mono" if channel is None else None
        resampler = av.AudioResampler(format="fltp", layout=layout, rate=sample_rate)
        blocks = _Blocks(block_samples)
        total = 0
        skip: int | None = None  # samples still to drop (decoded before session time 0); None: not yet known

        def frames() -> Iterator[av.AudioFrame | None]:
            try:
                yield from c.decode(stream)
            except av.FFmpegError as exc:
                raise InputError(f"{path}: audio decoding failed after {total / sample_rate:.2f} s ({exc})") from exc
            yield None  # flush the resampler

        for frame in frames():
            if skip is None and frame is not None:
                skip = _place_on_session_clock(path, c, frame, origin, track, sample_rate, clock)
                for lo in range(0, clock.padded, block_samples):  # in blocks: memory stays flat
                    yield from blocks.add(np.zeros(min(block_samples, clock.padded - lo), np.float32))
            for out in resampler.resample(frame):
                data = out.to_ndarray()
                samples = data[0 if channel is None else channel].astype(np.float32, copy=False)
                total += samples.size
                if skip:
                    cut, skip = min(skip, samples.size), skip - min(skip, samples.size)
                    samples = samples[cut:]
                if samples.size:
                    yield from blocks.add(samples)
        yield from blocks.rest()
        _check_decoded(path, total / sample_rate if total else None, expected)


class _Blocks:
    """Samples gathered into blocks of ``size``: memory stays bounded by one block."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.pending: list[np.ndarray] = []
        self.n = 0

    def add(self, samples: np.ndarray) -> Iterator[np.ndarray]:
        """Every whole block complete once ``samples`` are added."""
        self.pending.append(samples)
        self.n += samples.size
        while self.n >= self.size:
            joined = np.concatenate(self.pending)
            yield joined[: self.size]
            rest = joined[self.size:]
            self.pending, self.n = ([rest], rest.size) if rest.size else ([], 0)

    def rest(self) -> Iterator[np.ndarray]:
        """The last, shorter block (if any samples are left)."""
        if self.n:
            yield np.concatenate(self.pending)


def _place_on_session_clock(path: Path, c: av.container.InputContainer, frame: av.AudioFrame,
                            origin: float | None, track: int, sample_rate: int, clock: AudioClock) -> int:
    """Record on ``clock`` where the track's first decoded ``frame`` lies on the session clock (zeros to pad
    before it, samples to trim); returns the samples to drop."""
    # The first decoded frame's own time (not the resampler's, which shifts it by its filter delay).
    offset = float(frame.time) - origin if origin is not None and frame.time is not None else 0.0
    n = round(offset * sample_rate)
    if c.duration and n > (c.duration / av.time_base + 1.0) * sample_rate:
        raise InputError(f"{path}: audio track {track} starts at {offset:.1f} s, after the recording "
                         f"ends ({c.duration / av.time_base:.1f} s): its timestamps are broken; remux "
                         f"it (ffmpeg -i IN -c copy OUT) or export the recording again")
    clock.start = n / sample_rate
    clock.padded, clock.trimmed = max(n, 0), max(-n, 0)
    return max(-n, 0)


def _check_decoded(path: Path, decoded: float | None, expected: float | None) -> None:
    """InputError when nothing was decoded (``decoded`` None) or much less than the header promises."""
    if decoded is None:
        raise InputError(f"{path}: the audio stream decodes to no samples (empty or corrupt)")
    if expected is not None and expected - decoded > max(_TRUNCATION_TOLERANCE_S, 0.02 * expected):
        raise InputError(
            f"{path}: truncated or corrupt: decoded {decoded:.2f} s of audio but the header says "
            f"{expected:.2f} s; copy the complete recording again from its source"
        )


@dataclass(frozen=True)
class VideoFrame:
    """One decoded frame: its index among decoded frames, presentation time (s) and RGB pixels (H, W, 3)."""

    index: int
    time: float
    rgb: np.ndarray


@dataclass
class DecodeStats:
    """Counts filled in while iterating frames: decoded, kept (sampled), and skipped corrupt packets; and the
    session clock: ``origin`` (session time 0 on the container's clock, s) and ``start`` (the session time of
    the first decoded frame: later than 0 when the video starts after the audio)."""

    decoded: int = 0
    kept: int = 0
    corrupt: int = 0
    origin: float = 0.0
    start: float | None = None


def _upright(frame: av.VideoFrame) -> np.ndarray:
    """The frame's RGB pixels turned upright, as players show it."""
    rgb = frame.to_ndarray(format="rgb24")
    if turns := _quarter_turns(frame):
        rgb = np.ascontiguousarray(np.rot90(rgb, turns))
    return rgb


class _Sampler:
    """Whether each frame, given its time in order, is analysed at an even ``analysis_fps`` (None: every frame)."""

    def __init__(self, analysis_fps: float | None) -> None:
        self.step = 1.0 / analysis_fps if analysis_fps else 0.0
        self.next_time = -np.inf

    def __call__(self, t: float) -> bool:
        if t + 1e-6 < self.next_time:
            return False
        self.next_time = (self.next_time if np.isfinite(self.next_time) else t) + self.step
        if self.step and self.next_time <= t:
            self.next_time = t + self.step
        return True


def iter_video_frames(
    path: Path, analysis_fps: float | None = None, stats: DecodeStats | None = None, threads: int = 0
) -> Iterator[VideoFrame]:
    """Stream RGB frames of the first video stream with their real presentation times, turned upright as
    the display matrix says (a phone video stored sideways comes out as it is shown; sizes and boxes computed on
    these frames are display coordinates).

    Times are on the session clock (seconds from the earliest start of the file's audio and video streams, see
    :func:`_origin`): a video that starts 1.4 s after its audio has its first frame at 1.4 s. Frames are sampled
    by presentation time, not by index, so variable-frame-rate recordings are analysed
    at an even ``analysis_fps`` (``None`` keeps every frame). A packet that fails to decode is skipped and
    counted in ``stats.corrupt`` instead of ending the video; frames that stop well before the stream's
    duration (a truncated file) raise :class:`InputError` after the last one. ``threads=0`` lets FFmpeg choose.
    """
    stats = stats if stats is not None else DecodeStats()
    with _open(path) as c:
        stream = _decoding_video_stream(path, c, threads)
        sample = _Sampler(analysis_fps)
        # Without a start time in the container (none of its streams says), times count from the first frame.
        t0: float | None = _origin(c)
        first: float | None = None
        last = 0.0
        for packet in c.demux(stream):
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                stats.corrupt += 1
                continue
            for frame in decoded:
                if frame.time is None:
                    stats.corrupt += 1
                    continue
                if t0 is None:
                    t0 = float(frame.time)
                t = float(frame.time) - t0
                if first is None:
                    first = t
                    stats.origin, stats.start = t0, t
                last = max(last, t)
                stats.decoded += 1
                if not sample(t):
                    continue
                stats.kept += 1
                yield VideoFrame(index=stats.decoded - 1, time=t, rgb=_upright(frame))
        # The stream's own duration (not the container's, which may be the longer audio): frames that stop
        # well short of it mean a file cut off (a copy interrupted), not a recording that ended.
        expected = _stream_duration(stream)
        length = last - (first or 0.0)  # of the video stream, from its own first frame
        if stats.decoded and expected and expected - length > max(_TRUNCATION_TOLERANCE_S, 0.02 * expected):
            raise InputError(f"{path}: truncated or corrupt: video frames stop at {length:.2f} s but the header "
                             f"says {expected:.2f} s; copy the complete recording again from its source")


@dataclass(frozen=True)
class FramePlan:
    """Every frame of a video's first stream and the ones :func:`iter_video_frames` would yield, found from
    packet timestamps without decoding (``None`` from :func:`plan_video_frames` when they cannot be known).

    ``pts``: every frame's presentation timestamp in stream units, in presentation order (D frames);
    ``kept``: indices into ``pts`` of the frames analysed at ``analysis_fps``; ``time``: their times (s on the
    session clock, exactly as :func:`iter_video_frames` gives them); ``keyframes``: keyframe pts; ``origin``:
    session time 0 on the stream's clock (s; None: the first frame's time).
    """

    time_base: tuple[int, int]
    pts: np.ndarray
    kept: np.ndarray
    time: np.ndarray
    keyframes: np.ndarray
    origin: float | None = None

    @property
    def t0(self) -> float:
        """Session time 0 on the stream's clock (s): what every frame time is counted from."""
        return self.origin if self.origin is not None else _frame_time(int(self.pts[0]), self.time_base)

    @property
    def start(self) -> float:
        """The session time of the first frame (s)."""
        return _frame_time(int(self.pts[0]), self.time_base) - self.t0


def _frame_time(pts: int, time_base: tuple[int, int]) -> float:
    # PyAV's VideoFrame.time, operation for operation, so that planned times equal decoded ones bit for bit.
    return _seconds(pts, time_base)


def plan_video_frames(path: Path, analysis_fps: float | None = None) -> FramePlan | None:
    """Which frames a full decode would give, from the packets alone (a fast pass: nothing is decoded but the
    first frame). None when that cannot be known (no video stream, a packet without a timestamp, a first frame
    that is not the earliest packet) or the file is cut off."""
    with _open(path) as c:
        stream = _video_stream(c)
        if stream is None:
            return None
        pts, keys = [], []
        try:
            for packet in c.demux(stream):
                if packet.size == 0:  # the demuxer's flush packet
                    continue
                if packet.pts is None:
                    return None
                pts.append(int(packet.pts))
                if packet.is_keyframe:
                    keys.append(int(packet.pts))
        except av.FFmpegError:
            return None
        if not pts or stream.time_base is None:
            return None
        tb = (stream.time_base.numerator, stream.time_base.denominator)
        order = np.sort(np.asarray(pts, dtype=np.int64))
        # Frame indices count from the first frame decoded: it must be the earliest packet (a decoder may drop
        # leading frames that refer to pictures before the file's start).
        c.seek(0, stream=stream, backward=True)
        try:
            first = next((f for f in c.decode(stream) if f.pts is not None), None)
        except av.FFmpegError:
            return None
        if first is None or first.pts != order[0]:
            return None
        # A file cut off (see iter_video_frames) is not planned: decoded whole, it fails with the reason.
        expected = _stream_duration(stream)
        last = _frame_time(int(order[-1]), tb) - _frame_time(int(order[0]), tb)
        if expected and expected - last > max(_TRUNCATION_TOLERANCE_S, 0.02 * expected):
            return None
        origin = _origin(c)  # as iter_video_frames counts: the same float, so the same times bit for bit
        t0 = origin if origin is not None else _frame_time(int(order[0]), tb)
        times = np.array([_frame_time(int(p), tb) - t0 for p in order], dtype=np.float64)
        sample = _Sampler(analysis_fps)
        kept = np.flatnonzero([sample(t) for t in times.tolist()])
        return FramePlan(tb, order, kept, times[kept], np.sort(np.asarray(keys, dtype=np.int64)), origin)


class PlanMismatch(InputError):
    """A window decoded other frames than its plan says (a corrupt packet, odd timestamps)."""


def _seek_point(plan: FramePlan, pts: int) -> int | None:
    """Where to seek to decode the frame at ``pts`` as a full pass does: one keyframe further back than needed,
    so that frames referring to the previous group of pictures (open GOPs) decode whole. None: the start."""
    keys = plan.keyframes[plan.keyframes <= pts]
    return int(keys[-2]) if len(keys) >= 2 else None


def iter_planned_frames(path: Path, plan: FramePlan, first: int, stop: int, context: int = 0) -> Iterator[VideoFrame]:
    """The analysed frames ``first:stop`` of ``plan`` (indices into ``plan.kept``), decoded after a seek, each
    with the time and index :func:`iter_video_frames` gives it; ``context`` analysed frames before ``first``
    come too. Raises :class:`PlanMismatch` when the decoded frames are not the planned ones."""
    lo = max(first - context, 0)
    if lo >= stop:
        return
    with PlannedFrames(path, plan) as reader:
        for k in range(lo, stop):
            yield reader.frame(k)


class PlannedFrames:
    """Analysed frames of a plan by index (``plan.kept`` order), for a reader that goes forward with jumps:
    it decodes on from where it is when that is no further than a seek would start, else seeks. Each frame
    comes with the time and index :func:`iter_video_frames` gives it; a frame that does not decode as planned
    raises :class:`PlanMismatch`. Use as a context manager (it holds the file open)."""

    def __init__(self, path: Path, plan: FramePlan) -> None:
        self.path, self.plan = path, plan
        self._t0 = plan.t0
        self._open = _open(path)
        self._container = self._open.__enter__()
        stream = _video_stream(self._container)
        if stream is None:
            self.close()
            raise PlanMismatch(f"{path}: has no video stream any more")
        self._stream = stream
        self._stream.thread_type = "AUTO"
        self._frames: Iterator[av.VideoFrame] | None = None
        self._at = -1  # pts of the last frame decoded (-1: nothing decoded since the last seek)

    def frame(self, k: int) -> VideoFrame:
        target = int(self.plan.pts[self.plan.kept[k]])
        seek = _seek_point(self.plan, target)
        if self._frames is None or target <= self._at or (seek is not None and seek > self._at):
            self._container.seek(seek if seek is not None else int(self.plan.pts[0]), stream=self._stream,
                                 backward=True)
            self._frames, self._at = iter(self._container.decode(self._stream)), -1
        try:
            for frame in self._frames:
                if frame.pts is None:
                    continue
                self._at = int(frame.pts)
                if frame.pts < target:
                    continue
                if frame.pts != target:
                    break
                return VideoFrame(index=int(self.plan.kept[k]), time=float(frame.time) - self._t0, rgb=_upright(frame))
        except av.FFmpegError as exc:
            raise PlanMismatch(f"{self.path}: decoding analysed frame {k} (pts {target}) failed ({exc})") from exc
        self._frames = None
        raise PlanMismatch(f"{self.path}: analysed frame {k} (pts {target}) is not among the decoded frames "
                           f"(next decoded: pts {self._at})")

    def close(self) -> None:
        self._frames = None
        self._open.__exit__(None, None, None)

    def __enter__(self) -> PlannedFrames:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def frames_at(path: Path, times: list[float], reach_s: float = 2.0) -> list[VideoFrame | None]:
    """The frame shown at each of ``times`` (session clock, s; the first frame at or after it), turned upright,
    decoding only what those frames need: a seek to the keyframe before each time (or decoding on, when the
    next time is less than ``reach_s`` ahead). None for a time past the last frame. For pictures of a few
    frames (the report's thumbnails), not for analysis: frame times are matched to 1 ms."""
    out: dict[int, VideoFrame | None] = {}
    order = sorted(range(len(times)), key=lambda i: times[i])
    with _open(path) as c:
        stream = _decoding_video_stream(path, c)
        origin = _origin(c)
        if origin is None:  # times count from the first frame, as iter_video_frames counts them
            first = next((f for f in c.decode(stream) if f.time is not None), None)
            origin = float(first.time) if first is not None else 0.0
        frames: Iterator[av.VideoFrame] | None = None
        at = -np.inf  # session time of the last frame decoded
        index = 0
        for i in order:
            t = float(times[i])
            if frames is None or t <= at or t - at > reach_s:
                base = stream.time_base
                target = origin + max(t, 0.0)
                try:
                    c.seek(int(target / base) if base else 0, stream=stream, backward=True, any_frame=False)
                except av.FFmpegError:
                    c.seek(0, stream=stream, backward=True)
                frames, at = iter(c.decode(stream)), -np.inf
            found = None
            try:
                for frame in frames:
                    if frame.time is None:
                        continue
                    at = float(frame.time) - origin
                    index += 1
                    if at + 1e-3 >= t:
                        found = VideoFrame(index=index, time=at, rgb=_upright(frame))
                        break
            except av.FFmpegError as exc:
                raise InputError(f"{path}: decoding the frame at {t:.2f} s failed ({exc}); the recording may "
                                 f"be damaged since it was analysed") from exc
            if found is None:
                frames = None
            out[i] = found
    return [out[i] for i in range(len(times))]


class ShownFrame:
    """A frame :func:`iter_frames_shown` serves: its index among decoded frames, its time (s, session clock) and
    display size (``width`` x ``height``, even: an odd last column or row is dropped, as 4:2:0 video needs),
    its pixels converted on demand and once: :attr:`rgb` (turned upright), or the upright YUV 4:2:0 planes
    :class:`ClipEncoder` crops and scales without a colour conversion (several times faster)."""

    def __init__(self, frame: av.VideoFrame, index: int, time: float) -> None:
        self._frame, self.index, self.time = frame, index, time
        self._turns = _quarter_turns(frame)
        w, h = (frame.height, frame.width) if self._turns % 2 else (frame.width, frame.height)
        self.width, self.height = w - w % 2, h - h % 2
        self._rgb: np.ndarray | None = None
        self._planes: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None

    @property
    def rgb(self) -> np.ndarray:
        """(height, width, 3) uint8 RGB, upright (shared: do not write into it)."""
        if self._rgb is None:
            self._rgb = _upright(self._frame)[:self.height, :self.width]
        return self._rgb

    def planes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Upright Y (height, width), U and V (height / 2, width / 2) planes."""
        if self._planes is None:
            f = self._frame
            if f.width % 2 or f.height % 2:
                f = f.reformat(f.width - f.width % 2, f.height - f.height % 2)
            a = f.to_ndarray(format="yuv420p")
            h, w = f.height, f.width
            planes = (a[:h], a[h:h + h // 4].reshape(h // 2, w // 2), a[h + h // 4:].reshape(h // 2, w // 2))
            self._planes = tuple(np.rot90(p, self._turns) for p in planes) if self._turns else planes
        return self._planes


def iter_frames_shown(path: Path, times: np.ndarray, hold_s: float = 0.5, threads: int = 0
                      ) -> Iterator[tuple[int, ShownFrame]]:
    """One pass over the first video stream: for each of ``times`` (ascending, session clock, s) the frame
    shown then (the last frame at or before it; the first frame for earlier times), as ``(index into times,
    frame)`` in order; one :class:`ShownFrame` however many times show it, its pixels converted only when
    asked for. Times more than ``hold_s`` after the last frame get nothing (the video ended before them);
    decoding stops once the last time is served. Corrupt packets are skipped, as :func:`iter_video_frames`
    skips them."""
    times = np.asarray(times, dtype=np.float64)
    with _open(path) as c:
        stream = _decoding_video_stream(path, c, threads)
        t0: float | None = _origin(c)
        state = {"next": 0, "index": -1}

        def show(frame: ShownFrame, until: float) -> Iterator[tuple[int, ShownFrame]]:
            while state["next"] < len(times) and times[state["next"]] + 1e-6 < until:
                yield state["next"], frame
                state["next"] += 1

        held: ShownFrame | None = None  # the frame on screen until the next one arrives
        for packet in c.demux(stream):
            try:
                decoded = packet.decode()
            except av.FFmpegError:
                continue
            for frame in decoded:
                if frame.time is None:
                    continue
                t0 = float(frame.time) if t0 is None else t0
                t = float(frame.time) - t0
                if held is not None:
                    yield from show(held, until=t)
                state["index"] += 1
                held = ShownFrame(frame, state["index"], t)
            if state["next"] >= len(times):
                return
        if held is not None:
            yield from show(held, until=held.time + hold_s)


def _yuv_frame(planes: tuple[np.ndarray, ...], box: tuple[int, int, int, int]) -> av.VideoFrame:
    """A yuv420p frame of the ``box`` (x0, y0, x1, y1; even) of upright 4:2:0 ``planes``."""
    x0, y0, x1, y1 = box
    out = av.VideoFrame(x1 - x0, y1 - y0, "yuv420p")
    parts = (planes[0][y0:y1, x0:x1], planes[1][y0 // 2:y1 // 2, x0 // 2:x1 // 2],
             planes[2][y0 // 2:y1 // 2, x0 // 2:x1 // 2])
    for plane, data in zip(out.planes, parts, strict=True):
        np.frombuffer(plane, np.uint8).reshape(-1, plane.line_size)[:data.shape[0], :data.shape[1]] = data
    return out


class ClipEncoder:
    """An MP4 file of H.264 video (yuv420p, ``fps`` frames a second, ``width`` x ``height``) and, given
    ``audio`` (mono float32 samples spanning the clip), an AAC track; encoded by PyAV's FFmpeg in this
    process. Frames are added in order as RGB arrays of any size (scaled to the clip's size); ``close``
    finishes the file, ``abort`` removes a partial one."""

    def __init__(self, path: Path, width: int, height: int, fps: float, audio: np.ndarray | None = None,
                 sample_rate: int = 16000, crf: int = 23, preset: str = "veryfast") -> None:
        self.path, self.width, self.height = Path(path), width, height
        self.fps = Fraction(fps).limit_denominator(1001)
        self._audio, self._rate, self._sent, self._frames = audio, sample_rate, 0, 0
        try:
            self._c = av.open(str(path), mode="w", format="mp4", options={"movflags": "+faststart"})
            self._v = self._c.add_stream("libx264", rate=self.fps)
            self._v.width, self._v.height, self._v.pix_fmt = width, height, "yuv420p"
            self._v.options = {"crf": str(crf), "preset": preset}
            self._a = self._c.add_stream("aac", rate=sample_rate, layout="mono") if audio is not None else None
            # One scaler for the clip: frame.reformat would set up a new SwsContext for every frame.
            self._scaler = av.video.reformatter.VideoReformatter()
        except (av.FFmpegError, OSError) as exc:
            raise InputError(f"{path}: cannot create the clip ({exc})") from exc

    def add(self, frame: np.ndarray | ShownFrame, box: tuple[int, int, int, int] | None = None) -> None:
        """Append one frame: (H, W, 3) uint8 RGB, or the ``box`` (x0, y0, x1, y1, even; None: all) of a
        :class:`ShownFrame`, cut from its YUV planes; scaled to the clip's size. The audio up to its end follows."""
        try:
            if isinstance(frame, ShownFrame):
                picture = _yuv_frame(frame.planes(), box or (0, 0, frame.width, frame.height))
            else:
                picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            frame = self._scaler.reformat(picture, self.width, self.height, format="yuv420p", interpolation="AREA")
            frame.pts = self._frames
            self._frames += 1
            self._c.mux(self._v.encode(frame))
            self._send_audio(round(self._frames / self.fps * self._rate))
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise InputError(f"{self.path}: encoding frame {self._frames} failed ({exc})") from exc

    def _send_audio(self, upto: int) -> None:
        if self._a is None or self._audio is None:
            return
        upto = min(upto, len(self._audio))
        while self._sent < upto:
            n = min(1024, upto - self._sent)
            block = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(self._audio[None, self._sent:self._sent + n], dtype=np.float32),
                format="flt", layout="mono")
            block.sample_rate, block.pts = self._rate, self._sent
            self._c.mux(self._a.encode(block))
            self._sent += n

    def close(self) -> None:
        """Flush the encoders and finish the file."""
        try:
            self._send_audio(len(self._audio) if self._audio is not None else 0)
            self._c.mux(self._v.encode(None))
            if self._a is not None:
                self._c.mux(self._a.encode(None))
            self._c.close()
        except (av.FFmpegError, OSError) as exc:
            self.abort()
            raise InputError(f"{self.path}: finishing the clip failed ({exc})") from exc

    def abort(self) -> None:
        """Close and delete the partial file."""
        with suppress(av.FFmpegError, OSError):
            self._c.close()
        self.path.unlink(missing_ok=True)
