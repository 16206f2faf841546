"""Recordings found in a raw folder: stable, file-system-safe session ids, recursive typed discovery, and a
``sessions.csv`` that attaches roles and notes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ether_prep.errors import ConfigError
from ether_prep.sessions import discover_sessions, session_id


def test_session_ids_are_stable_and_safe() -> None:
    a = session_id("clinic Zürich/week 1/séance à deux.mpg")
    assert a == session_id("clinic Zürich/week 1/séance à deux.mpg")
    assert a.startswith("clinic_Zurich__week_1__seance_a_deux-")
    assert a.isascii() and "/" not in a
    assert session_id("a.mp4") != session_id("a.wav")


def test_discovery_is_recursive_and_typed(raw_dir: Path) -> None:
    sessions = {s.relpath: s for s in discover_sessions(raw_dir)}
    assert set(sessions) == {"clinic Zürich/single_face.mp4", "clinic Zürich/week 1/client.wav",
                             "clinic Zürich/week 1/séance à deux.mpg", "jfk.flac", "notes.mp4", "truncated.mp4"}
    assert sessions["jfk.flac"].kind == "audio"
    assert sessions["clinic Zürich/week 1/séance à deux.mpg"].kind == "video"


def test_sessions_csv_attaches_roles_and_notes(raw_dir: Path, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(raw_dir / "clinic Zürich" / "week 1", raw)
    (raw / "sessions.csv").write_text("file,client,counsellor,notes\nclient.wav,SPEAKER_01,SPEAKER_00,intake\n")
    sessions = {s.relpath: s for s in discover_sessions(raw)}
    assert sessions["client.wav"].meta == {"client": "SPEAKER_01", "counsellor": "SPEAKER_00", "notes": "intake"}
    assert sessions["séance à deux.mpg"].meta == {}
    (raw / "sessions.csv").write_text("name,client\nclient.wav,A\n")
    with pytest.raises(ConfigError, match="needs a 'file' column"):
        discover_sessions(raw)
