"""Client and counsellor roles (:mod:`ether_prep.align.roles`): metadata, speaker tracks, heuristics."""

from __future__ import annotations

import pytest

from ether_prep.align.linking import parse_speaker_tracks
from ether_prep.align.roles import assign_roles
from ether_prep.errors import ConfigError


def test_roles_from_metadata_tracks_and_heuristics() -> None:
    speakers = ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    talk = {"SPEAKER_00": 10.0, "SPEAKER_01": 40.0, "SPEAKER_02": 1.0}
    first = ["SPEAKER_00", "SPEAKER_01", "SPEAKER_02"]
    roles, assumed, source = assign_roles(speakers, talk, first, {}, {}, "most_talk_is_client", "s")
    assert roles == {"SPEAKER_00": "counsellor", "SPEAKER_01": "client", "SPEAKER_02": "other"}
    assert assumed and source == "most_talk_is_client"
    roles, assumed, _ = assign_roles(speakers, talk, first, {}, {}, "first_speaker_is_counsellor", "s")
    assert roles["SPEAKER_00"] == "counsellor" and roles["SPEAKER_01"] == "client" and assumed
    meta = {"client": "track:1", "counsellor": "SPEAKER_02"}
    roles, assumed, source = assign_roles(speakers, talk, first, meta, {1: "SPEAKER_00"}, "none", "s")
    assert roles == {"SPEAKER_00": "client", "SPEAKER_01": "other", "SPEAKER_02": "counsellor"}
    assert not assumed and source == "metadata"
    assert parse_speaker_tracks("SPEAKER_00=1; SPEAKER_01=-", "s") == {"SPEAKER_00": 1, "SPEAKER_01": None}
    with pytest.raises(ConfigError, match="SPEAKER_00=1"):
        parse_speaker_tracks("SPEAKER_00", "s")
