"""End to end on media built like real sessions: an edited two-person dialogue (hard cuts, each shot
showing whoever talks), a recording whose speech is replaced by noise, and a talking speaker who is never on
screen. One real cpu pipeline run (extract, align, qc) over all three; each test checks what it stored."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import zarr

from ..conftest import ROOT, pipeline
from ..media import GRID_A, GRID_B, edited_dialogue

pytestmark = pytest.mark.slow

# Whole spoken parts of each GRID clip (speech ~0.46-2.51 s in A, ~0.68-2.51 s in B), twice each: A, B, A, B.
TURNS = ((GRID_A, 8, 66), (GRID_B, 14, 66), (GRID_A, 8, 66), (GRID_B, 14, 66))


def _faceless(dst: Path) -> None:
    """A GRID speaker's voice over a picture without anyone in it (a grey card): the speaker is never seen."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", "color=c=gray:s=360x288:r=25:d=3",
                    "-i", str(GRID_A), "-map", "0:v", "-map", "1:a", "-shortest", "-c:v", "libx264",
                    "-preset", "veryfast", "-c:a", "aac", str(dst)], check=True)


def _noise(dst: Path) -> None:
    """The dialogue's length of pink noise where the speech was: nothing anyone said."""
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i",
                    "anoisesrc=color=pink:amplitude=0.3:duration=9:sample_rate=16000", str(dst)], check=True)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from ether_prep.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("dialogue")
    raw = tmp / "raw"
    raw.mkdir()
    edit = edited_dialogue(raw / "dialogue.mp4", TURNS)
    _faceless(raw / "faceless.mp4")
    _noise(raw / "noise.wav")
    store = tmp / "store.zarr"
    summary = run_pipeline(pipeline("cpu"), raw, store, family=None)
    assert summary.ok, summary.report()
    root = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)
    groups = {sid.split("-")[0]: root["sessions"][sid] for sid in root["sessions"].group_keys()}
    return {"edit": edit, "groups": groups, "store": store}


def _table(g: zarr.Group, path: str) -> dict[str, np.ndarray]:
    """The table at ``stage/name`` of a session group."""
    from ether_prep.store import read_table

    stage, name = path.split("/")
    return read_table(g[stage], name)


def _speaker_of_turns(g: zarr.Group, turns: list[dict]) -> list[str]:
    """The diarized speaker talking most inside each turn's window."""
    words = _table(g, "utterances/words")
    out = []
    for t in turns:
        inside = (words["start"] >= t["start"]) & (words["end"] <= t["end"])
        labels, counts = np.unique(words["speaker"][inside], return_counts=True)
        out.append(str(labels[np.argmax(counts)]) if counts.size else "")
    return out


def test_two_persons_each_linked_to_their_own_speaker(run: dict) -> None:
    g, turns = run["groups"]["dialogue"], run["edit"]["turns"]
    person = np.asarray(g["face/person"][...])
    assert len(set(person.tolist())) == 2
    # every frame with a face carries the person of the speaker on screen
    times = g["face/time"][...]
    present = np.isfinite(g["face/score"][...])
    for t in turns:
        inside = (times >= t["start"] + 1e-6) & (times < t["end"] - 1e-6)
        seen = {int(person[k]) for f in np.flatnonzero(inside) for k in np.flatnonzero(present[f])}
        assert len(seen) == 1, (t, seen)
        t["seen_person"] = seen.pop()
    assert turns[0]["seen_person"] == turns[2]["seen_person"] != turns[1]["seen_person"] == turns[3]["seen_person"]
    # each person is linked to the speaker whose turns show them, with confidence
    spoken = _speaker_of_turns(g, turns)
    assert spoken[0] == spoken[2] != spoken[1] == spoken[3]
    links = _table(g, "align/links")
    linked = {int(p): (str(s), float(c)) for p, s, c in zip(links["person"], links["speaker"], links["confidence"],
                                                            strict=True)}
    for t, spk in zip(turns, spoken, strict=True):
        assert linked[t["seen_person"]][0] == spk and linked[t["seen_person"]][1] > 0.5
    assert (links["screen_corr"] > links["mouth_corr"]).all()  # the edit, not the mouths, tells who is who


def test_no_utterance_shows_the_other_persons_face_as_the_speaker(run: dict) -> None:
    g = run["groups"]["dialogue"]
    links = _table(g, "align/links")
    person_of = {str(s): int(p) for p, s in zip(links["person"], links["speaker"], strict=True) if s}
    utts = _table(g, "align/utterances")
    assert len(utts["id"]) >= 4
    for spk, sp, lp in zip(utts["speaker"], utts["speaker_person"], utts["listener_person"], strict=True):
        assert sp == person_of[str(spk)] and lp != sp
    # the listener is off screen whenever the speaker is shown: its tensor steps are masked there
    mask = g["align/tensors/mask"][...]
    both = mask[:, 0] & mask[:, 1]
    assert both.mean() < 0.05 and mask[:, 0].mean() > 0.6


def test_quality_check_passes_the_dialogue(run: dict) -> None:
    qc = dict(run["groups"]["dialogue"]["qc"].attrs)
    assert qc["metrics"]["speech_coverage"] >= 0.95
    assert qc["metrics"]["speakers_with_face"] == 1.0 and qc["metrics"]["persons"] == 2
    assert not qc["needs_review"], qc["reasons"]


def test_quality_check_flags_noise_and_a_faceless_speaker(run: dict) -> None:
    noise = dict(run["groups"]["noise"]["qc"].attrs)
    assert noise["needs_review"]
    assert any(r.split(":")[0] in ("speech_found", "speech_coverage", "words_per_minute_low")
               for r in noise["reasons"]), noise["reasons"]
    faceless = dict(run["groups"]["faceless"]["qc"].attrs)
    assert faceless["needs_review"]
    checks = {r.split(":")[0] for r in faceless["reasons"]}
    assert {"speakers_with_face", "speaker_face_share"} <= checks, faceless["reasons"]
    status = subprocess.run(["uv", "run", "ether-prep", "status", "--out", str(run["store"])], capture_output=True,
                            text=True, cwd=ROOT, check=True).stdout
    assert "need review" in status and "faceless" in status and "needs review: speakers_with_face" in status


def test_the_flag_reaches_both_manifests(run: dict) -> None:
    import pyarrow.parquet as pq

    sessions = pq.read_table(run["store"] / "sessions.parquet").to_pylist()
    flagged = {r["session_id"].split("-")[0]: r for r in sessions}
    assert set(flagged) == {"dialogue", "faceless", "noise"}
    assert not flagged["dialogue"]["needs_review"] and flagged["faceless"]["needs_review"]
    assert flagged["noise"]["needs_review"]
    reasons = {r.split(":")[0] for r in flagged["faceless"]["review_reasons"]}
    assert {"speakers_with_face", "speaker_face_share"} <= reasons, flagged["faceless"]["review_reasons"]
    # Every utterance row carries its session's flag, so a training loop can drop flagged sessions by row.
    utterances = pq.read_table(run["store"] / "utterances.parquet").to_pylist()
    by_session = {}
    for u in utterances:
        by_session.setdefault(u["session_id"].split("-")[0], set()).add((u["needs_review"],
                                                                        tuple(u["review_reasons"] or ())))
    assert by_session["dialogue"] == {(False, ())}
    assert by_session["faceless"] == {(True, tuple(flagged["faceless"]["review_reasons"]))}
