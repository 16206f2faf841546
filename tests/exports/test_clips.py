"""Clips for vision-language models (``export --format clips``): one H.264/AAC clip per utterance and dialogue
pair of the real cpu pipeline's store, the speaker's face in the crop, the JSONL read by Hugging Face
``datasets``, WebDataset shards that iterate; and a clip that cannot be cut reported while the export goes on."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from ether_prep.cli import app
from ether_prep.store import Store

from ..conftest import DATA, GRID2, MODELS, pipeline

pytestmark = pytest.mark.slow  # they read the store the real cpu pipeline wrote (conftest `aligned`)

HIDDEN = "bbaf2n_face_hidden.mp4"


def _session_of(store: Path, name: str) -> str:
    return next(sid for sid in Store(store, mode="r").session_ids() if sid.startswith(Path(name).stem + "-"))


@pytest.fixture(scope="module")
def roles_store(aligned: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A copy of the shared store re-aligned with roles from sessions.csv: in the side-by-side clip the first
    speaker is the client (so the counsellor's reply makes a dialogue pair); in the face-hidden clip the speaker
    is linked to no face (its clip falls back to the full frame)."""
    from ether_prep.runner import run_pipeline
    from ether_prep.stages.align import read_align

    tmp = tmp_path_factory.mktemp("clips")
    store = tmp / "store.zarr"
    shutil.copytree(aligned["store"], store, symlinks=True)  # copy2: file times kept, stages stay verified
    grid = _session_of(store, GRID2.name)
    first = read_align(Store(store, mode="r").session(grid)).utterances
    speakers = list(dict.fromkeys(str(s) for s in first["speaker"]))
    raw = tmp / "raw"
    raw.mkdir()
    for name in (GRID2.name, HIDDEN):
        (raw / name).symlink_to((Path(aligned["raw"]) / name).resolve())
    (raw / "sessions.csv").write_text(f"file,client,counsellor,speaker_tracks\n{GRID2.name},{speakers[0]},"
                                      f"{speakers[1]},\n{HIDDEN},,,SPEAKER_00=-\n", encoding="utf-8")
    result = run_pipeline(pipeline("cpu"), raw, store, family="align")
    assert result.ok, result.report()
    return {"store": store, "grid": grid, "hidden": _session_of(store, HIDDEN), "tmp": tmp,
            "call": _session_of(store, "sample.wav"), "bbaf2n": _session_of(store, "bbaf2n.mpg")}


@pytest.fixture(scope="module")
def clips(roles_store: dict[str, Any]) -> dict[str, Any]:
    dest = roles_store["tmp"] / "clips"
    result = CliRunner().invoke(app, ["export", str(dest), "--out", str(roles_store["store"]), "--format", "clips",
                                      "--shards", "2"])
    assert result.exit_code == 0, result.output
    lines = {k: [json.loads(x) for x in (dest / f"{k}s.jsonl").read_text().splitlines()] for k in ("utterance", "pair")}
    return {**roles_store, "dest": dest, "lines": lines, "output": result.output}


def _streams(path: Path) -> dict[str, Any]:
    """The clip's video frames (RGB), video and audio durations, and its decoded audio samples."""
    import av

    with av.open(str(path)) as c:
        v, a = c.streams.video[0], c.streams.audio[0] if c.streams.audio else None
        info = {"codec": v.codec_context.name, "video_s": float(v.duration * v.time_base),
                "audio_s": float(a.duration * a.time_base) if a is not None else None, "audio_codec":
                a.codec_context.name if a is not None else None}
        info["frames"] = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(path)) as c:
        info["samples"] = (np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
                           if c.streams.audio else np.zeros(0))
    return info


def test_one_clip_per_utterance_and_pair_of_each_video_session(clips: dict[str, Any]) -> None:
    from ether_prep.stages.align import read_align

    store = Store(clips["store"], mode="r")
    for kind, table in (("utterance", "utterances"), ("pair", "pairs")):
        want = sorted(str(x) for sid in (clips["grid"], clips["hidden"], clips["bbaf2n"])
                      for x in getattr(read_align(store.session(sid)), table)["id"])
        assert sorted(line["id"] for line in clips["lines"][kind]) == want, kind
    assert len(clips["lines"]["pair"]) >= 1  # the client's turn and the counsellor's reply in the side-by-side clip
    assert f"skipped session {clips['call']!r}: audio only (no video): no clips" in clips["output"]
    assert not any(line["session_id"] == clips["call"] for line in clips["lines"]["utterance"])


def test_every_clip_lasts_its_span_within_one_frame_with_audio(clips: dict[str, Any]) -> None:
    for line in clips["lines"]["utterance"] + clips["lines"]["pair"]:
        info = _streams(clips["dest"] / line["video"])
        frame = 1 / line["fps"]
        assert info["codec"] == "h264" and info["audio_codec"] == "aac", line["id"]
        assert abs(info["video_s"] - (line["end"] - line["start"])) <= frame, line["id"]
        assert len(info["frames"]) == line["n_frames"] and info["frames"][0].shape == (line["height"],
                                                                                        line["width"], 3)
        assert min(line["width"], line["height"]) == 224 and line["fps"] == 8.0
        assert abs(info["audio_s"] - info["video_s"]) <= frame and line["has_audio"]
        assert np.sqrt(np.mean(info["samples"] ** 2)) > 0.005, f"{line['id']}: silent audio"  # speech is in it


def _mouth_openings(frames: list[np.ndarray]) -> tuple[np.ndarray, int]:
    """Per frame the lip aperture of the one face MediaPipe finds in it (NaN: none), and the most faces found."""
    from ether_prep.adapters.mediapipe_face import MediaPipeFaceLandmarker, read_model
    from ether_prep.face.features import mouth_open_from_landmarks

    opening, most = [], 0
    with MediaPipeFaceLandmarker(read_model(MODELS / "face_landmarker.task"), "face_landmarker.task",
                                 num_faces=2) as marker:
        for k, rgb in enumerate(frames):
            landmarks, _, _ = marker.detect(rgb, k / 8)
            most = max(most, len(landmarks))
            px = landmarks[:, :, :2] * np.array([rgb.shape[1], rgb.shape[0]])
            opening.append(float(mouth_open_from_landmarks(px)[0]) if len(landmarks) == 1 else np.nan)
    return np.array(opening), most


def test_utterance_clips_show_the_speaker_whose_mouth_moves(clips: dict[str, Any]) -> None:
    turns = json.loads(GRID2.with_suffix(".json").read_text())["turns"]
    lines = sorted((ln for ln in clips["lines"]["utterance"] if ln["session_id"] == clips["grid"]),
                   key=lambda ln: ln["start"])
    assert len(lines) == 2
    for line, turn in zip(lines, turns, strict=True):
        assert line["crop"] == "face" and line["crop_note"] is None and line["face_coverage"] > 0.9
        x, _, w, _ = turn["face_region_xywh"]
        x0, _, x1, _ = line["crop_box"]
        assert x <= (x0 + x1) / 2 <= x + w, f"{line['id']}: the crop is not on the speaker's side"
        assert x1 - x0 < 360, "a face crop, not the frame"
        opening, most = _mouth_openings(_streams(clips["dest"] / line["video"])["frames"])
        assert most == 1 and np.isfinite(opening).mean() >= 0.8, f"{line['id']}: the speaker's face is not in view"
        # GRID speakers open and close their lips with every word; a still face (the other panel) does not.
        assert np.nanmax(opening) - np.nanmin(opening) > 0.1, f"{line['id']}: mouth {np.round(opening, 2)}"


def test_a_speaker_without_a_face_gets_the_full_frame_and_says_so(clips: dict[str, Any]) -> None:
    (line,) = [ln for ln in clips["lines"]["utterance"] if ln["session_id"] == clips["hidden"]]
    assert line["crop"] == "full_frame" and "no face linked to SPEAKER_00" in line["crop_note"]
    assert (line["width"], line["height"]) == (280, 224) and line["crop_box"] == [0, 0, 360, 288]


def test_pair_clips_hold_the_client_turn_and_the_reply_with_both_faces(clips: dict[str, Any]) -> None:
    (pair,) = [ln for ln in clips["lines"]["pair"] if ln["session_id"] == clips["grid"]]
    utts = {ln["id"]: ln for ln in clips["lines"]["utterance"]}
    client, reply = utts[pair["client_utterances"][0]], utts[pair["counsellor_utterances"][-1]]
    assert pair["start"] == client["start"] and pair["end"] == reply["end"] and client["role"] == "client"
    assert pair["conversations"][1]["value"] == pair["counsellor_text"] == reply["transcript"]
    assert pair["client_text"] in pair["conversations"][0]["value"]
    assert pair["crop"] == "face" and pair["client_face_coverage"] > 0.9 and pair["counsellor_face_coverage"] > 0.9
    x0, _, x1, _ = pair["crop_box"]
    for line in (client, reply):  # both people's faces inside the pair's crop
        assert x0 <= line["crop_box"][0] + 20 and line["crop_box"][2] - 20 <= x1


def test_jsonl_lines_parse_point_at_clips_and_load_with_datasets(clips: dict[str, Any], tmp_path: Path) -> None:
    import datasets

    for kind, lines in clips["lines"].items():
        for line in lines:
            assert (clips["dest"] / line["video"]).is_file() and line["kind"] == kind
            human, gpt = line["conversations"]
            assert human["from"] == "human" and human["value"].startswith("<video>\n") and gpt["from"] == "gpt"
            assert {"transcript", "start", "end", "cues", "session_id", "crop"} <= set(line)
        ds = datasets.load_dataset("json", data_files=str(clips["dest"] / f"{kind}s.jsonl"), split="train",
                                   cache_dir=str(tmp_path / "hf"))
        assert ds.num_rows == len(lines) and ds[0]["id"] == lines[0]["id"]
        assert ds[0]["conversations"] == lines[0]["conversations"] and ds[0]["video"] == lines[0]["video"]


def test_webdataset_shards_iterate_over_every_clip(clips: dict[str, Any]) -> None:
    import webdataset

    shards = sorted((clips["dest"] / "shards").glob("utterances-*.tar"))
    assert len(shards) == 2
    samples = list(webdataset.WebDataset([str(p) for p in shards], shardshuffle=False))
    lines = clips["lines"]["utterance"]
    assert len(samples) == len(lines)
    for sample, line in zip(samples, lines, strict=True):
        assert json.loads(sample["json"]) == line
        assert sample["mp4"] == (clips["dest"] / line["video"]).read_bytes()


def test_deidentified_clips_and_a_clip_that_cannot_be_cut(clips: dict[str, Any], tmp_path: Path) -> None:
    """De-identified: no session id or listed name in any line or file name, no face MediaPipe can find.
    The side-by-side recording cut short at 4 s: the clips past its end fail, naming session and sample and
    why; the rest (and the other session) are written; exit code 1."""
    raw = tmp_path / "raw"
    raw.mkdir()
    subprocess.run(["ffmpeg", "-v", "error", "-i", str(GRID2), "-t", "4.0", "-c", "copy", str(raw / GRID2.name)],
                   check=True)
    (raw / "bbaf2n.mpg").symlink_to(DATA / "video" / "bbaf2n.mpg")
    word = next(ln for ln in clips["lines"]["utterance"] if ln["session_id"] == clips["grid"])["transcript"].split()[0]
    (tmp_path / "names.txt").write_text(word.strip(".,?!") + "\n")
    dest = tmp_path / "out"
    result = CliRunner().invoke(app, ["export", str(dest), "--out", str(clips["store"]), "--format", "clips",
                                      "--session", clips["grid"], "--session", clips["bbaf2n"], "--raw", str(raw),
                                      "--deidentify", "--names", str(tmp_path / "names.txt")])
    assert result.exit_code == 1, result.output
    lines = [json.loads(x) for k in ("utterance", "pair") for x in (dest / f"{k}s.jsonl").read_text().splitlines()]
    text = (dest / "utterances.jsonl").read_text() + (dest / "pairs.jsonl").read_text() + result.output
    files = [str(p) for p in dest.rglob("*")]
    for sid in (clips["grid"], clips["bbaf2n"]):
        assert sid not in text and not any(sid in f for f in files)
    assert "[NAME]" in text and all(ln["session_id"].startswith("session-") for ln in lines)
    failed = [ln for ln in result.output.splitlines() if ln.startswith("failed session ")]
    assert len(failed) == 2 and all("the video ends at" in ln for ln in failed), result.output  # reply, pair
    assert "2 failed" in result.output and {ln["kind"] for ln in lines} == {"utterance"} and len(lines) == 2
    for line in lines:
        _, most = _mouth_openings(_streams(dest / line["video"])["frames"])
        assert most == 0, f"{line['id']}: a face is still recognisable"
