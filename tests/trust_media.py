"""Odd and broken recordings for the trust tests, made with ffmpeg from the shared media (never
copied into the repository), plus helpers that run ``ether-prep`` in a subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import DATA, ROOT

GRID = DATA / "video" / "bbaf2n.mpg"  # 3 s, one frontal talking face, 360 x 288
JFK = DATA / "speech" / "jfk.flac"
LIBRI = DATA / "speech" / "librispeech_1272-128104-0000.wav"
LIBRI_TEXT = "Mister Quilter is the apostle of the middle classes and we are glad to welcome his gospel"
JFK_TEXT = (DATA / "speech" / "jfk.reference.txt").read_text().strip()


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-v", "error", "-y", *map(str, args)], check=True)


def rotated(dest: Path, tmp: Path) -> None:
    """The GRID clip as a phone stores a portrait video: pixels turned a quarter counter-clockwise, and a
    display matrix saying to turn them back (players show it upright). The matrix is set with PyAV while the
    packets are copied (ffmpeg's own ``rotate`` metadata option is gone from newer ffmpeg)."""
    import av

    sideways = tmp / "sideways.mp4"
    ffmpeg("-i", GRID, "-vf", "transpose=2", "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", sideways)
    with av.open(str(sideways)) as inp, av.open(str(dest), "w") as out:
        video, audio = inp.streams.video[0], inp.streams.audio[0]
        streams = {video.index: out.add_stream_from_template(video), audio.index: out.add_stream_from_template(audio)}
        streams[video.index].set_display_rotation(-90)  # clockwise a quarter, undoing the transpose
        for packet in inp.demux(video, audio):
            if packet.dts is not None:
                packet.stream = streams[packet.stream.index]
                out.mux(packet)


def variable_frame_rate(dest: Path) -> None:
    """The GRID clip at 25 fps for its first second, then every third frame (8.3 fps), in one stream whose
    timestamps keep the original times (0.04 s steps, then 0.12 s)."""
    ffmpeg("-i", GRID, "-vf", "select='lt(t,1)+not(mod(n,3))'", "-fps_mode", "vfr", "-c:v", "libx264",
           "-preset", "ultrafast", "-c:a", "aac", dest)


def four_k(dest: Path) -> None:
    """One second of a face at 3840 x 2160, five frames a second."""
    ffmpeg("-i", DATA / "face" / "single_face.mp4", "-t", "1", "-vf", "scale=3840:2160,fps=5", "-c:v", "libx264",
           "-preset", "ultrafast", "-an", dest)


def telephone(dest: Path) -> None:
    """LibriSpeech as a phone line carries it: 8 kHz, mu-law."""
    ffmpeg("-i", LIBRI, "-ar", "8000", "-ac", "1", "-c:a", "pcm_mulaw", dest)


def surround(dest: Path) -> None:
    """JFK in 5.1 AAC: the voice in the centre, faintly in front left/right, nothing in LFE and surrounds."""
    ffmpeg("-i", JFK, "-af", "pan=5.1|FL=0.2*c0|FR=0.2*c0|FC=c0|LFE=0*c0|BL=0*c0|BR=0*c0", "-c:a", "aac", dest)


def silence(dest: Path, seconds: float = 4.0) -> None:
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", seconds, dest)


def music(dest: Path, seconds: float = 5.0) -> None:
    """A chord progression of pure tones, no voice."""
    ffmpeg("-f", "lavfi", "-i", f"sine=f=220:d={seconds}", "-f", "lavfi", "-i", f"sine=f=277:d={seconds}",
           "-f", "lavfi", "-i", f"sine=f=330:d={seconds}", "-filter_complex", "amix=inputs=3,volume=2", dest)


def video_only(dest: Path) -> None:
    ffmpeg("-i", GRID, "-an", "-c:v", "libx264", "-preset", "ultrafast", dest)


def truncated_mp4(dest: Path, tmp: Path, keep: float = 0.5) -> None:
    """A complete mp4 whose index sits at the front (faststart), cut at ``keep`` of its bytes, as a copy
    interrupted mid-way leaves it: the header promises 3 s, the data stops half-way."""
    whole = tmp / "whole.mp4"
    ffmpeg("-i", GRID, "-c:v", "libx264", "-preset", "ultrafast", "-c:a", "aac", "-movflags", "+faststart", whole)
    data = whole.read_bytes()
    dest.write_bytes(data[: int(len(data) * keep)])


def three_hours(dest: Path) -> None:
    """A 3-hour recording (tiny: a 64 x 48 black picture at 1 fps and digital silence)."""
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-f", "lavfi", "-i", "color=black:s=64x48:r=1",
           "-t", "10800", "-c:a", "flac", "-c:v", "libx264", "-preset", "ultrafast", "-shortest", dest)


def cli_argv(*args: str | Path) -> list[str]:
    """The command line of ``ether-prep ARGS`` with this interpreter (the tests' environment)."""
    return [sys.executable, "-m", "ether_prep.cli", *map(str, args)]


def cli(*args: str | Path, env: dict[str, str] | None = None, preexec_fn: Callable[[], None] | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``ether-prep ARGS`` in a subprocess, output captured; ``preexec_fn`` runs in the child before exec."""
    return subprocess.run(cli_argv(*args), capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, preexec_fn=preexec_fn)


def session_pids(sid: int) -> list[int]:
    """Processes of session ``sid``: the run and whatever it started (Ray's raylet, workers)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # field 6: the session id; zombies are already dead
            pids.append(int(stat.parent.name))
    return pids


def _thread_states(pid: int) -> list[str]:
    """The state letter of every thread of process ``pid`` (R, S, D, T, Z, ...), none once it is reaped."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        with contextlib.suppress(OSError, IndexError):
            states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
    return states


def freeze(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGSTOP ``proc`` and return once every thread of it has stopped: from then on it is alive (it holds
    what it held: its locks, its running markers) and changes nothing. Fails if it ended first."""
    assert proc.poll() is None, f"the run (pid {proc.pid}) ended with {proc.returncode} before it could be frozen"
    os.kill(proc.pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while True:  # the signal is delivered asynchronously: a thread on another core runs on for a moment
        states = _thread_states(proc.pid)
        assert states and "Z" not in states and proc.poll() is None, \
            f"the run (pid {proc.pid}) ended (return code {proc.poll()}) before it stopped"
        if all(s in "Tt" for s in states):
            return
        assert time.monotonic() < deadline, f"the run (pid {proc.pid}) did not stop on SIGSTOP: threads {states}"
        time.sleep(0.005)


def thaw(proc: subprocess.Popen) -> None:
    """Let a frozen ``proc`` go on."""
    os.kill(proc.pid, signal.SIGCONT)


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the run, then anything it started (Ray workers may sit in groups of their own), and reap it."""
    for _ in range(50):
        pids = session_pids(proc.pid)
        if not pids:
            break
        for pid in sorted(pids, key=lambda p: p != proc.pid):  # the run first
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.poll()
        time.sleep(0.1)
    proc.wait()


def run_and_kill(args: list[str | Path], when: Callable[[int], bool], *, what: str = "the kill point",
                 store: Path | None = None, timeout: float = 300) -> int:
    """Start ``ether-prep ARGS`` in a session of its own and SIGKILL all of it at an observed event; returns
    the killed run's pid.

    ``when(pid)`` (``pid``: the run's) is polled until it holds; the run is then frozen (SIGSTOP) and
    ``when`` asked again, so that the kill lands while the event still holds (otherwise the run goes on and
    the next time it holds is taken). With ``store``, the frozen run must also be the holder of the store
    lock. The kill provably hits that live, frozen run (its return code is -SIGKILL); the test fails, saying
    what was awaited, if the run ends first or ``what`` is not seen within ``timeout`` seconds.
    """
    from ether_prep.lock import STORE_LOCK, read_holder

    with tempfile.TemporaryFile(mode="w+") as log:  # not a pipe: a full pipe would stall the run
        proc = subprocess.Popen(cli_argv(*args), cwd=ROOT, start_new_session=True, stdout=log, stderr=log,
                                text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
        deadline = time.monotonic() + timeout
        try:
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"the run ended (return code {proc.returncode}) before {what} was seen, "
                                         f"so nothing was killed: {' '.join(map(str, args))}\n{log.read()[-3000:]}")
                assert time.monotonic() < deadline, f"{what} was not seen within {timeout:.0f} s"
                if when(proc.pid):
                    freeze(proc)
                    holder = (read_holder(store / STORE_LOCK) or {}) if store is not None else {"pid": proc.pid}
                    if holder.get("pid") == proc.pid and when(proc.pid):
                        break
                    thaw(proc)  # the event passed while the signal was on its way: wait for it again
                time.sleep(0.01)
            assert proc.poll() is None  # frozen: it cannot end by itself before the kill
            _kill_session(proc)
            assert proc.returncode == -signal.SIGKILL, f"the run ended with {proc.returncode}, not by the SIGKILL"
            return proc.pid
        finally:
            if proc.poll() is None:
                _kill_session(proc)
