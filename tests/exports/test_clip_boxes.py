"""Cutting clips without a store: crop boxes that follow a face without jitter, the frames a one-pass decode
shows at given times, the encoder's output, pixelation, and the clips options checked before any work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ether_prep.cli import app
from ether_prep.errors import ConfigError
from ether_prep.exports.clip_boxes import crop_track, face_boxes_at, output_size, person_boxes, pixelate
from ether_prep.exports.clips import ClipOptions

FACE_T = np.arange(0, 4, 0.04)  # analysed frames at 25 fps
CLIP_T = 1.0 + np.arange(16) / 8  # a 2 s clip at 8 fps


def _boxes(cx: np.ndarray, cy: np.ndarray, side: float = 80.0) -> np.ndarray:
    return np.stack([cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2], axis=1)


def test_the_crop_follows_a_jittering_face_smoothly_at_one_size() -> None:
    rng = np.random.default_rng(0)
    cx = 200 + 40 * FACE_T + rng.normal(0, 6, FACE_T.size)  # drifting right, detections jitter by 6 px
    cy = 150 + rng.normal(0, 6, FACE_T.size)
    crop = crop_track(CLIP_T, FACE_T, [_boxes(cx, cy)], (640, 360))
    assert crop is not None and crop.coverage == [1.0]
    sizes = {(int(b[2] - b[0]), int(b[3] - b[1])) for b in crop.boxes}
    assert sizes == {(128, 128)}  # 1.6 x the face, the same all through the clip
    centre = (crop.boxes[:, 0] + crop.boxes[:, 2]) / 2
    raw = np.interp(CLIP_T, FACE_T, cx)
    assert np.abs(np.diff(centre, 2)).max() <= 3 < np.abs(np.diff(raw, 2)).max()  # no jitter left
    assert np.abs(centre - (200 + 40 * CLIP_T)).max() < 8  # yet it follows the drift


def test_the_crop_stays_inside_the_frame_and_holds_over_a_gap() -> None:
    box = _boxes(np.full(FACE_T.size, 20.0), np.full(FACE_T.size, 340.0), side=100)
    box[(FACE_T > 1.3) & (FACE_T < 2.2)] = np.nan  # the face leaves for most of the clip
    crop = crop_track(CLIP_T, FACE_T, [box], (640, 360))
    assert crop is not None and 0.3 < crop.coverage[0] < 0.7
    assert crop.boxes[:, 0].min() >= 0 and crop.boxes[:, 3].max() <= 360
    assert len({tuple(b) for b in crop.boxes}) == 1  # held where the face was


def test_no_face_in_view_gives_no_crop_and_two_people_share_one() -> None:
    absent = np.full((FACE_T.size, 4), np.nan)
    assert crop_track(CLIP_T, FACE_T, [absent], (640, 360)) is None
    assert crop_track(CLIP_T, FACE_T, [None], (640, 360)) is None
    left = _boxes(np.full(FACE_T.size, 150.0), np.full(FACE_T.size, 180.0))
    right = _boxes(np.full(FACE_T.size, 450.0), np.full(FACE_T.size, 180.0))
    both = crop_track(CLIP_T, FACE_T, [left, right], (640, 360))
    assert both is not None and both.coverage == [1.0, 1.0]
    x0, y0, x1, y1 = both.boxes[0]
    assert x0 <= 150 - 64 and x1 >= 450 + 64 and (x1 - x0) > (y1 - y0)
    one = crop_track(CLIP_T, FACE_T, [left, absent, None], (640, 360))
    assert one is not None and one.coverage == [1.0, 0.0, None] and one.size == (128, 128)


def test_person_boxes_merge_a_persons_tracks() -> None:
    box = np.full((4, 3, 4), np.nan)
    box[:2, 0], box[2:, 2], box[:, 1] = 1.0, 2.0, 9.0
    merged = person_boxes(box, np.array([0, 1, 0]), 0)
    assert merged[:, 0].tolist() == [1.0, 1.0, 2.0, 2.0]
    assert np.isnan(person_boxes(box, np.array([0, 1, 0]), 5)).all()


def test_output_size_keeps_the_short_side_and_even_dimensions() -> None:
    assert output_size(720, 288, 224) == (560, 224)
    assert output_size(131, 131, 224) == (224, 224)
    assert all(v % 2 == 0 for v in output_size(333, 500, 101))


def test_pixelate_hides_the_box_only_and_face_boxes_reach_between_frames() -> None:
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)
    out = pixelate(rgb, np.array([[10.0, 20.0, 50.0, 60.0], [np.nan] * 4]))
    assert (out[:20] == rgb[:20]).all() and (out[:, 50:] == rgb[:, 50:]).all()
    assert len(np.unique(out[20:60, 10:50].reshape(-1, 3), axis=0)) <= 64 < len(np.unique(rgb[20:60, 10:50]
                                                                                           .reshape(-1, 3), axis=0))
    box = np.full((3, 1, 4), np.nan)
    box[0, 0] = box[2, 0] = [10, 10, 30, 30]
    at = face_boxes_at(np.array([0.0, 0.2, 2.0]), box, np.array([0.1, 1.0, 1.9, 5.0]))
    assert at[0, 0].tolist() == [5, 5, 35, 35] and np.isnan(at[1, 0]).all() and np.isfinite(at[2, 0]).all()
    assert np.isnan(at[3, 0]).all()


def test_one_pass_decode_serves_the_frame_shown_at_each_time(tmp_path: Path) -> None:
    from ether_prep.adapters.pyav import ClipEncoder, iter_frames_shown

    path = tmp_path / "ramp.mp4"
    enc = ClipEncoder(path, 64, 48, 10, audio=np.zeros(32000, np.float32), sample_rate=16000, crf=10)
    for k in range(20):  # frame k (at k / 10 s) is grey level 10 k
        enc.add(np.full((48, 64, 3), 10 * k, np.uint8))
    enc.close()
    times = np.array([0.0, 0.05, 0.1, 0.149, 0.95, 1.2, 1.9, 2.3, 2.6, 3.0])
    served = list(iter_frames_shown(path, times))
    assert [i for i, _ in served] == list(range(8))  # 2.6 s and later: more than 0.5 s after the last frame
    levels = [round(float(f.rgb.mean()) / 10) for _, f in served]
    assert levels == [0, 0, 1, 1, 9, 12, 19, 19]
    assert served[0][1] is served[1][1]  # one frame shown twice is converted once


def test_clip_options_are_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--crop 'mouth'.*--fps 0.*--size 8"):
        ClipOptions(crop="mouth", fps=0, size=8).validate()
    runner = CliRunner()
    result = runner.invoke(app, ["export", str(tmp_path / "d"), "--format", "json", "--shards", "2"])
    assert result.exit_code == 2 and "--shards only apply with --format clips" in result.output
    result = runner.invoke(app, ["export", str(tmp_path / "d"), "--format", "clips", "--clips", "faces"])
    assert result.exit_code == 2 and "--clips 'faces'" in result.output


def test_sessions_without_speech_or_video_get_a_note_and_no_clips(tmp_path: Path) -> None:
    from ether_prep.exports.clips import export_clips
    from ether_prep.store import Store, write_table

    store = Store(tmp_path / "s.zarr")
    for sid, kind in (("silent-00000001", "video"), ("call-00000002", "audio")):
        group = store.session(sid, info={"id": sid, "relpath": f"{sid}.mp4", "kind": kind,
                                         "path": str(tmp_path / f"{sid}.mp4")})
        out = group.begin_stage("align", {"stage": "align"})
        for table in ("utterances", "pairs", "links"):
            write_table(out, table, {"id": np.array([], dtype=str)})
        group.finish_stage("align", "done", "fp")
    summary = export_clips(store, store.session_ids(), tmp_path / "out", progress=False)
    assert sorted(summary.notes) == ["session 'call-00000002': audio only (no video): no clips",
                                     "session 'silent-00000001': no speech (no utterances): no clips"]
    assert not summary.failed and summary.written == {"utterance": 0, "pair": 0}
    assert (tmp_path / "out" / "utterances.jsonl").read_text() == "" and not (tmp_path / "out" / "clips").exists()
