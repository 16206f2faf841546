"""The align stage on the shared aligned store (the real ``cpu`` pipeline over shared clips, conftest): links,
tensors, masks, reruns."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from ether_prep.errors import ConfigError
from ether_prep.stages.align import AlignParams

from ..conftest import GRID2, pipeline, pipeline_file


def test_bad_align_parameters_are_config_errors(tmp_path: Path) -> None:
    from ether_prep.config import load_pipeline

    with pytest.raises(ValueError, match="role_heuristic"):
        AlignParams(role_heuristic="loudest").validate()
    cfg = pipeline_file(tmp_path, align={"rate_hz": -1.0})
    with pytest.raises(ConfigError, match="rate_hz"):
        load_pipeline("cpu", cfg)


def _session(store: Path, name: str) -> tuple[str, zarr.Group]:
    root = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)
    for sid in root["sessions"].group_keys():
        if sid.startswith(name):
            return sid, root["sessions"][sid]
    raise AssertionError(f"no session {name} in {list(root['sessions'].group_keys())}")


def _table(group: zarr.Group, name: str) -> dict[str, np.ndarray]:
    from ether_prep.store import read_table

    return {k: np.array([str(x) for x in v]) if v.dtype.kind in "TUO" else v
            for k, v in read_table(group, name).items()}


@pytest.mark.slow
def test_side_by_side_faces_are_linked_to_their_turns(aligned: dict[str, object]) -> None:
    _, g = _session(aligned["store"], "grid_two_faces")
    links = _table(g["align"], "links")
    utts = _table(g["utterances"], "utterances")
    box = np.asarray(g["face/box"][...], dtype=np.float64)
    centre_x = np.nanmean((box[..., 0] + box[..., 2]) / 2, axis=0)  # per track

    def speaker_of(window: tuple[float, float]) -> str:
        talk: dict[str, float] = {}
        for s, e, spk in zip(utts["start"], utts["end"], utts["speaker"], strict=True):
            talk[spk] = talk.get(spk, 0.0) + max(0.0, min(e, window[1]) - max(s, window[0]))
        return max(talk, key=talk.get)

    first, second = speaker_of((0.0, 3.0)), speaker_of((3.0, 6.0))
    assert first != second
    linked = {int(t): (str(s), float(c)) for t, s, c in zip(links["track"], links["speaker"],
                                                             links["confidence"], strict=True)}
    left = int(np.argmin(centre_x))
    right = int(np.argmax(centre_x))
    assert centre_x[left] < 360 < centre_x[right]
    track_ids = [int(t) for t in g["face/tracks/track"][...]]
    assert linked[track_ids[left]][0] == first and linked[track_ids[right]][0] == second
    for t in (left, right):
        assert linked[track_ids[t]][1] > 0.5, links  # 0.67 on this clip: well above chance (0 = a coin toss)
    print(f"\nside-by-side links: {links}")


@pytest.mark.slow
def test_tensors_cover_each_utterance_from_distinct_tracks(aligned: dict[str, object]) -> None:
    rate = pipeline("cpu").stage("align").params.rate_hz
    root = zarr.open_group(str(aligned["store"]), mode="r", zarr_format=3, use_consolidated=False)
    n_both = 0
    for sid in root["sessions"].group_keys():
        align = root["sessions"][sid]["align"]
        assert align.attrs["rate_hz"] == rate
        utts = _table(align, "utterances")
        offsets = align["tensors/offsets"][...]
        time = align["tensors/time"][...]
        assert offsets[-1] == time.size == align["tensors/face"].shape[0] == align["tensors/mask"].shape[0]
        for i in range(len(utts["id"])):
            t = time[offsets[i]:offsets[i + 1]]
            assert np.allclose(np.diff(t), 1 / rate)
            assert t[0] <= utts["start"][i] + 1e-9 and t[-1] >= utts["end"][i] - 1e-9
            st, lt = int(utts["speaker_track"][i]), int(utts["listener_track"][i])
            if st >= 0 and lt >= 0:
                n_both += 1
                assert st != lt
                face = align["tensors/face"][offsets[i]:offsets[i + 1]]
                both = align["tensors/mask"][offsets[i]:offsets[i + 1]].all(axis=1)
                assert not np.allclose(face[both, 0], face[both, 1])
    assert n_both >= 2  # both utterances of the side-by-side clip have a speaker and a listener face


def test_gaze_angles_are_tensor_features(aligned: dict[str, object]) -> None:
    """The speaker's gaze angles (radians) are per-step features of the utterance tensors, with values where a face
    is seen, and in the pooled statistics."""
    root = zarr.open_group(str(aligned["store"]), mode="r", zarr_format=3, use_consolidated=False)
    sid = next(s for s in root["sessions"].group_keys() if s.startswith("grid_two_faces"))
    align = root["sessions"][sid]["align"]
    names = list(align.attrs["feature_names"])
    assert names[-2:] == ["gaze_angle_x", "gaze_angle_y"] and names[-3] == "mouth_open"
    available = dict(zip(names, align.attrs["features_available"], strict=True))
    assert available["gaze_angle_x"] and available["gaze_angle_y"]
    face, mask = align["tensors/face"][...], align["tensors/mask"][...]
    gaze = face[:, 0, -2:][mask[:, 0]]
    assert gaze.size and np.isfinite(gaze).all() and (np.abs(gaze) < np.pi / 2).all() and np.abs(gaze).max() > 0
    pooled = align["pooled"][...]
    assert np.isfinite(pooled[:, 0, 0, -2:]).any()  # the mean over the utterance


@pytest.mark.slow
def test_mask_is_false_where_the_face_is_missing(aligned: dict[str, object]) -> None:
    _, g = _session(aligned["store"], "bbaf2n_face_hidden")
    align = g["align"]
    utts = _table(align, "utterances")
    assert len(utts["id"]) >= 1
    offsets = align["tensors/offsets"][...]
    time = align["tensors/time"][...]
    mask = align["tensors/mask"][...]
    face = align["tensors/face"][...]
    speaker_mask = mask[:, 0]
    hidden = (time > 1.05) & (time < 1.95)
    assert hidden.any() and not speaker_mask[hidden].any()
    assert np.all(face[~speaker_mask] == 0)
    visible = ((time > 0.3) & (time < 0.9)) | ((time > 2.1) & (time < 2.9))
    assert speaker_mask[visible].mean() > 0.9
    assert not mask[:, 1].any()  # one person on screen: no listener face
    # the stored face track really lacks those frames
    ft = g["face/time"][...]
    present = np.isfinite(g["face/score"][...])
    assert not present[(ft > 1.05) & (ft < 1.95)].any()
    cov = utts["speaker_coverage"]
    assert 0.0 < cov[int(np.argmax(offsets[1:] - offsets[:-1]))] < 0.5  # hidden for most of the words
    # the tracker lost the face while hidden; both fragments are linked to the one speaker (same seat)
    links = _table(align, "links")
    assert len(set(links["speaker"])) == 1 and links["speaker"][0] != ""
    # the audio-only call: every face step masked, face cues NaN, still in the manifest with text cues
    _, call = _session(aligned["store"], "sample")
    assert call["face"].attrs["stage"]["state"] == "skipped"
    assert not call["align/tensors/mask"][...].any()
    call_utts = _table(call["align"], "utterances")
    assert len(call_utts["id"]) >= 5 and np.isnan(call_utts["mismatch"]).all()


@pytest.mark.slow
def test_changing_the_rate_reruns_only_align(aligned: dict[str, object]) -> None:
    from ether_prep.runner import run_pipeline

    store = aligned["tmp"] / "rate_store.zarr"
    shutil.copytree(aligned["store"], store)
    before = _markers(store)
    summary = run_pipeline(pipeline("cpu", align={"rate_hz": 5.0, "max_len": 40}), aligned["raw"], store, family=None)
    assert summary.ok, summary.report()
    computed = {o.stage for o in summary.outcomes if o.state in ("done", "failed")}
    # align, the voice on its grid, and the quality check that reads it
    assert computed == {"align", "voice", "qc"}, summary.report()
    assert {o.state for o in summary.outcomes if o.stage not in ("align", "voice", "qc")} <= {"cached"}
    after = _markers(store)
    for key, marker in before.items():
        if key[1] not in ("align", "voice", "qc"):
            assert after[key] == marker  # extract stages untouched: same fingerprint and finish time
        else:
            assert after[key]["fingerprint"] != marker["fingerprint"]
    _, g = _session(store, "grid_two_faces")
    t = g["align/tensors/time"][...]
    off = g["align/tensors/offsets"][...]
    assert np.allclose(np.diff(t[off[0]:off[1]]), 0.2)
    # the optional fixed-length tensors hold the same values, cut or zero-padded to max_len
    padded, length = g["align/padded/face"], g["align/padded/length"][...]
    for i in range(len(off) - 1):
        n = int(length[i])
        assert n == min(40, off[i + 1] - off[i])
        assert np.array_equal(padded[i, :n], g["align/tensors/face"][off[i]:off[i] + n])
        assert not g["align/padded/mask"][i, n:].any()


def _markers(store: Path) -> dict[tuple[str, str], dict]:
    root = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)
    out = {}
    for sid in root["sessions"].group_keys():
        for stage in root["sessions"][sid].group_keys():
            m = dict(root["sessions"][sid][stage].attrs.get("stage", {}))
            out[(sid, stage)] = {k: m.get(k) for k in ("fingerprint", "finished_at", "state")}
    return out


@pytest.mark.slow
def test_edited_sessions_csv_reaches_align_alone(aligned: dict[str, object]) -> None:
    """Roles fixed by hand in sessions.csv after extraction: `align` (no raw folder) picks them up and reruns
    only for that session; nothing is re-extracted."""
    from ether_prep.runner import run_pipeline

    store = aligned["tmp"] / "roles_store.zarr"
    shutil.copytree(aligned["store"], store)
    sid, g = _session(store, "grid_two_faces")
    auto = dict(g["align"].attrs)
    assert auto["role_assumed"] is True
    client = next(s for s, r in auto["roles"].items() if r == "counsellor")  # swap the guess
    counsellor = next(s for s, r in auto["roles"].items() if r == "client")
    csv = aligned["raw"] / "sessions.csv"
    csv.write_text(f"file,client,counsellor\n{GRID2.name},{client},{counsellor}\n")
    try:
        summary = run_pipeline(pipeline("cpu"), None, store, family="align")
    finally:
        csv.unlink()
    assert summary.ok, summary.report()
    assert summary.ran("align") == [sid] and summary.ran("qc") == [sid]
    _, g = _session(store, "grid_two_faces")
    fixed = dict(g["align"].attrs)
    assert fixed["role_assumed"] is False
    assert fixed["roles"][client] == "client" and fixed["roles"][counsellor] == "counsellor"
