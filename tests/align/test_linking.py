"""Faces to speakers (:mod:`ether_prep.align.linking`): mouth movement, and links by mouth, by screen time
and by seat."""

from __future__ import annotations

import json

import numpy as np

from ether_prep.align.linking import link_persons, mouth_movement, speech_activity

from ..conftest import DATA

GRID_JSON = json.loads((DATA / "video" / "grid_two_faces_side_by_side.json").read_text())
FPS = 25.0


def _grid_turns() -> list[tuple[float, float]]:
    """The two speech spans of the side-by-side clip (left person, then right), from its reference."""
    return [tuple(t["speech_approx"]) for t in GRID_JSON["turns"]]


def _talking_mouth(times: np.ndarray, spans: list[tuple[float, float]], rest: float = 0.05) -> np.ndarray:
    """Lip aperture of a talking face: ~4 Hz syllable opening within the spans, still elsewhere."""
    m = np.full(times.size, rest)
    for a, b in spans:
        sel = (times >= a) & (times <= b)
        m[sel] = rest + 0.3 * np.abs(np.sin(2 * np.pi * 2.0 * (times[sel] - a)))
    return m


def test_mouth_movement_is_high_while_talking_and_nan_without_face() -> None:
    times = np.arange(150) / FPS
    (a, b), _ = _grid_turns()
    sig = np.stack([_talking_mouth(times, [(a, b)]), np.full(150, 0.4)], axis=1)
    sig[100:110, 1] = np.nan
    move = mouth_movement(sig, times, 0.5)
    talking = (times > a + 0.3) & (times < b - 0.3)
    assert move[talking, 0].mean() > 0.05
    assert np.nanmax(move[:, 1]) < 1e-6  # a still face, however open, does not move
    assert np.isnan(move[100:110, 1]).all()


def test_link_persons_side_by_side_turns_with_confidence() -> None:
    """Left face talks during the first reference span, right during the second (the real clip's timing)."""
    times = np.arange(150) / FPS
    left, right = _grid_turns()
    mouth = np.stack([_talking_mouth(times, [left]), _talking_mouth(times, [right])], axis=1)
    # speakers listed in the opposite order to the tracks, and a third speaker who is off screen
    speakers = ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    starts, ends = np.array([right[0], left[0], 8.0]), np.array([right[1], left[1], 9.0])
    act = speech_activity(speakers, speakers, starts, ends, times)
    links, corr = link_persons(mouth_movement(mouth, times), act, speakers, [0, 1])
    assert [lk.speaker for lk in links] == ["SPEAKER_01", "SPEAKER_00"]
    for lk in links:
        assert 0.5 < lk.confidence <= 1.0 and lk.corr > 0.5 and lk.margin > 0.5
    assert corr.shape == (2, 3)


def test_link_persons_leaves_silent_faces_unlinked_and_flags_ambiguity() -> None:
    times = np.arange(150) / FPS
    left, right = _grid_turns()
    talk = _talking_mouth(times, [left, right])
    still = np.full(150, 0.2)
    act = speech_activity(["A"], ["A", "A"], np.array([left[0], right[0]]), np.array([left[1], right[1]]), times)
    links, _ = link_persons(mouth_movement(np.stack([still, talk], 1), times), act, ["A"], [7, 9])
    assert links[0].speaker == "" and links[1].speaker == "A" and links[0].person == 7
    # two faces moving identically: the match is a coin toss, and the confidence says so
    links, _ = link_persons(mouth_movement(np.stack([talk, talk], 1), times), act, ["A"], [0, 1])
    assert max(lk.confidence for lk in links) < 0.01
    # too few frames with a face: no link
    few = np.stack([talk], 1).copy()
    few[8:] = np.nan
    links, _ = link_persons(mouth_movement(few, times), act, ["A"], [0], min_frames=10)
    assert links[0].speaker == ""


def test_link_persons_joins_fragments_of_one_face() -> None:
    """A face hidden for a second comes back as a new track in the same place: both are the speaker's."""
    times = np.arange(75) / FPS
    talk = _talking_mouth(times, [(0.5, 2.5)])
    frag = np.full((75, 3), np.nan)
    frag[:25, 0] = talk[:25]  # before the face was hidden
    frag[50:, 1] = talk[50:]  # after: a new track
    frag[:, 2] = 0.1  # someone else, still, on screen all along
    boxes = np.array([[100, 50, 200, 180], [104, 52, 203, 182], [400, 50, 500, 180]], dtype=float)
    act = speech_activity(["A"], ["A"], np.array([0.5]), np.array([2.5]), times)
    links, _ = link_persons(mouth_movement(frag, times), act, ["A"], [0, 1, 2], min_frames=10, boxes=boxes)
    assert [lk.speaker for lk in links] == ["A", "A", ""]
    assert 0 < links[0].confidence <= links[1].confidence  # the seat link inherits the primary's confidence


def test_link_persons_by_screen_time_when_the_edit_shows_whoever_talks() -> None:
    """Edited dialogue: each shot shows the person talking, so every visible mouth moves and only screen time
    tells who is who (the failure of mouth-only linking on TV-style editing)."""
    times = np.arange(400) / FPS  # 16 s
    turns = [(0.0, 3.9, "A"), (4.0, 7.9, "B"), (8.0, 11.9, "A"), (12.0, 16.0, "B")]
    movement = np.full((400, 2), np.nan)
    for a, b, who in turns:
        on = (times >= a) & (times < b)
        movement[on, 0 if who == "A" else 1] = mouth_movement(_talking_mouth(times, [(a, b)]), times)[on, 0]
    speakers = ["SPEAKER_00", "SPEAKER_01"]  # SPEAKER_00 is B, SPEAKER_01 is A
    spk = ["SPEAKER_01" if who == "A" else "SPEAKER_00" for _, _, who in turns]
    act = speech_activity(speakers, spk, np.array([t[0] + 0.2 for t in turns]), np.array([t[1] - 0.2 for t in turns]),
                          times)
    links, _ = link_persons(movement, act, speakers, [0, 1])
    assert [lk.speaker for lk in links] == ["SPEAKER_01", "SPEAKER_00"]
    for lk in links:
        assert lk.screen_corr > 0.8 and abs(lk.mouth_corr) < lk.screen_corr and lk.confidence > 0.8
