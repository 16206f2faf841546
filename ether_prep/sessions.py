"""Session discovery: recursive, stable ids from relative paths, optional per-folder ``sessions.csv``.

Discovery never stops over one bad entry: :func:`scan` returns the sessions it found together with what
it could not use. A malformed ``sessions.csv`` fails the recordings of its folder (each with a message naming
the file, the line and the fix); a folder that cannot be listed is a run-level error; folder links are
followed once (a link back to a folder already searched, a symlink loop, is skipped with a note) and only
within the raw folder (a link out of it is not followed, with a note); a link named like a recording that loops
or dangles becomes a session whose probe says so; files of an unknown kind are listed in a note.
"""

from __future__ import annotations

import csv
import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import ConfigError, InputError
from .records import MediaProbe, RecordingIdentity, Session

__all__ = ["AUDIO_EXTENSIONS", "IMAGE_EXTENSIONS", "METADATA_FILE", "VIDEO_EXTENSIONS", "Discovery",
           "check_unchanged", "discover_sessions", "probe_session", "read_metadata", "read_metadata_csv",
           "recording_identity", "scan", "session_id"]

# Camcorders (AVCHD .mts/.m2ts), broadcast and screen-capture transport streams (.ts), phones (.3gp, .m4v),
# Windows and Flash video; voice recorders and messengers (.opus, .aac, .wma, .amr), Ogg and Matroska audio.
VIDEO_EXTENSIONS = frozenset({".mp4", ".mov", ".mkv", ".avi", ".webm", ".mpg", ".mpeg", ".m4v", ".mts", ".m2ts",
                              ".ts", ".3gp", ".3g2", ".wmv", ".flv", ".ogv", ".vob", ".mxf"})
AUDIO_EXTENSIONS = frozenset({".wav", ".flac", ".mp3", ".m4a", ".ogg", ".oga", ".opus", ".aac", ".wma", ".aif",
                              ".aiff", ".amr", ".mka", ".caf", ".weba"})
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png"})
METADATA_FILE = "sessions.csv"
_LISTED = 10  # files of unknown kind named in the note; the rest are counted
_CSV_FIX = "fix it: UTF-8 CSV, a header row with a 'file' column, one row per recording"


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


def read_metadata(folder: Path) -> tuple[dict[str, dict[str, str]], list[str]]:
    """Rows of ``folder/sessions.csv`` (see :func:`read_metadata_csv`), and notes about rows naming no
    recording in that folder."""
    path = folder / METADATA_FILE
    if not path.is_file():
        return {}, []
    rows, first_line = _parse_metadata(path)
    notes = [f"{path} line {first_line[name]}: names {name!r}, which is not in that folder"
             for name in rows if not (folder / name).exists() and not (folder / name).is_symlink()]
    return rows, notes


def read_metadata_csv(path: Path) -> dict[str, dict[str, str]]:
    """Rows of a metadata CSV (``sessions.csv`` or a roles file) keyed by their ``file`` column, stripped.
    Raises :class:`ConfigError` naming the line and the fix."""
    return _parse_metadata(path)[0]


def _parse_metadata(path: Path) -> tuple[dict[str, dict[str, str]], dict[str, int]]:
    """(rows keyed by file, the line of each row)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror}); make it readable by this user") from exc
    reader = csv.DictReader(text.splitlines(), strict=True)
    rows: dict[str, dict[str, str]] = {}
    first_line: dict[str, int] = {}
    line = 1  # where the row being read starts
    try:
        if not reader.fieldnames or "file" not in reader.fieldnames:
            raise ConfigError(f"{path}: needs a 'file' column naming each recording (relative to its folder); "
                              f"found columns {reader.fieldnames}; {_CSV_FIX}")
        line = reader.line_num + 1
        for row in reader:
            if None in row:
                raise ConfigError(f"{path} line {line}: {len(reader.fieldnames) + len(row[None])} fields but the "
                                  f"header has {len(reader.fieldnames)}; quote values that contain commas")
            name = (row.get("file") or "").strip()
            if name in rows:
                raise ConfigError(f"{path} line {line}: {name!r} again (first on line {first_line[name]}); "
                                  f"keep one row per recording")
            if name:
                first_line[name] = line
                rows[name] = {k: (v or "").strip() for k, v in row.items() if k != "file"}
            line = reader.line_num + 1
    except csv.Error as exc:
        raise ConfigError(f"{path} line {line}: {exc} (an unclosed quote?); {_CSV_FIX}") from exc
    return rows, first_line


# A recording's digest covers the whole file up to this size, else its first and last _SAMPLE bytes: cheap enough
# for every session on every run (a cached rerun reads 2 MiB a recording), and it sees a re-export, whose
# container header and index (at the start or the end) differ; size and modification time see the rest.
_WHOLE = 4 * 1024 * 1024
_SAMPLE = 1024 * 1024


def recording_identity(path: Path) -> RecordingIdentity:
    """Size, modification time and content digest (blake2b) of a recording; raises :class:`InputError` when it
    cannot be read."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            digest = hashlib.blake2b(str(st.st_size).encode(), digest_size=16)
            if st.st_size <= _WHOLE:
                digest.update(fh.read())
            else:
                digest.update(fh.read(_SAMPLE))
                fh.seek(-_SAMPLE, os.SEEK_END)
                digest.update(fh.read(_SAMPLE))
    except OSError as exc:
        raise InputError(f"{path}: cannot be read ({exc.strerror}); check that it exists and that this user may "
                         f"read it") from exc
    return RecordingIdentity(st.st_size, st.st_mtime_ns, digest.hexdigest())


def check_unchanged(path: Path, seen: RecordingIdentity | None) -> None:
    """After decoding ``path``: raise :class:`InputError` when its size or modification time is no longer what
    was ``seen`` before (when it was probed), e.g. a recording still being written; None checks nothing."""
    if seen is None:
        return
    try:
        st = os.stat(path)
    except OSError as exc:
        raise InputError(f"{path}: gone while it was read ({exc.strerror}); run again once it is back") from exc
    if st.st_size != seen.size:
        change = f"size {seen.size} -> {st.st_size}"
    elif st.st_mtime_ns != seen.mtime_ns:
        change = f"same size, modified again: {seen.change(replace(seen, mtime_ns=st.st_mtime_ns))}"
    else:
        return
    raise InputError(f"{path}: changed while it was read ({change}): still being written? run again when it is "
                     f"complete")


def probe_session(session: Session) -> Session:
    """The session with its PyAV probe and the file's identity attached; raises :class:`InputError` when the file
    is unreadable."""
    from .adapters import pyav  # PyAV only when actually probing

    try:
        st = os.stat(session.path)
    except OSError:
        st = None  # the probe says what is wrong with it
    probe: MediaProbe = pyav.probe(session.path)
    identity = recording_identity(session.path)
    if st is not None:  # one that grows while it is probed has no probe to trust yet
        check_unchanged(session.path, RecordingIdentity(st.st_size, st.st_mtime_ns, ""))
    return replace(session, probe=probe, identity=identity)


@dataclass
class Discovery:
    """What :func:`scan` found: sessions, per-session problems, run-level errors and notes."""

    sessions: list[Session] = field(default_factory=list)
    problems: dict[str, str] = field(default_factory=dict)  # session id -> why it cannot be processed
    errors: list[str] = field(default_factory=list)  # recordings that may exist but could not be looked at
    notes: list[str] = field(default_factory=list)  # harmless findings (a folder link loop skipped, ...)


def _outside(link: Path, root: Path) -> Path | None:
    """Where folder link ``link`` leads when that is outside the real folder ``root`` (else None)."""
    try:
        target = link.resolve()
    except (OSError, RuntimeError):  # a loop: os.walk does not enter it either
        return None
    return None if target == root or target.is_relative_to(root) else target


def _walk(raw_dir: Path, found: Discovery) -> list[Path]:
    """Candidate recordings under ``raw_dir``: links followed within it, each real folder searched once, hidden
    entries skipped; a link named like a recording is kept even when it dangles or loops (its probe says so).
    A folder link that leads out of the raw folder is not followed (a link to ``/`` would walk the whole
    machine, ``/proc`` included), and files of no known kind are listed: each with a note."""
    files: list[Path] = []
    unknown: list[str] = []
    seen: dict[tuple[int, int], str] = {}
    root = raw_dir.resolve()

    def unlistable(exc: OSError) -> None:
        found.errors.append(f"{exc.filename}: cannot list this folder ({exc.strerror}); its recordings are not "
                            f"included: give the user running ether-prep read and execute permission on it")

    for top, dirs, names in os.walk(raw_dir, followlinks=True, onerror=unlistable):
        here = Path(top)
        st = here.stat()
        key = (st.st_dev, st.st_ino)
        rel = here.relative_to(raw_dir).as_posix()
        if key in seen:
            found.notes.append(f"{here}: leads back to {raw_dir / seen[key]}, already searched (a symlink loop "
                               f"or a second link to one folder): skipped")
            dirs[:] = []
            continue
        seen[key] = rel
        kept = []
        for d in sorted(d for d in dirs if not d.startswith(".")):
            link = here / d
            if link.is_symlink() and (target := _outside(link, root)) is not None:
                found.notes.append(f"{link}: a folder link to {target}, outside the raw folder {raw_dir}: not "
                                   f"followed; move or copy those recordings into the raw folder (or link the "
                                   f"recordings themselves)")
            else:
                kept.append(d)
        dirs[:] = kept
        for name in names:
            path = here / name
            if name.startswith(".") or not (path.is_file() or path.is_symlink()):
                continue
            if _kind(path) is not None:
                files.append(path)
            elif name != METADATA_FILE:
                unknown.append(path.relative_to(raw_dir).as_posix())
    if unknown:
        more = len(unknown) - _LISTED
        listed = ", ".join(unknown[:_LISTED]) + (f" and {more} more" if more > 0 else "")
        found.notes.append(f"{len(unknown)} file(s) in {raw_dir} not read, their extension is not a known recording "
                           f"type: {listed}; a recording among them: give it its usual extension (video: "
                           f"{' '.join(sorted(VIDEO_EXTENSIONS))}; audio: {' '.join(sorted(AUDIO_EXTENSIONS))})")
    return files


def scan(raw_dir: Path) -> Discovery:
    """All recordings under ``raw_dir`` (recursively, hidden files skipped), sorted by relative path, with
    everything that stands in the way of processing them. Files are not opened here; :func:`probe_session`
    does that, so one unreadable file never stops discovery."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise ConfigError(f"{raw_dir}: not a folder of recordings")
    found = Discovery()
    metadata: dict[Path, tuple[dict[str, dict[str, str]], str | None]] = {}
    for path in sorted(_walk(raw_dir, found), key=lambda p: p.relative_to(raw_dir).as_posix()):
        if path.parent not in metadata:
            try:
                rows, notes = read_metadata(path.parent)
                metadata[path.parent] = (rows, None)
                found.notes.extend(notes)
            except ConfigError as exc:
                metadata[path.parent] = ({}, str(exc))
        rows, problem = metadata[path.parent]
        relpath = path.relative_to(raw_dir).as_posix()
        session = Session(session_id(relpath), path.absolute(), relpath, _kind(path) or "", rows.get(path.name, {}))
        found.sessions.append(session)
        if problem:
            found.problems[session.id] = f"{relpath}: its folder's {METADATA_FILE} cannot be used: {problem}"
    return found


def discover_sessions(raw_dir: Path) -> list[Session]:
    """All recordings under ``raw_dir`` (see :func:`scan`); raises :class:`ConfigError` on a bad ``sessions.csv``."""
    found = scan(raw_dir)
    if found.problems:
        raise ConfigError(next(iter(found.problems.values())))
    return found.sessions


def session_from_info(info: dict, refresh: bool = True) -> Session:
    """Rebuild a :class:`Session` from the attributes the runner stored in its group.

    With ``refresh``, the metadata is read again from the recording's ``sessions.csv`` when the file is still
    there, so an edited role or note reaches ``ether-prep align`` without re-extracting; raises
    :class:`ConfigError` when that file has become malformed.
    """
    probe = MediaProbe(**info["probe"]) if info.get("probe") else None
    identity = RecordingIdentity(**info["identity"]) if info.get("identity") else None
    path = Path(info["path"])
    meta = dict(info.get("meta", {}))
    if refresh and (path.parent / METADATA_FILE).is_file():
        meta = read_metadata(path.parent)[0].get(path.name, {})
    return Session(info["id"], path, info["relpath"], info["kind"], meta, probe, identity)


def check_readable(session: Session) -> str | None:
    """The problem with a session's file (unreadable, truncated), or None; decodes one frame at most."""
    from .adapters import pyav

    try:
        pyav.check_complete(session.path)
    except InputError as exc:
        return str(exc)
    return None
