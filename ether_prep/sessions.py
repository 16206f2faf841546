"""Session discovery: recursive, stable ids from relative paths, optional per-folder ``sessions.csv``."""

from __future__ import annotations

import csv
import hashlib
import re
import unicodedata
from pathlib import Path

from .errors import ConfigError, InputError
from .records import MediaProbe, Session

__all__ = ["AUDIO_EXTENSIONS", "IMAGE_EXTENSIONS", "METADATA_FILE", "VIDEO_EXTENSIONS", "discover_sessions",
           "probe_session", "read_metadata_csv", "session_id"]

VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg"})
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".m4a", ".ogg"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
METADATA_FILE = "sessions.csv"


def session_id(relpath: str) -> str:
    """A stable, readable, filesystem- and Zarr-safe id for a recording's path relative to the raw folder.

    ``"clinic A/Séance 1.mp4"`` becomes ``"clinic_A__Seance_1-<8 hex>"``: an ASCII slug for people plus a
    hash of the exact relative path, so two names that slug alike (or ``a.mp4`` and ``a.wav``) never collide.
    """
    stem = relpath.rsplit(".", 1)[0]
    ascii_ = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    parts = [re.sub(r"[^A-Za-z0-9._-]+", "_", p).strip("._") for p in ascii_.split("/")]
    slug = "__".join(p for p in parts if p)[:80] or "session"
    digest = hashlib.sha1(relpath.encode("utf-8")).hexdigest()[:8]
    return f"{slug}-{digest}"


def _kind(path: Path) -> str | None:
    ext = path.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in AUDIO_EXTENSIONS:
        return "audio"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return None


def _read_metadata(folder: Path) -> dict[str, dict[str, str]]:
    """Rows of ``folder/sessions.csv`` keyed by their ``file`` column (a name relative to that folder)."""
    path = folder / METADATA_FILE
    return read_metadata_csv(path) if path.is_file() else {}


def read_metadata_csv(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a metadata CSV (``sessions.csv`` or a roles file) keyed by their ``file`` column, stripped."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "file" not in reader.fieldnames:
            raise ConfigError(f"{path}: needs a 'file' column naming each recording (relative to its folder); "
                              f"found columns {reader.fieldnames}")
        return {row["file"].strip(): {k: (v or "").strip() for k, v in row.items() if k != "file"}
                for row in reader if row.get("file")}


def probe_session(session: Session) -> Session:
    """The session with its PyAV probe attached; raises :class:`InputError` when the file is unreadable."""
    from .adapters import pyav  # PyAV only when actually probing

    probe: MediaProbe = pyav.probe(session.path)
    return Session(session.id, session.path, session.relpath, session.kind, session.meta, probe)


def discover_sessions(raw_dir: Path) -> list[Session]:
    """All recordings under ``raw_dir`` (recursively, hidden files skipped), sorted by relative path.

    Files are not opened here; :func:`probe_session` does that, so one unreadable file never stops discovery.
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise ConfigError(f"{raw_dir}: not a folder of recordings")
    metadata: dict[Path, dict[str, dict[str, str]]] = {}
    sessions = []
    for path in sorted(raw_dir.rglob("*")):
        rel = path.relative_to(raw_dir)
        if any(part.startswith(".") for part in rel.parts) or not path.is_file():
            continue
        kind = _kind(path)
        if kind is None:
            continue
        if path.parent not in metadata:
            metadata[path.parent] = _read_metadata(path.parent)
        relpath = rel.as_posix()
        meta = metadata[path.parent].get(path.name, {})
        sessions.append(Session(session_id(relpath), path.absolute(), relpath, kind, meta))
    return sessions


def session_from_info(info: dict) -> Session:
    """Rebuild a :class:`Session` from the attributes the runner stored in its group.

    The metadata is read again from the recording's ``sessions.csv`` when the file is still there, so an
    edited role or note reaches ``ether-prep align`` without re-extracting.
    """
    probe = MediaProbe(**info["probe"]) if info.get("probe") else None
    path = Path(info["path"])
    meta = dict(info.get("meta", {}))
    if (path.parent / METADATA_FILE).is_file():
        meta = _read_metadata(path.parent).get(path.name, {})
    return Session(info["id"], path, info["relpath"], info["kind"], meta, probe)


def check_readable(session: Session) -> str | None:
    """The problem with a session's file (unreadable, truncated), or None; decodes one frame at most."""
    from .adapters import pyav

    try:
        pyav.check_complete(session.path)
    except InputError as exc:
        return str(exc)
    return None
