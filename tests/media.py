"""Test media built from the shared GRID clips with ffmpeg, in a test's temporary folder (never in the repo).

The GRID clips are 3 s, 360 x 288, 25 fps, one frontal talking face each, with audio:
``bbaf2n.mpg`` ("bin blue at f two now", speech ~0.46-2.51 s) and ``lwbsza.mpg`` ("lay white by s zero
again", ~0.68-2.51 s): two different people filmed the same way, on the same blue background, at the same
place in the frame: the hard case for box tracking across cuts.
"""

from __future__ import annotations

import subprocess
import wave
from pathlib import Path

import numpy as np

from ether_prep.speech import normalize_text

from .conftest import DATA
from .scoring import wer, word_errors
from .trust_media import LIBRI_TEXT

__all__ = ["FPS", "GRID_A", "GRID_B", "SPEECH_CLIPS", "SR", "dissolve", "edited_dialogue", "read_aloud_call",
           "reentry", "speech_clip", "words_in_place", "write_wav"]

FPS = 25
GRID_A = DATA / "video" / "bbaf2n.mpg"
GRID_B = DATA / "video" / "lwbsza.mpg"
_SIZE = (360, 288)
# Frame-exact halves of a 75-frame GRID clip: [0, 38) and [38, 75).
_HALVES = ((0, 38), (38, 75))
DEFAULT_TURNS: tuple[tuple[Path, int, int], ...] = (
    (GRID_A, *_HALVES[0]), (GRID_B, *_HALVES[0]), (GRID_A, *_HALVES[1]), (GRID_B, *_HALVES[1]))


def _concat(dst: Path, segments: list[tuple[Path | None, int, int]]) -> list[tuple[float, float]]:
    """Concatenate ``(source, first frame, end frame)`` segments (``None``: black and silence for that
    many frames) into an H.264/AAC mp4 with hard cuts; returns each segment's (start, end) in seconds."""
    inputs: list[str] = []
    chains: list[str] = []
    windows: list[tuple[float, float]] = []
    t = 0.0
    for i, (src, a, b) in enumerate(segments):
        d = (b - a) / FPS
        k = inputs.count("-i")  # index of this segment's first input
        if src is None:
            inputs += ["-f", "lavfi", "-i", f"color=c=black:s={_SIZE[0]}x{_SIZE[1]}:r={FPS}:d={d}",
                       "-f", "lavfi", "-i", f"anullsrc=r=44100:cl=mono:d={d}"]
            chains.append(f"[{k}:v]setpts=PTS-STARTPTS,format=yuv420p[v{i}];"
                          f"[{k + 1}:a]asetpts=PTS-STARTPTS,apad=whole_dur={d}[a{i}]")
        else:
            inputs += ["-i", str(src)]
            # The clips' audio ends ~50 ms before their video: pad each piece so sound stays in sync.
            chains.append(f"[{k}:v]trim=start_frame={a}:end_frame={b},setpts=PTS-STARTPTS,format=yuv420p[v{i}];"
                          f"[{k}:a]atrim=start={a / FPS}:end={b / FPS},asetpts=PTS-STARTPTS,"
                          f"aformat=sample_rates=44100:channel_layouts=mono,apad=whole_dur={d}[a{i}]")
        windows.append((round(t, 6), round(t + d, 6)))
        t += d
    joined = "".join(f"[v{i}][a{i}]" for i in range(len(segments)))
    graph = ";".join(chains) + f";{joined}concat=n={len(segments)}:v=1:a=1[v][a]"
    subprocess.run(["ffmpeg", "-v", "error", "-y", *inputs, "-filter_complex", graph, "-map", "[v]", "-map", "[a]",
                    "-r", str(FPS), "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-c:a", "aac",
                    str(dst)], check=True)
    return windows


def edited_dialogue(dst: Path, turns: tuple[tuple[Path, int, int], ...] = DEFAULT_TURNS) -> dict:
    """A TV-style edited dialogue: full-frame shots of two GRID speakers, hard cuts, each shot showing the one
    talking (with that clip's own audio). ``turns``: (clip, first frame, end frame) in the clip's 25 fps
    frames; by default A, B, A, B from different halves of each clip (6 s, cuts at 1.52, 3.04, 4.52 s).

    Returns ``{"path", "fps", "duration", "cut_times", "speakers", "turns"}``, where ``speakers`` lists the
    clip names in order of first appearance and each turn is ``{"speaker", "person" (its index in
    speakers), "start", "end", "source", "source_start", "source_end"}`` (seconds).
    """
    windows = _concat(dst, list(turns))
    speakers: list[str] = []
    out = []
    for (src, a, b), (start, end) in zip(turns, windows, strict=True):
        if src.stem not in speakers:
            speakers.append(src.stem)
        out.append({"speaker": src.stem, "person": speakers.index(src.stem), "start": start, "end": end,
                    "source": str(src), "source_start": a / FPS, "source_end": b / FPS})
    return {"path": dst, "fps": FPS, "duration": windows[-1][1], "cut_times": [w[0] for w in windows[1:]],
            "speakers": speakers, "turns": out}


def reentry(dst: Path, blank_s: float = 5.0, clip: Path = GRID_A) -> dict:
    """One GRID speaker, then ``blank_s`` of black frames (the face gone), then the same speaker again.

    Returns ``{"path", "face_windows": [(start, end), (start, end)], "blank": (start, end)}`` in seconds.
    """
    windows = _concat(dst, [(clip, *_HALVES[0]), (None, 0, round(blank_s * FPS)), (clip, *_HALVES[1])])
    return {"path": dst, "face_windows": [windows[0], windows[2]], "blank": windows[1]}


def dissolve(dst: Path, first: Path = GRID_A, second: Path = GRID_B, offset: float = 1.0,
             duration: float = 0.5) -> dict:
    """``first`` dissolving into ``second`` (a cross-fade from ``offset`` for ``duration`` s): the face
    changes in place without a hard cut. Returns ``{"path", "dissolve": (start, end), "duration"}``."""
    graph = (f"[0:v]setpts=PTS-STARTPTS,format=yuv420p[a];[1:v]setpts=PTS-STARTPTS,format=yuv420p[b];"
             f"[a][b]xfade=transition=fade:duration={duration}:offset={offset}[v]")
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(first), "-i", str(second), "-filter_complex", graph,
                    "-map", "[v]", "-r", str(FPS), "-c:v", "libx264", "-preset", "veryfast", "-crf", "18", str(dst)],
                   check=True)
    return {"path": dst, "dissolve": (offset, offset + duration), "duration": offset + 3.0}


def write_wav(path: Path, audio: np.ndarray, sr: int = 16000) -> None:
    """A 16-bit mono WAV of ``audio`` (float, clipped to [-1, 1])."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sr)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes())


# ------------------------------------------------------------------------------------------ speech clips
SR = 16000
# name: (shared media file, reference text, GRID clip trimmed to 0.3-2.7 s)
SPEECH_CLIPS = {
    "bbaf2n": ("video/bbaf2n.mpg", (DATA / "video" / "bbaf2n.txt").read_text().strip(), True),
    "lwbsza": ("video/lwbsza.mpg", (DATA / "video" / "lwbsza.txt").read_text().strip(), True),
    "swwp2s": ("video/id2_vcd_swwp2s.mpg", (DATA / "video" / "swwp2s.txt").read_text().strip(), True),
    "libri": ("speech/librispeech_1272-128104-0000.wav", LIBRI_TEXT, False),
    "jfk": ("speech/jfk.flac", (DATA / "speech" / "jfk.reference.txt").read_text().strip(), False),
}


def speech_clip(name: str) -> np.ndarray:
    """A shared speech clip at 16 kHz (GRID clips trimmed to their speech, 0.3-2.7 s)."""
    from ether_prep.adapters.pyav import iter_audio_blocks

    rel, _, grid = SPEECH_CLIPS[name]
    audio = np.concatenate(list(iter_audio_blocks(DATA / rel, SR)))
    return audio[round(0.3 * SR): round(2.7 * SR)] if grid else audio


def _hits(ref: list[str], hyp: list[str]) -> int:
    """Reference words found in order in the hypothesis (longest common subsequence)."""
    row = [0] * (len(hyp) + 1)
    for r in ref:
        prev_diag, row[0] = 0, 0
        for j, h in enumerate(hyp, 1):
            prev_diag, row[j] = row[j], prev_diag + 1 if r == h else max(row[j], row[j - 1])
    return row[-1]


def words_in_place(words: dict[str, np.ndarray], windows: list[tuple[str, float, float]]) -> list[dict]:
    """Per clip: its reference words found among the words whose middle lies inside its window."""
    mid = (words["start"] + words["end"]) / 2
    rows = []
    for name, a, b in windows:
        ref = normalize_text(SPEECH_CLIPS[name][1])
        hyp = normalize_text(" ".join(str(t) for t, m in zip(words["text"], mid, strict=True) if a <= m <= b))
        rows.append({"clip": name, "start": a, "end": b, "hits": _hits(ref, hyp), "n": len(ref),
                     "wer": wer(ref, hyp), "errors": word_errors(ref, hyp), "text": " ".join(hyp)})
    return rows


def read_aloud_call(dst: Path, seconds: float = 300.0) -> list[tuple[str, float, float]]:
    """A long recording with turn changes: the shared two-party call, LibriSpeech and jfk in turn, 0.3-1 s
    apart, until ``seconds`` (324 s for 300: 19 turns). Writes a 16 kHz WAV; returns the read turns (name,
    start, end), whose reference text is in :data:`SPEECH_CLIPS` (the call has none)."""
    from ether_prep.adapters.pyav import iter_audio_blocks

    call = np.concatenate(list(iter_audio_blocks(DATA / "diarization" / "sample.wav", SR)))
    clips, names = [call, speech_clip("libri"), speech_clip("jfk")], [None, "libri", "jfk"]
    parts, turns, n, k = [], [], 0, 0
    while n < seconds * SR:
        gap = np.zeros(round((0.3 + 0.7 * ((k * 7) % 10) / 9) * SR), dtype=np.float32)
        if (name := names[k % 3]) is not None:
            turns.append((name, n / SR, (n + len(clips[k % 3])) / SR))
        parts += [clips[k % 3], gap]
        n += len(clips[k % 3]) + len(gap)
        k += 1
    write_wav(dst, np.concatenate(parts), SR)
    return turns
