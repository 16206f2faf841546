"""Issue 12, de-identified sharing: e-mail addresses, phone numbers, URLs and listed names in transcripts become
tags; face exports leave out boxes, landmarks and identity columns; file names and ids lose the recording's
name. Checked on constructed text and on a store written through the store API."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ether_prep.cli import app
from ether_prep.deidentify import Deidentifier, face_column_shared, read_names
from ether_prep.errors import ConfigError
from ether_prep.store import Store, write_array, write_table

SID = "clinic__Jane_Doe_intake-1a2b3c4d"  # a session id built from a file name that names the client
ALIAS = "session-1a2b3c4d"


@pytest.fixture(scope="module")
def deid() -> Deidentifier:
    return Deidentifier(["Jane Doe", "Jane", "Okonkwo"])


@pytest.mark.parametrize(("text", "expected"), [
    ("write to jane.doe@example.org today", "write to [EMAIL] today"),
    ("my address is J_Smith+notes@mail.clinic-example.co.uk.", "my address is [EMAIL]."),
    ("call 415-555-0199 or (415) 555-0123", "call [PHONE] or [PHONE]"),
    ("the UK line is +44 20 7946 0958, or 020 7946 0958", "the UK line is [PHONE], or [PHONE]"),
    ("see https://www.nhs.uk/mental-health/ and www.mind.org.uk.", "see [URL] and [URL]."),
    ("visit clinic-example.org/booking, ok?", "visit [URL], ok?"),
    ("it is jane dot doe at example dot org", "it is [EMAIL]"),  # as speech recognisers write it
    ("Jane Doe said Jane's mother, Mrs Okonkwo, called", "[NAME] said [NAME]'s mother, Mrs [NAME], called"),
    ("JANE came; Janet did not", "[NAME] came; Janet did not"),  # whole words, any case
    ("I will be fine, it was 2 weeks ago at 3 pm", "I will be fine, it was 2 weeks ago at 3 pm"),
])
def test_each_kind_of_identifier_becomes_its_tag(deid: Deidentifier, text: str, expected: str) -> None:
    assert deid.text(text) == expected


def test_words_spoken_apart_are_each_tagged_and_keep_their_place(deid: Deidentifier) -> None:
    words = ["my", "number", "is", "415", "555", "0199", "says", "Jane", "Doe"]
    assert deid.words(words) == ["my", "number", "is", "[PHONE]", "[PHONE]", "[PHONE]", "says", "[NAME]", "[NAME]"]


def test_names_file(tmp_path: Path) -> None:
    path = tmp_path / "names.txt"
    path.write_text("# the client\nJane Doe\n\n  Okonkwo  \n", encoding="utf-8")
    assert read_names(path) == ["Jane Doe", "Okonkwo"]
    with pytest.raises(ConfigError, match="cannot read the names list"):
        read_names(tmp_path / "missing.txt")


def test_face_columns_that_identify_are_withheld() -> None:
    assert not any(face_column_shared(c) for c in ("x0", "y0", "x1", "y1", "box", "landmarks", "identity",
                                                     "identity_embedding", "embedding_512", "FaceRectX",
                                                     "FaceRectWidth", "x_0", "y_67", "Identity_1"))
    assert all(face_column_shared(c) for c in ("frame", "time", "track", "person", "AU12", "AU45_r", "happiness",
                                               "Yaw", "pose_Rx", "mouth_open", "FaceScore"))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with one session's transcript, turns and faces, written through the store API."""
    path = tmp_path_factory.mktemp("deid") / "s.zarr"
    group = Store(path).session(SID, info={"id": SID, "relpath": "clinic/Jane Doe intake.mp4", "kind": "video"})
    words = ["Hello", "Jane", "Doe", "my", "email", "is", "jane.doe@example.org", "call", "415", "555", "0199", "ok"]
    out = group.begin_stage("utterances", {"stage": "utterances"})
    starts = np.arange(len(words), dtype=np.float64) * 0.5
    write_table(out, "words", {"text": np.array(words), "start": starts, "end": starts + 0.4,
                               "score": np.ones(len(words)), "speaker": np.array(["SPEAKER_00"] * len(words)),
                               "interpolated": np.zeros(len(words), bool), "channel": np.full(len(words), -1)})
    write_table(out, "utterances", {"id": np.array([f"{SID}/u00000", f"{SID}/u00001"]),
                                    "start": np.array([0.0, 4.0]), "end": np.array([3.9, 5.9]),
                                    "speaker": np.array(["SPEAKER_00", "SPEAKER_01"]),
                                    "text": np.array([" ".join(words[:8]), " ".join(words[8:])]),
                                    "word_start": np.array([0, 8]), "word_end": np.array([8, 12]),
                                    "score": np.ones(2)})
    group.finish_stage("utterances", "done", "fp")
    out = group.begin_stage("diarize", {"stage": "diarize"})
    write_table(out, "turns", {"start": np.array([0.0]), "end": np.array([6.9]), "speaker": np.array(["SPEAKER_00"])})
    group.finish_stage("diarize", "done", "fp")
    out = group.begin_stage("face", {"stage": "face"})
    n, rng = 4, np.random.default_rng(0)
    write_array(out, "time", np.arange(n) * 0.04)
    write_array(out, "au", rng.random((n, 1, 2), dtype=np.float32), attrs={"names": ["AU01", "AU12"]},
                dims=("time", "track", "au_name"))
    write_array(out, "emotion", rng.random((n, 1, 2), dtype=np.float32), attrs={"names": ["happiness", "neutral"]},
                dims=("time", "track", "emotion_name"))
    write_array(out, "pose", rng.random((n, 1, 3), dtype=np.float32), dims=("time", "track", "angle"))
    write_array(out, "box", np.tile(np.array([10, 20, 110, 140], np.float32), (n, 1, 1)),
                dims=("time", "track", "box_edge"))
    write_array(out, "score", np.ones((n, 1), np.float32), dims=("time", "track"))
    write_array(out, "mouth_open", rng.random((n, 1), dtype=np.float32), dims=("time", "track"))
    write_array(out, "landmarks", rng.random((n, 1, 478, 3), dtype=np.float32),
                dims=("time", "track", "landmark", "xyz"))
    group.finish_stage("face", "done", "fp")
    return path


def _export(store: Path, dest: Path, fmt: str, *extra: str) -> Path:
    res = CliRunner().invoke(app, ["export", str(dest), "--out", str(store), "--format", fmt, *extra])
    assert res.exit_code == 0, res.output
    (path,) = [p for p in dest.iterdir() if p.suffix != ".uem"]  # rttm comes with its scored extent
    return path


def test_deidentified_transcript_exports(store: Path, tmp_path: Path) -> None:
    names = tmp_path / "names.txt"
    names.write_text("Jane Doe\n")
    for fmt in ("json", "srt", "vtt", "txt", "tsv", "rttm"):
        plain = _export(store, tmp_path / f"plain_{fmt}", fmt).read_text()
        path = _export(store, tmp_path / fmt, fmt, "--deidentify", "--names", str(names))
        text = "".join(p.read_text() for p in (tmp_path / fmt).iterdir())  # the .uem beside an .rttm too
        assert path.name == f"{ALIAS}.{fmt}" and "Jane" not in path.name
        assert "Jane" in plain or fmt == "rttm"
        for leak in ("Jane", "Doe", "jane.doe@example.org", "415", "0199"):
            assert leak not in text, (fmt, leak)
        if fmt != "rttm":
            assert "[NAME]" in text and "[EMAIL]" in text and "[PHONE]" in text
    doc = json.loads((tmp_path / "json" / f"{ALIAS}.json").read_text())
    assert doc["session"] == doc["uri"] == ALIAS and doc["segments"][0]["id"] == f"{ALIAS}/u00000"
    assert [w["word"] for w in doc["word_segments"]][:3] == ["Hello", "[NAME]", "[NAME]"]
    assert [w["start"] for w in doc["word_segments"]] == [i * 0.5 for i in range(12)]  # times untouched
    assert doc["deidentified"]["names_listed"] == 1


def test_deidentified_face_export_leaves_out_boxes(store: Path, tmp_path: Path) -> None:
    plain = list(csv.reader(_export(store, tmp_path / "plain", "faces").open()))
    shared = list(csv.reader(_export(store, tmp_path / "shared", "faces", "--deidentify").open()))
    withheld = {"FaceRectX", "FaceRectY", "FaceRectWidth", "FaceRectHeight", *(f"{a}_{i}" for a in "xy"
                                                                             for i in range(68))}
    assert withheld <= set(plain[0])
    assert shared[0] == [c for c in plain[0] if c not in withheld]
    keep = [plain[0].index(c) for c in shared[0]]
    assert [[row[i] for i in keep] for row in plain[1:]] == shared[1:]  # the same features, row for row
    assert (tmp_path / "shared" / f"{ALIAS}.faces.csv").exists()


def test_names_without_deidentify_is_refused(store: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--out", str(store), "--names", "n.txt"])
    assert res.exit_code == 2 and "--names only applies with --deidentify" in res.output
