"""De-identified sharing: e-mail addresses, phone numbers, URLs and listed names in transcripts become
tags; face exports leave out boxes, landmarks and identity columns; file names and ids lose the recording's
name. Checked on constructed text and on a store written through the store API."""

from __future__ import annotations

import csv
import hashlib
import hmac
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from ether_prep.cli import app
from ether_prep.deidentify import (
    KEY_ENV,
    KEY_FILE,
    Deidentifier,
    IdAliases,
    deid_key,
    face_column_shared,
    read_names,
)
from ether_prep.errors import ConfigError
from ether_prep.store import Store, write_array, write_table

SID = "clinic__Jane_Doe_intake-1a2b3c4d"  # a session id built from a file name that names the client


def _alias(store: Path, sid: str = SID) -> str:
    """The session's alias, keyed with the store's own key (made by the first de-identified export)."""
    return Deidentifier(key=deid_key(store)).alias(sid)


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
        assert path.name == f"{_alias(store)}.{fmt}" and "Jane" not in path.name
        assert "Jane" in plain or fmt == "rttm"
        for leak in ("Jane", "Doe", "jane.doe@example.org", "415", "0199"):
            assert leak not in text, (fmt, leak)
        if fmt != "rttm":
            assert "[NAME]" in text and "[EMAIL]" in text and "[PHONE]" in text
    alias = _alias(store)
    doc = json.loads((tmp_path / "json" / f"{alias}.json").read_text())
    assert doc["session"] == doc["uri"] == alias and doc["segments"][0]["id"] == f"{alias}/u00000"
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
    source = shared[0].index("input")  # the recording py-feat's `input` names: its alias when shared
    assert {row[plain[0].index("input")] for row in plain[1:]} == {"clinic/Jane Doe intake.mp4"}
    assert {row[source] for row in shared[1:]} == {_alias(store)}
    assert [[row[i] for i in keep if i != plain[0].index("input")] for row in plain[1:]] == \
        [row[:source] + row[source + 1:] for row in shared[1:]]  # the same features, row for row
    assert (tmp_path / "shared" / f"{_alias(store)}.faces.csv").exists()


def test_names_without_deidentify_is_refused(store: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--out", str(store), "--names", "n.txt"])
    assert res.exit_code == 2 and "--names only applies with --deidentify" in res.output


# ------------------------------------------------------------------ keyed aliases, spaced addresses
@pytest.mark.parametrize(("text", "expected"), [
    ("write to john at clinic .co .uk today", "write to [EMAIL] today"),  # the ASR's own spacing
    ("it is jane at email .com", "it is [EMAIL]"),
    ("john at gmail . com", "[EMAIL]"),
    ("mail j dot smith at clinic-example .co .uk now", "mail [EMAIL] now"),
    ("jane underscore doe at nhs .net", "[EMAIL]"),
    ("jane.doe @ example .org", "[EMAIL]"),
    ("reach us at email .com", "reach [EMAIL]"),
    ("at email .com", "at [URL]"),
    ("see clinic .co .uk for more", "see [URL] for more"),
    ("go to www . clinic . org", "go to [URL]"),
    ("the nhs dot net pages", "the [URL] pages"),
    ("I am fine. It was good. Co-workers helped", "I am fine. It was good. Co-workers helped"),  # full stops
])
def test_spaced_addresses_as_speech_recognisers_write_them(deid: Deidentifier, text: str, expected: str) -> None:
    assert deid.text(text) == expected


def test_spaced_address_words_are_each_tagged(deid: Deidentifier) -> None:
    words = ["email", "john", "at", "clinic", ".co", ".uk", "now"]
    assert deid.words(words) == ["email", *["[EMAIL]"] * 5, "now"]
    words = ["see", "clinic", ".co", ".uk", "please"]
    assert deid.words(words) == ["see", "[URL]", "[URL]", "[URL]", "please"]


RELPATH = "clinic/Jane Doe intake.mp4"  # the store fixture's recording


def _guesses(sid: str, relpath: str) -> list[str]:
    """Hex digests an attacker who guessed the file name computes: plain hashes and HMACs with an empty key of
    the path, its file name, its stem and the session id."""
    stem = Path(relpath).stem
    out = []
    for text in (relpath, Path(relpath).name, stem, sid, sid.rsplit("-", 1)[0]):
        raw = text.encode("utf-8")
        out += [hashlib.new(a, raw).hexdigest() for a in ("md5", "sha1", "sha224", "sha256", "sha512", "blake2b")]
        out += [hmac.new(b"", raw, a).hexdigest() for a in ("md5", "sha1", "sha256", "sha512")]
    return out


def test_the_alias_cannot_be_recomputed_without_the_key(store: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    key = deid_key(store)
    path = store / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) == 32
    assert deid_key(store) == key  # read back, never made twice
    alias = Deidentifier(key=key).alias(SID)
    digest = alias.removeprefix("session-")
    assert len(digest) == 16 and digest == hmac.new(key, SID.encode(), hashlib.sha256).hexdigest()[:16]
    assert not any(digest in g for g in _guesses(SID, RELPATH))
    assert digest != SID.rsplit("-", 1)[-1]  # the old alias: the 8 hex of the session id's unsalted SHA-1
    # The same alias in another process (and so in every later run and export)
    code = ("import sys; from ether_prep.deidentify import Deidentifier, deid_key; "
            "print(Deidentifier(key=deid_key(sys.argv[1])).alias(sys.argv[2]))")
    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    again = subprocess.run([sys.executable, "-c", code, str(store), SID], capture_output=True, text=True, env=env,
                           check=True).stdout.strip()
    assert again == alias
    # Another store has another key, so another alias for the same recording
    other = store.parent / "other.zarr"
    other.mkdir(exist_ok=True)
    assert Deidentifier(key=deid_key(other)).alias(SID) != alias
    # A key given by the user wins, and must not be guessable
    monkeypatch.setenv(KEY_ENV, "correct horse battery staple")
    given = Deidentifier(key=deid_key(store)).alias(SID)
    assert given != alias and given == Deidentifier(key=b"correct horse battery staple").alias(SID)
    monkeypatch.setenv(KEY_ENV, "short")
    with pytest.raises(ConfigError, match="16 or more"):
        deid_key(store)


def test_aliases_need_a_key() -> None:
    with pytest.raises(ConfigError, match="no de-identification key"):
        Deidentifier().alias(SID)


def test_a_key_file_others_can_read_or_a_link_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    folder = tmp_path / "s.zarr"
    folder.mkdir()
    key = deid_key(folder)
    path = folder / KEY_FILE
    path.chmod(0o644)
    with pytest.raises(ConfigError, match=r"readable by others.*chmod 600"):
        deid_key(folder)
    path.chmod(0o600)
    assert deid_key(folder) == key
    planted = tmp_path / "planted"
    planted.write_text("00" * 32 + "\n")
    planted.chmod(0o600)
    path.unlink()
    path.symlink_to(planted)  # a planted link: neither followed to read a key nor to write one
    with pytest.raises(ConfigError, match="not a link"):
        deid_key(folder)
    assert planted.read_text() == "00" * 32 + "\n"


def test_exports_use_the_key_given(store: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["export", str(tmp_path), "--out", str(store), "--format", "txt", "--deidentify"],
                             env={KEY_ENV: "a key the user keeps elsewhere"})
    assert res.exit_code == 0, res.output
    alias = Deidentifier(key=b"a key the user keeps elsewhere").alias(SID)
    assert [p.name for p in tmp_path.iterdir()] == [f"{alias}.txt"]


def test_ids_and_paths_are_aliased_whole(store: Path) -> None:
    """Ids, paths and file names become the alias wherever they sit in an id or path, in strings, lists and
    arrays; a file named after a role ("client.wav") leaves the role alone."""
    import numpy as np

    deid = Deidentifier(key=b"k" * 32)
    sid2 = "client-0f0f0f0f"
    ids = IdAliases(deid, [(SID, RELPATH), (sid2, "client.wav")])
    a, b = deid.alias(SID), deid.alias(sid2)
    assert ids(f"sessions/{SID}/align") == f"sessions/{a}/align" and ids(f"{SID}/p00001") == f"{a}/p00001"
    assert ids(RELPATH) == a and ids("Jane Doe intake.mp4") == a and ids("client.wav") == b
    assert ids("client") == "client" and ids(None) is None and ids(3) == 3
    nested = np.empty(2, dtype=object)
    nested[:] = [np.array([f"{SID}/u00000", f"{SID}/u00001"], dtype=object), np.array([f"{sid2}/u00000"])]
    out = ids(nested)
    assert [list(x) for x in out] == [[f"{a}/u00000", f"{a}/u00001"], [f"{b}/u00000"]]
    assert ids([SID, (sid2,)]) == [a, (b,)] and ids.real == {a: SID, b: sid2}


def _strings(value: Any, keys: bool = True) -> list[str]:
    """Every string inside ``value`` (dicts, lists, arrays, DataFrames); with ``keys``, dict keys and column
    names too."""
    import numpy as np

    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*(_strings(k) if keys else []), *_strings(v, keys))]
    if hasattr(value, "to_dict") and hasattr(value, "columns"):  # a DataFrame
        return [*(map(str, value.columns) if keys else []),
                *(s for c in value.columns for s in _strings(list(value[c]), keys))]
    if isinstance(value, np.ndarray):
        return _strings(value.tolist(), keys) if value.dtype.kind in "OUS" else []
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v, keys)]
    return []


def test_a_deidentified_store_carries_no_file_name(aligned: dict[str, object]) -> None:
    """Items, manifests and DataFrames of ``open_store(deidentify=True)`` hold aliases where the ids and paths
    built from file names were; the tensors are the same."""
    import ether_prep

    key = "a key for this test only, not the store's"
    plain = ether_prep.open_store(aligned["store"])
    shared = ether_prep.open_store(aligned["store"], deidentify=True, key=key)
    assert not (Path(aligned["store"]) / KEY_FILE).exists()  # a key given is not written down
    sessions = plain.to_pandas("sessions")
    relpaths = dict(zip(sessions["session_id"], sessions["relpath"], strict=True))
    assert len(relpaths) >= 2
    names = Deidentifier(key=key.encode())
    assert shared.sessions() == sorted(names.alias(s) for s in relpaths)
    # Full ids, paths and file names appear nowhere; stems and slugs nowhere outside the transcript's words
    anywhere = {*relpaths, *relpaths.values(), *(Path(r).name for r in relpaths.values())}
    in_ids = {*anywhere, *(Path(r).stem for r in relpaths.values()), *(s.rsplit("-", 1)[0] for s in relpaths)}
    utts = shared.utterances(with_words=True)
    pairs = shared.pairs()
    assert len(utts) == len(plain.utterances()) > 0 and len(pairs) > 0
    items = [utts[i] for i in range(len(utts))] + [pairs[i] for i in range(len(pairs))]
    texts = {"text", "client_text", "counsellor_text", "words", "distress_word"}
    found = [*_strings(shared.manifest), *_strings(shared.pair_manifest), *_strings(items),
             *(s for w in ("utterances", "pairs", "sessions") for s in _strings(shared.to_pandas(w)))]
    without_texts = [*_strings({k: v for k, v in shared.manifest.items() if k not in texts}, keys=False),
                     *_strings([{k: v for k, v in it.items() if k not in texts} for it in items], keys=False)]
    assert len(found) > 500  # the scan saw every id, path and text
    assert not [(s, n) for s in found for n in anywhere if n in s]
    assert not [(s, n) for s in without_texts for n in in_ids if n in s]
    # Each item is the same utterance with the same tensors; filters take real ids and aliases alike
    first = plain.utterances()[0]
    same = shared.utterances(session=first["session_id"])[0]
    assert same["session_id"] == names.alias(first["session_id"])
    assert same["utterance_id"] == first["utterance_id"].replace(first["session_id"], same["session_id"])
    assert (same["speaker_face"] == first["speaker_face"]).all() and same["start"] == first["start"]
    assert len(shared.utterances(session=same["session_id"])) == len(plain.utterances(session=first["session_id"]))
    assert len(shared.utterances(ids=[first["utterance_id"]])) == 1
    assert shared.to_pandas("sessions")["relpath"].tolist() == [names.alias(s) for s in sessions["session_id"]]
