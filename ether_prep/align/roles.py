"""Roles: which diarized speaker is the client and which the counsellor, and who listens to whom.

Per-session metadata (``sessions.csv`` beside the recordings, or the file named by ``roles_file``) may hold,
besides ``file``:

- ``client``, ``counsellor``: a diarized speaker label (``SPEAKER_01``) or a face track (``track:1``);
- ``speaker_tracks``: ``SPEAKER_00=1;SPEAKER_01=0`` fixes speaker-to-track links by hand (see
  :mod:`ether_prep.align.linking`).

Without roles, a heuristic decides and the roles are marked *assumed*: ``most_talk_is_client`` (the speaker
with the most speech is the client, the next one the counsellor: in counselling the client usually talks
most), ``first_speaker_is_counsellor`` (the counsellor opens the session), or ``none`` (every role
``unknown``; no dialogue pairs). Other speakers get the role ``other``. The listener of an utterance is the
other main participant (client <-> counsellor); for ``other`` speakers, the client; with unknown roles, the
speaker who talks most among the others.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, StageError
from ..records import Session
from ..sessions import read_metadata_csv

__all__ = ["HEURISTICS", "ROLE_KEYS", "assign_roles", "listener_of", "session_meta"]

HEURISTICS = ("most_talk_is_client", "first_speaker_is_counsellor", "none")
# The metadata columns that change align's output (they enter its fingerprint); notes do not.
ROLE_KEYS = ("client", "counsellor", "speaker_tracks")


def session_meta(session: Session, roles_file: str) -> dict[str, str]:
    """Session metadata: the ``sessions.csv`` row, overridden by the row of ``roles_file`` if given.

    ``roles_file`` is absolute or relative to the recording's folder; its rows match the recording by file
    name or by its path relative to the raw folder.
    """
    meta = dict(session.meta)
    if not roles_file:
        return meta
    path = Path(roles_file)
    path = path if path.is_absolute() else Path(session.path).parent / path
    if not path.is_file():
        return meta
    rows = read_metadata_csv(path)
    for key in (Path(session.path).name, session.relpath):
        meta.update({k: v for k, v in rows.get(key, {}).items() if v})
    return meta


def _resolve_role(value: str, track_to_speaker: dict[int, str], where: str) -> str:
    value = value.strip()
    if value.lower().startswith("track:"):
        try:
            trk = int(value.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"{where}: role value {value!r}: track must be an integer (track:0)") from None
        spk = track_to_speaker.get(trk)
        if not spk:
            raise StageError(f"{where}: role given as {value!r}, but face track {trk} is linked to no "
                             f"speaker; give the speaker label instead, or fix the link with speaker_tracks")
        return spk
    return value


def assign_roles(speakers: list[str], talk: dict[str, float], first: list[str], meta: dict[str, str],
                 track_to_speaker: dict[int, str], heuristic: str,
                 where: str) -> tuple[dict[str, str], bool, str]:
    """speaker -> role ("client", "counsellor", "other", "unknown"), whether assumed, and where from."""
    given = {r: meta[r] for r in ("client", "counsellor") if meta.get(r)}
    if given:
        roles = {s: "other" for s in speakers}
        for role, value in given.items():
            roles[_resolve_role(value, track_to_speaker, where)] = role
        return roles, False, "metadata"
    if heuristic == "none" or not speakers:
        return {s: "unknown" for s in speakers}, True, "none"
    roles = {s: "other" for s in speakers}
    if heuristic == "most_talk_is_client":
        ranked = sorted(speakers, key=lambda s: (-talk.get(s, 0.0), s))
        roles[ranked[0]] = "client"
        if len(ranked) > 1:
            roles[ranked[1]] = "counsellor"
    else:  # first_speaker_is_counsellor
        roles[first[0]] = "counsellor"
        rest = [s for s in first if s != first[0]]
        if rest:
            roles[rest[0]] = "client"
    return roles, True, heuristic


def listener_of(speaker: str, roles: dict[str, str], talk: dict[str, float]) -> str:
    """Who listens while ``speaker`` talks ("" when nobody else speaks)."""
    by_role = {r: s for s, r in roles.items() if r in ("client", "counsellor")}
    role = roles.get(speaker, "unknown")
    listener = ""
    if role == "client":
        listener = by_role.get("counsellor", "")
    elif role in ("counsellor", "other"):
        listener = by_role.get("client", "")
    return listener or next((s for s in sorted(talk, key=lambda s: -talk[s]) if s != speaker), "")
