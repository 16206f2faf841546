"""One identity per person across shot cuts, gaps and re-entries (shots, identity, persons)."""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import zarr

from ether_prep.config import load_config
from ether_prep.errors import ConfigError, ModelError
from ether_prep.face.identity import TrackIdentities, cannot_link_pairs, cluster_persons, normalise
from ether_prep.face.shots import ShotDetector
from ether_prep.face.tracking import FaceTracker
from ether_prep.stages.face import FaceStage
from ether_prep.store import read_table

from ..conftest import DATA, pipeline_file
from ..media import FPS, GRID_A, GRID_B, dissolve, edited_dialogue, reentry
from ..stages.test_face import _spec, run_face

FRAME = 1.0 / FPS


def _frames(path: Path) -> list[np.ndarray]:
    from ether_prep.adapters.pyav import iter_video_frames

    return [f.rgb for f in iter_video_frames(path)]


# ---------------------------------------------------------------------------------- shot cuts (arrays)
def test_cut_found_between_two_speakers_on_the_same_background_and_nowhere_else() -> None:
    a, b = _frames(GRID_A), _frames(GRID_B)
    frames = a[:40] + b[40:] + a[10:30]  # A, hard cut to B at 40, hard cut back to A at 75
    shots = ShotDetector()
    cuts = [i for i, rgb in enumerate(frames) if shots.update(i * FRAME, rgb)]
    assert cuts == [40, 75] and shots.shot == 2
    assert shots.cut_times == pytest.approx([40 * FRAME, 75 * FRAME])
    assert shots.max_within_shot < 5  # talking-head motion is far below the threshold


def test_motion_and_fades_are_not_cuts() -> None:
    rng = np.random.default_rng(0)
    shots = ShotDetector()
    base = rng.integers(0, 255, (90, 160, 3)).astype(np.float32)
    frames = []
    for i in range(60):  # a bright square sweeping across a textured background, then a fade to black
        f = base.copy()
        f[30:60, 2 * i:2 * i + 30] = 255
        frames.append(f * (1.0 if i < 40 else (60 - i) / 20))
    assert not any(shots.update(i * FRAME, f.astype(np.uint8)) for i, f in enumerate(frames))
    off = ShotDetector(threshold=None)
    assert not any(off.update(i * FRAME, rgb) for i, rgb in enumerate([*frames[:3], np.zeros((90, 160, 3))]))


def test_steady_large_motion_raises_the_bar() -> None:
    # A flickering shot (differences of 15, then 25-30 every frame): above the threshold, yet no cut, as
    # the recent differences are as large; a jump of 200 is a cut.
    shots = ShotDetector(threshold=20.0, ratio=3.0)
    levels = [0, 15, 0, 15, 0, 15, 0, 25, 0, 25, 55, 255, 255]
    found = [i for i, v in enumerate(levels) if shots.update(i * FRAME, np.full((36, 64, 3), v, np.uint8))]
    assert found == [11]


# -------------------------------------------------------------------------------- tracker at cuts
def test_tracker_ends_tracks_at_a_cut_and_splits_a_changed_face() -> None:
    tracker = FaceTracker(min_hits=1)
    box = np.array([[100, 100, 200, 220]], float)
    first = [int(tracker.update(i * FRAME, box)[0]) for i in range(3)]
    tracker.end_all()  # a cut: the same place now shows someone else
    ids = tracker.assign(3 * FRAME, box)
    tracker.commit(3 * FRAME, box, ids)
    ids = tracker.assign(4 * FRAME, box)
    ids[0] = tracker.split(int(ids[0]), 4 * FRAME)  # the face changed without a cut
    tracker.commit(4 * FRAME, box, ids)
    later = int(tracker.update(5 * FRAME, box)[0])
    assert first == [0, 0, 0] and later == int(ids[0]) == 2
    assert [s.n_frames for s in tracker.summaries] == [3, 1, 2]
    assert tracker.summaries[1].last_time == pytest.approx(3 * FRAME)
    assert tracker.summaries[2].first_time == pytest.approx(4 * FRAME)


# --------------------------------------------------------------------------- identity and persons
def test_identity_sampling_schedule_and_change_detection() -> None:
    ident = TrackIdentities(every_s=1.0, max_per_track=4, min_hits=3, threshold=0.42)
    rng = np.random.default_rng(1)
    face = normalise(rng.normal(size=128))
    taken = []
    for i in range(250):  # 10 s of one track at 25 fps
        t = i * FRAME
        if ident.due(t, np.array([0]))[0]:
            distance = ident.add(0, t, face + 0.01 * rng.normal(size=128))
            assert distance is None or distance < 0.42
            taken.append(round(t, 2))
    # Confirmed at the 3rd frame, then 1, 2, 4 s apart (ages 0, 1, 3, 7 s), at most 4 samples.
    assert taken == [0.08, 1.08, 3.08, 7.08]
    other = normalise(rng.normal(size=128))
    distance = ident.add(0, 10.0, other)
    assert distance is not None and distance > 0.42 and ident.tracks[0].n == 4  # not added to the old face
    ident.restart(0, 1, 10.0, other, distance)
    assert ident.splits[0].last_same_time == pytest.approx(7.08) and ident.tracks[1].n == 1
    means, counts = ident.means([0, 1, 5], 128)
    assert counts.tolist() == [4, 1, 0] and np.isnan(means[2]).all()
    assert np.linalg.norm(means[0] - face) < 0.1 and np.allclose(np.linalg.norm(means[:2], axis=1), 1)


def test_cluster_persons_with_cannot_links_and_missing_identities() -> None:
    rng = np.random.default_rng(2)
    people = normalise(rng.normal(size=(3, 128)))
    # Tracks in order of first appearance: person of each, as a viewer would label them.
    truth = [0, 1, 0, 2, 1, 0, 2]
    tracks = normalise(people[truth] + 0.01 * rng.normal(size=(len(truth), 128)))
    labels = cluster_persons(tracks, np.zeros((0, 2), np.int64), threshold=0.42)
    assert labels.tolist() == truth
    # Near-identical tracks seen in the same frame (twins, a mirror) stay two people, and the constraint
    # holds for clusters: track 2 joins 0 or 1, never both.
    twins = normalise(np.stack([people[0], people[0] + 0.01, people[0] + 0.02]))
    labels = cluster_persons(twins, np.array([[0, 1]]), 0.42)
    assert labels[0] != labels[1] and sorted(set(labels.tolist())) == [0, 1]
    assert cluster_persons(twins, np.zeros((0, 2)), 0.42).tolist() == [0, 0, 0]
    # A track without an identity is a person of its own; an empty session has none.
    with_nan = tracks.copy()
    with_nan[2] = np.nan
    assert cluster_persons(with_nan, np.zeros((0, 2)), 0.42).tolist() == [0, 1, 2, 3, 1, 0, 3]
    assert cluster_persons(np.zeros((0, 128)), np.zeros((0, 2)), 0.42).size == 0
    assert cluster_persons(np.zeros((3, 0)), np.zeros((0, 2)), 0.42).tolist() == [0, 1, 2]


def test_cannot_link_pairs_from_detections() -> None:
    frame = np.array([0, 0, 1, 2, 2, 2, 3, 3])
    track = np.array([0, 1, 0, 0, 2, -1, 1, 1])
    assert cannot_link_pairs(frame, track).tolist() == [[0, 1], [0, 2]]
    five = cannot_link_pairs(np.zeros(5, int), np.array([4, 3, 2, 1, 0]))  # a group photo: every pair
    assert five.tolist() == [[i, j] for i in range(5) for j in range(i + 1, 5)]
    assert cannot_link_pairs(np.zeros(0, int), np.zeros(0, int)).shape == (0, 2)


def test_config_rejects_bad_identity_settings(tmp_path: Path) -> None:
    good = load_config()
    assert good["cpu"].stage("face").params.identity == "dlib"
    assert good["default"].stage("face").params.identity == "pyfeat"
    for params, message in [({"identity": "pyfeat"}, "needs the pyfeat backend"), ({"identity": "arcface"}, "identity"),
                            ({"cut_threshold": -1}, "cut_threshold"), ({"max_embeddings_per_track": 0}, "max_emb")]:
        path = pipeline_file(tmp_path, "x", [{"stage": "face", "backend": "mediapipe", "params": params}])
        with pytest.raises(ConfigError, match=message):
            load_config(path)


def test_dlib_models_resolve_from_the_package_and_say_how_to_fix_a_missing_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from ether_prep.adapters import dlib_face

    shape, resnet = dlib_face.model_files()
    assert shape.is_file() and resnet.name == f"{dlib_face.MODEL_ID}.dat"
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "face_recognition_models" else real(name, *a))
    with pytest.raises(ModelError, match="uv sync"):
        dlib_face.model_files()


# ------------------------------------------------------------------------------- real media (models)
@pytest.fixture(scope="module")
def dialogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, zarr.Group, object]:
    folder = tmp_path_factory.mktemp("dialogue")
    edit = edited_dialogue(folder / "dialogue.mp4")
    out, _, group = run_face(edit["path"], folder)
    return edit, out, group


def _person_per_frame(out: zarr.Group) -> np.ndarray:
    """(F, T) person id where a track has a face, -1 elsewhere."""
    present = ~np.isnan(out["box"][..., 0])
    return np.where(present, out["person"][...][None, :], -1)


@pytest.mark.slow
def test_edited_dialogue_two_persons_every_frame_right(dialogue) -> None:
    edit, out, _ = dialogue
    t = out["time"][...]
    persons = _person_per_frame(out)
    assert out.attrs["n_persons"] == 2 and int(out["person"][...].max()) == 1
    on_screen = (persons >= 0).sum(axis=1)
    assert (on_screen == 1).all()  # one face in every frame of this edit
    shown = persons.max(axis=1)
    for turn in edit["turns"]:  # the person on screen is the turn's speaker, frame by frame
        inside = (t >= turn["start"] - 1e-6) & (t < turn["end"] - 1e-6)
        assert inside.sum() >= 36 and set(shown[inside].tolist()) == {turn["person"]}, turn


@pytest.mark.slow
def test_edited_dialogue_cuts_found_and_no_track_spans_one(dialogue) -> None:
    edit, out, _ = dialogue
    cuts = list(out.attrs["cut_times"])
    assert len(cuts) == len(edit["cut_times"]) == 3 and out.attrs["n_shots"] == 4
    assert np.abs(np.array(cuts) - edit["cut_times"]).max() <= FRAME + 1e-6
    shot = out["shot"][...]
    assert shot.dtype == np.int32 and shot.shape == out["time"].shape and (np.diff(shot) >= 0).all()
    tracks = read_table(out, "tracks")
    assert {"person", "shot", "n_embeddings"} <= set(tracks) and (tracks["n_embeddings"] >= 1).all()
    boundaries = np.array([0.0, *cuts, np.inf])
    for k in range(len(tracks["track"])):
        first, last = tracks["first_time"][k], tracks["last_time"][k]
        s = int(tracks["shot"][k])
        assert boundaries[s] - 1e-6 <= first and last < boundaries[s + 1] - 1e-6  # inside one shot
    assert tracks["person"].tolist() == out["person"][...].tolist()


@pytest.mark.slow
def test_identity_embeddings_separate_the_speakers(dialogue) -> None:
    _, out, _ = dialogue
    ident, person = out["identity"][...], out["person"][...]
    assert ident.shape == (len(person), 128) and ident.dtype == np.float32
    assert np.allclose(np.linalg.norm(ident, axis=1), 1, atol=1e-5)
    d = np.linalg.norm(ident[:, None] - ident[None], axis=2)
    same = d[(person[:, None] == person[None]) & ~np.eye(len(person), dtype=bool)]
    different = d[person[:, None] != person[None]]
    threshold = out["identity"].attrs["threshold"]
    # Measured: same person across shots ~0.1, different people ~0.6 (dlib, L2-normalised).
    assert same.max() < threshold < different.min(), (same, different)
    assert out.attrs["identity_model"].startswith("dlib_face_recognition_resnet_model_v1")
    assert "dlib-bin" in FaceStage(_spec()).library_names() and out.attrs["identity_params"]["model"]["dim"] == 128


@pytest.mark.slow
def test_faces_csv_carries_the_person(dialogue, tmp_path: Path) -> None:
    from ether_prep.exports import exporter

    _, out, group = dialogue
    path = exporter("faces")(group, tmp_path)
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    person = out["person"][...]
    assert rows and all(int(r["person"]) == person[int(r["track"])] for r in rows)
    assert {r["person"] for r in rows} == {"0", "1"}


@pytest.fixture(scope="module")
def reentry_clip(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return reentry(tmp_path_factory.mktemp("reentry") / "reentry.mp4", blank_s=5.0)


@pytest.mark.slow
def test_reentry_after_5s_keeps_the_person(reentry_clip: dict, tmp_path: Path) -> None:
    out, _, _ = run_face(reentry_clip["path"], tmp_path)
    t = out["time"][...]
    persons = _person_per_frame(out)
    tracks = read_table(out, "tracks")
    assert len(tracks["track"]) == 2 and out.attrs["n_persons"] == 1  # two tracks, one person
    assert tracks["person"].tolist() == [0, 0]
    blank = (t >= reentry_clip["blank"][0] - 1e-6) & (t < reentry_clip["blank"][1] - 1e-6)
    assert (persons[blank] < 0).all() and (persons[~blank].max(axis=1) == 0).all()
    assert out.attrs["n_shots"] == 3  # into the black and out of it


@pytest.mark.slow
def test_without_identity_every_track_is_its_own_person(reentry_clip: dict, tmp_path: Path) -> None:
    out, _, _ = run_face(reentry_clip["path"], tmp_path, _spec(identity="off"))
    assert read_table(out, "tracks")["person"].tolist() == [0, 1] and out.attrs["identity_model"] is None
    assert "own" in out.attrs["person_kind"] and out["identity"].shape == (2, 0)
    assert out.attrs["identity_params"]["embeddings_computed"] == 0


@pytest.mark.slow
def test_a_face_that_changes_without_a_cut_splits_its_track(tmp_path: Path) -> None:
    clip = dissolve(tmp_path / "dissolve.mp4")  # A cross-fades into B in place: no hard cut
    out, _, _ = run_face(clip["path"], tmp_path)
    assert out.attrs["cut_times"] == [] and out.attrs["n_shots"] == 1
    tracks = read_table(out, "tracks")
    assert len(tracks["track"]) == 2 and tracks["person"].tolist() == [0, 1]
    (split,) = out.attrs["identity_splits"]
    assert (split["track"], split["new_track"]) == (0, 1) and split["distance"] > out["identity"].attrs["threshold"]
    # The change happened inside the dissolve; the store brackets it between two samples.
    assert split["last_same_time"] <= clip["dissolve"][0] and clip["dissolve"][1] <= split["time"] <= 3.0
    assert tracks["first_time"][1] == pytest.approx(split["time"])


@pytest.mark.slow
def test_side_by_side_two_tracks_two_persons(tmp_path: Path) -> None:
    out, _, _ = run_face(DATA / "video" / "grid_two_faces_side_by_side.mp4", tmp_path)
    tracks = read_table(out, "tracks")
    assert len(tracks["track"]) == 2 and tracks["person"].tolist() == [0, 1] and out.attrs["n_shots"] == 1


@pytest.mark.slow
def test_group_photo_five_faces_five_persons(tmp_path: Path) -> None:
    out, _, _ = run_face(DATA / "face" / "multi_face.jpg", tmp_path)
    assert out["box"].shape[:2] == (1, 5)
    assert sorted(out["person"][...].tolist()) == [0, 1, 2, 3, 4] and out.attrs["n_persons"] == 5
    assert (read_table(out, "tracks")["n_embeddings"] == 1).all() and out["shot"][...].tolist() == [0]


def test_identity_params_are_part_of_the_stage_identity() -> None:
    spec = _spec()
    other = dataclasses.replace(spec, params=dataclasses.replace(spec.params, identity_threshold=0.5))
    assert spec.identity() != other.identity() and spec.identity()["version"] == FaceStage.version
