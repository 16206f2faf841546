"""Recording identity and the withdrawn recording: results follow a recording's content, not its path.

A recording replaced under the same name (a corrected export; the same size with its modification time put
back) makes its stages stale with the reason, and the next run recomputes it (its transcript is the new
one's) while the untouched sessions stay cached. A file that changes while a stage decodes it fails by name;
one that grew since it was computed (a streamed MKV copied in two halves) is stale. ``ether-prep remove``
deletes a session from the store and the manifests; runs and ``status`` name stored sessions whose
recording is gone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ether_prep.cli import app
from ether_prep.config import load_pipeline
from ether_prep.manifest import read_manifest
from ether_prep.records import Session
from ether_prep.runner import run_pipeline, status_table
from ether_prep.sessions import probe_session, recording_identity, session_id
from ether_prep.store import Store
from ether_prep.worker import StageWorker, Task

from ..conftest import DATA, ROOT, audio_config, pipeline, pipeline_file
from ..media import speech_clip, write_wav
from ..scoring import wer
from ..trust_media import JFK_TEXT, LIBRI_TEXT

CPU = [s.name for s in pipeline("cpu").stages if s.enabled]  # audio ... align, qc
A, B, C = (session_id(n) for n in ("a.wav", "b.wav", "c.wav"))
JFK_HEAD = "And so my fellow Americans ask not what your country can do for you"  # its first 5.9 s


def _words(store: Path, sid: str) -> str:
    return " ".join(Store(store, mode="r").session(sid).read_table("transcribe", "words")["text"].tolist())


def _cli(*args: str | Path) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args], env={"NO_COLOR": "1"})
    return result.exit_code, result.output


# ------------------------------------------------------------------------------------------ identity alone
def test_identity_sees_an_edit_that_keeps_size_and_time(tmp_path: Path) -> None:
    """Head and tail of a large file, all of a small one: an edit there with the size and modification time
    put back (os.utime) still changes the identity, and says how."""
    rng = np.random.default_rng(0)
    for name, size, at in (("large.mkv", 6 * 2**20, -1000), ("large_head.mkv", 6 * 2**20, 100),
                           ("small.wav", 2**20, 2**19)):
        path = tmp_path / name
        data = bytearray(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
        path.write_bytes(bytes(data))
        before, st = recording_identity(path), os.stat(path)
        data[at] ^= 0xFF
        path.write_bytes(bytes(data))
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
        after = recording_identity(path)
        assert (after.size, after.mtime_ns) == (before.size, before.mtime_ns)
        assert after.digest != before.digest, name
        assert before.change(after) == "same size and time, other content"
    grown = tmp_path / "small.wav"
    before = recording_identity(grown)
    with open(grown, "ab") as fh:
        fh.write(b"\0" * 10)
    assert f"size {2**20} -> {2**20 + 10} bytes" in (before.change(recording_identity(grown)) or "")


# ------------------------------------------------------------------------------------------ changed while read
def _streamed_mkv(*args: str) -> bytes:
    """The GRID clip as a recorder streams it: MKV written to a pipe (no duration, no index at the end)."""
    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(DATA / "video" / "bbaf2n.mpg"), "-c:v", "libx264",
                           "-preset", "ultrafast", *args, "-f", "matroska", "pipe:1"],
                          check=True, capture_output=True).stdout


def _probed(path: Path, raw: Path) -> Session:
    rel = path.relative_to(raw).as_posix()
    return probe_session(Session(session_id(rel), path, rel, "audio" if path.suffix == ".wav" else "video"))


def test_audio_stage_fails_a_file_that_changes_while_it_decodes(tmp_path: Path) -> None:
    """The file grows while the audio stage decodes it (appended from its first progress report, so not a
    race): the stage fails naming the file and the change, and stores no waveform."""
    raw = tmp_path / "raw"
    raw.mkdir()
    path = raw / "growing.wav"
    write_wav(path, speech_clip("libri"))
    session = _probed(path, raw)
    size = path.stat().st_size
    spec = load_pipeline("audio", audio_config(tmp_path, block=0.5)).stages[0]
    store = tmp_path / "store.zarr"
    Store(store).session(session.id, info=session.to_dict())

    def grow(stage: str, key: str, media_s: float) -> None:
        if path.stat().st_size == size:
            with open(path, "ab") as fh:
                fh.write(b"\0" * 3200)

    outcome = StageWorker(spec, store, report=grow).process(Task(session, "audio", "fp", {"stage": "audio"}))
    assert outcome.state == "failed"
    assert outcome.message == (f"{path}: changed while it was read (size {size} -> {size + 3200}): still being "
                               f"written? run again when it is complete")
    group = Store(store, mode="r").session(session.id)
    assert group.stage_state("audio").state == "failed" and "waveform" not in group.group["audio"]


@pytest.mark.slow  # loads MediaPipe's face landmarker
def test_face_stage_fails_a_video_that_changed_since_its_probe(tmp_path: Path) -> None:
    """A streamed MKV that grows between its probe and the end of decoding: the face stage fails by name."""
    raw = tmp_path / "raw"
    raw.mkdir()
    path = raw / "live.mkv"
    whole = _streamed_mkv("-t", "1", "-an")
    path.write_bytes(whole[: len(whole) // 2])
    session = _probed(path, raw)
    with open(path, "ab") as fh:  # the recorder goes on writing
        fh.write(whole[len(whole) // 2:])
    cfg = pipeline_file(tmp_path, "cpu", face={"identity": "off", "analysis_fps": 5})
    spec = next(s for s in load_pipeline("cpu", cfg).stages if s.name == "face")
    store = tmp_path / "store.zarr"
    Store(store).session(session.id, info=session.to_dict())
    outcome = StageWorker(spec, store).process(Task(session, "face", "fp", {"stage": "face"}))
    assert outcome.state == "failed"
    assert outcome.message == (f"{path}: changed while it was read (size {len(whole) // 2} -> {len(whole)}): "
                               f"still being written? run again when it is complete")


def test_a_streamed_recording_that_grew_since_its_run_is_stale(tmp_path: Path) -> None:
    """A live MKV (no duration, no index) copied in two halves: the run on the first half keeps what it saw;
    once the file is whole, status says stale with the reason and the next run decodes all of it."""
    raw = tmp_path / "raw"
    raw.mkdir()
    whole = _streamed_mkv("-c:a", "flac")
    path = raw / "live.mkv"
    path.write_bytes(whole[: len(whole) // 2])
    cfg, store = audio_config(tmp_path), tmp_path / "store.zarr"
    audio = load_pipeline("audio", cfg)
    sid = session_id("live.mkv")
    assert run_pipeline(audio, raw, store).ok
    half = Store(store, mode="r").session(sid).stage_group("audio").attrs["duration"]
    with open(path, "ab") as fh:
        fh.write(whole[len(whole) // 2:])
    (row,) = status_table(Store(store, mode="r"), audio)
    assert row["state"] == "stale"
    assert row["message"].startswith("recording changed since audio read it (")
    assert f"size {len(whole) // 2} -> {len(whole)} bytes" in row["message"]
    again = run_pipeline(audio, raw, store)
    assert again.ok and again.ran("audio") == [sid]
    assert any(n.startswith("live.mkv: recording changed since audio read it") for n in again.notes)
    group = Store(store, mode="r").session(sid)
    full = group.stage_group("audio").attrs["duration"]
    assert half < 2.0 < 2.9 < full  # the half it saw, then all of it
    assert group.info["identity"] == recording_identity(path).to_dict()  # the stored session is refreshed
    assert status_table(Store(store, mode="r"), audio)[0]["state"] == "done"


# ------------------------------------------------------------------------------------------ replaced recordings
@pytest.fixture(scope="module")
def replaced(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The cpu pipeline over three speech recordings; then a.wav is replaced by another recording (new size),
    b.wav by another of the same length, its modification time put back; c.wav is left alone; status; the
    pipeline again; status again."""
    tmp = tmp_path_factory.mktemp("identity")
    raw = tmp / "raw"
    raw.mkdir()
    libri, jfk = speech_clip("libri"), speech_clip("jfk")
    write_wav(raw / "a.wav", libri)
    write_wav(raw / "b.wav", jfk[: len(libri)])
    write_wav(raw / "c.wav", speech_clip("bbaf2n"))
    store, cpu = tmp / "store.zarr", pipeline("cpu")
    first = run_pipeline(cpu, raw, store, family=None)
    assert first.ok, first.report()
    before = {sid: _words(store, sid) for sid in (A, B, C)}
    a_size = (raw / "a.wav").stat().st_size
    write_wav(raw / "a.wav", jfk)
    st = os.stat(raw / "b.wav")
    write_wav(raw / "b.wav", libri)
    os.utime(raw / "b.wav", ns=(st.st_atime_ns, st.st_mtime_ns))
    now = os.stat(raw / "b.wav")
    assert (now.st_size, now.st_mtime_ns) == (st.st_size, st.st_mtime_ns)  # only the content tells
    code, out = _cli("status", "--out", store, "--json", "--config", ROOT / "pipelines.yaml", "--pipeline", "cpu")
    assert code == 0, out
    status = json.loads(out)
    second = run_pipeline(cpu, raw, store, family=None)
    assert second.ok, second.report()
    return {"raw": raw, "store": store, "tmp": tmp, "before": before, "status": status, "second": second,
            "sizes": (a_size, (raw / "a.wav").stat().st_size), "jfk_s": len(jfk) / 16000,
            "after": {sid: _words(store, sid) for sid in (A, B, C)}}


@pytest.mark.slow
def test_status_says_a_replaced_recording_is_stale_and_why(replaced: dict) -> None:
    rows = {(r["session"], r["stage"]): r for r in replaced["status"]["rows"]}
    a_size, jfk_size = replaced["sizes"]
    for sid, how in ((A, f"size {a_size} -> {jfk_size} bytes"), (B, "same size and time, other content")):
        reason = rows[(sid, "audio")]["message"]
        assert reason.startswith("recording changed since audio read it (") and how in reason, reason
        for stage in CPU:  # face too: skipped on a recording that changed (it may have a video stream now)
            assert rows[(sid, stage)]["state"] == "stale", (sid, stage)
            message = rows[(sid, stage)]["message"]
            assert message.startswith("recording changed since ") and how in message, (stage, message)
        assert rows[(sid, "face")]["message"].startswith("recording changed since face read it (")
    assert all(rows[(C, stage)]["state"] in ("done", "skipped") for stage in CPU)


@pytest.mark.slow
def test_the_next_run_recomputes_the_replaced_ones_only(replaced: dict) -> None:
    second = replaced["second"]
    for stage in ("audio", "transcribe", "diarize", "utterances", "align", "qc"):
        assert sorted(second.ran(stage)) == sorted([A, B]), stage
    assert {o.state for o in second.outcomes if o.session_id == C} == {"cached"}
    changed = [n for n in second.notes if "recording changed since" in n]
    assert [n.split(":")[0] for n in changed] == ["a.wav", "b.wav"]


@pytest.mark.slow
def test_a_replaced_recording_gets_its_own_transcript(replaced: dict) -> None:
    before, after, store = replaced["before"], replaced["after"], replaced["store"]
    assert wer(LIBRI_TEXT, before[A]) <= 0.5 and wer(JFK_HEAD, before[B]) <= 0.5  # the first recordings
    assert wer(JFK_TEXT, after[A]) <= 0.5 and wer(LIBRI_TEXT, after[B]) <= 0.5  # their replacements
    assert after[C] == before[C]
    group = Store(store, mode="r").session(A)
    new = replaced["jfk_s"]
    assert group.info["probe"]["duration"] == pytest.approx(new, abs=0.01)  # the stored probe is the new one
    assert group.stage_group("audio").attrs["duration"] == pytest.approx(new, abs=0.01)
    manifest = read_manifest(store / "utterances.parquet")
    text = " ".join(t for s, t in zip(manifest["session_id"], manifest["text"], strict=True) if s == A)
    assert wer(JFK_TEXT, text) <= 0.5
    rows = status_table(Store(store, mode="r"), pipeline("cpu"))
    assert {r["state"] for r in rows} <= {"done", "skipped"}


# ------------------------------------------------------------------------------------------ withdrawn recordings
@pytest.fixture(scope="module")
def withdrawn(replaced: dict) -> dict:
    """A copy of the store and of its raw folder; a run over the copy (cached), c.wav deleted from it, a run
    again (cached: it notes the session without a recording), status, then `ether-prep remove`."""
    tmp = replaced["tmp"]
    raw, store = tmp / "raw_copy", tmp / "withdrawn.zarr"
    shutil.copytree(replaced["raw"], raw)  # modification times kept: nothing is stale
    shutil.copytree(replaced["store"], store)
    assert run_pipeline(pipeline("cpu"), raw, store, family=None).counts() == {"cached": 3 * len(CPU)}
    (raw / "c.wav").unlink()
    run = run_pipeline(pipeline("cpu"), raw, store, family=None)
    status = _cli("status", "--out", store, "--config", ROOT / "pipelines.yaml", "--pipeline", "cpu")
    status_json = json.loads(_cli("status", "--out", store, "--json", "--config", ROOT / "pipelines.yaml",
                                  "--pipeline", "cpu")[1])
    before = {name: read_manifest(store / f"{name}.parquet")["session_id"].tolist()
              for name in ("utterances", "sessions")}
    remove = _cli("remove", C, "--out", store)
    return {"store": store, "run": run, "status": status, "status_json": status_json, "before": before,
            "remove": remove}


@pytest.mark.slow
def test_run_and_status_name_sessions_whose_recording_is_gone(withdrawn: dict) -> None:
    run = withdrawn["run"]
    assert run.ok and run.counts() == {"cached": 2 * len(CPU)}
    assert any(n.startswith(f"1 stored session(s) have no recording under {withdrawn['store'].parent / 'raw_copy'}: "
                            f"{C} (c.wav);") and n.endswith("`ether-prep remove ID` deletes them") for n in run.notes)
    code, out = withdrawn["status"]
    assert code == 0 and "1 stored session(s) have no recording at their stored path" in out and f"{C} (c.wav)" in out
    assert withdrawn["status_json"]["missing_recordings"] == [{"session": C, "recording": "c.wav"}]
    assert C in withdrawn["before"]["utterances"] and C in withdrawn["before"]["sessions"]  # nothing deleted


@pytest.mark.slow
def test_remove_deletes_a_session_from_the_store_and_manifests(withdrawn: dict) -> None:
    code, out = withdrawn["remove"]
    store = withdrawn["store"]
    assert code == 0, out
    assert f"removed {C} (c.wav)" in out and "manifests rebuilt" in out
    assert Store(store, mode="r").session_ids() == [A, B]
    assert not (store / "sessions" / C).exists()
    assert C not in (store / "zarr.json").read_text()  # consolidated metadata too
    for name in ("utterances", "dialogue_pairs", "sessions"):
        ids = read_manifest(store / f"{name}.parquet")["session_id"].tolist()
        # Every recording here has one voice, so there may be no dialogue pair; the other two stay elsewhere.
        assert C not in ids and (ids or name == "dialogue_pairs"), name
    code, out = _cli("status", "--out", store, "--config", ROOT / "pipelines.yaml", "--pipeline", "cpu")
    assert code == 0 and C not in out and "no recording" not in out


@pytest.mark.slow
def test_remove_refuses_an_unknown_session(withdrawn: dict) -> None:
    store = withdrawn["store"]
    code, out = _cli("remove", A, "no-such-session", "a.wav", "--out", store)
    assert code == 2
    assert f"no session 'no-such-session', 'a.wav' (the id of that recording is '{A}'); nothing removed" in out
    assert f"`ether-prep status --out {store}` lists the session ids" in out
    assert A in Store(store, mode="r").session_ids()  # nothing removed
