"""De-identification for sharing features outside the clinic.

Transcripts keep their words and times, with e-mail addresses, phone numbers, URLs and person names replaced
by the tags ``[EMAIL]``, ``[PHONE]``, ``[URL]`` and ``[NAME]``; names are those of a list the user gives (one
per line: list first names and surnames on lines of their own when they may be said alone). Face data keep
action units, emotions, head pose and mouth movement, and lose what shows or identifies a face: boxes,
landmarks and identity embeddings. Session ids, which are built from file names that often name people,
become ``session-<16 hex>`` aliases: an HMAC-SHA256 of the session id under a secret key, so nobody without
the key can recompute an alias from a guessed name and date. The key is ``ETHER_PREP_DEID_KEY`` when set (any
text of 16 characters or more, e.g. ``python -c "import secrets; print(secrets.token_hex(32))"``), else the
store's own ``STORE/.ether-prep-key`` (32 random bytes, created on the first de-identified read or export, mode
0600): aliases are stable for one store, and differ between stores unless the same key is given. Keep the key
with the store, never with what is shared. Every id and path that carries a file name (session and utterance
ids, pair ids, ``relpath``, Zarr group paths) is aliased too (:class:`IdAliases`).

Detection is pattern- and list-based (see :mod:`ether_prep.adapters.scrubadub_pii`): it does not find names
missing from the list, nor numbers spelt out in words ("oh seven seven..."); review shared transcripts.

    deid = Deidentifier.from_names_file("names.txt")
    deid.text("Call Jane on 415-555-0199")   # 'Call [NAME] on [PHONE]'
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = ["KEY_ENV", "KEY_FILE", "TAGS", "Deidentifier", "IdAliases", "deid_key", "face_column_shared",
           "read_names"]

KEY_ENV = "ETHER_PREP_DEID_KEY"
KEY_FILE = ".ether-prep-key"
_MIN_KEY = 16  # characters of a key given as text: shorter ones can be guessed

TAGS = {"email": "[EMAIL]", "phone": "[PHONE]", "url": "[URL]", "name": "[NAME]"}
# Face outputs that show or identify a face, left out of de-identified exports (the identity family covers
# any embedding a face backend adds; py-feat's ``Identity`` label, ``Person_<n>``, is a person number, kept).
_FACE_WITHHELD = re.compile(r"^(x0|y0|x1|y1|box.*|FaceRect.*|[xyXYZ]_\d+|landmark.*|identity.*|Identity_.*|"
                            r"embedding.*)$")


def face_column_shared(name: str) -> bool:
    """Whether a face column or array may leave the clinic (AUs, emotions, pose: yes; boxes, landmarks,
    identity embeddings: no)."""
    return not _FACE_WITHHELD.match(name)


def read_names(path: Path | str) -> list[str]:
    """Names listed in a UTF-8 text file, one per line; blank lines and ``#`` comments are skipped."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the names list ({exc}); give a UTF-8 text file with one name "
                          f"per line") from exc
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def deid_key(store: str | os.PathLike[str] | None, key: str | bytes | None = None) -> bytes:
    """The secret that aliases are keyed with: ``key`` if given, else ``$ETHER_PREP_DEID_KEY``, else the
    store's ``.ether-prep-key`` file (created once, 32 random bytes, mode 0600, never through a link)."""
    given = key if key is not None else os.environ.get(KEY_ENV) or None
    if given is not None:
        raw = given.encode("utf-8") if isinstance(given, str) else bytes(given)
        if len(raw) < _MIN_KEY:
            raise ConfigError(f"the de-identification key ({KEY_ENV} or key=) has {len(raw)} characters; give "
                              f"{_MIN_KEY} or more, e.g. python -c \"import secrets; print(secrets.token_hex(32))\"")
        return raw
    from .store import local_path

    folder = local_path(store) if store is not None else None
    if folder is None:
        raise ConfigError(f"{store}: a store behind a URL (or none) keeps no de-identification key; set {KEY_ENV} "
                          f"to a secret of {_MIN_KEY}+ characters (keep the same one for stable aliases)")
    return _key_file(Path(folder) / KEY_FILE)


def _key_file(path: Path) -> bytes:
    """The key in ``path``, written first if there is none (atomically: two processes agree on one key)."""
    if not path.exists() and not path.is_symlink():
        tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            _write_new(tmp, secrets.token_bytes(32).hex() + "\n")
            try:
                os.link(tmp, path)  # fails if another process wrote its key first: that one is kept
            except FileExistsError:
                pass
            except OSError:  # a filesystem without hard links: create it in place, still only once
                with contextlib.suppress(FileExistsError):
                    _write_new(path, tmp.read_text(encoding="ascii"))
        except OSError as exc:
            raise ConfigError(f"{path}: cannot create the de-identification key ({exc}); make the store folder "
                              f"writable once, or set {KEY_ENV} to a secret of {_MIN_KEY}+ characters") from exc
        finally:
            tmp.unlink(missing_ok=True)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the de-identification key ({exc}); it must be a regular file, "
                          f"not a link; or set {KEY_ENV}") from exc
    with os.fdopen(fd, "r", encoding="ascii", errors="replace") as fh:
        mode = os.fstat(fh.fileno()).st_mode
        text = fh.read().strip()
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{path}: the de-identification key is not a regular file; remove it or set {KEY_ENV}")
    if mode & 0o077:
        raise ConfigError(f"{path}: the de-identification key is readable by others (mode {stat.S_IMODE(mode):o}); "
                          f"run `chmod 600 {path}`")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raw = b""
    if len(raw) < _MIN_KEY:
        raise ConfigError(f"{path}: not a de-identification key (64 hex digits expected); restore it from a "
                          f"backup (aliases depend on it) or remove it to start new aliases")
    return raw


def _write_new(path: Path, text: str) -> None:
    """Write a new file of mode 0600; fails if anything (a file, a link) is at ``path`` already."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        fh.write(text)


def session_alias(key: bytes, session_id: str) -> str:
    """A session id without the file name it was built from: ``session-<16 hex of its HMAC-SHA256 under key>``
    (what :meth:`Deidentifier.alias` gives, without building the text detectors)."""
    return "session-" + hmac.new(key, session_id.encode("utf-8"), hashlib.sha256).hexdigest()[:16]


class Deidentifier:
    """Replaces identifiers in transcript text with tags; build once per export (patterns compile once).

    ``key`` (see :func:`deid_key`) keys the session aliases; without one, :meth:`alias` refuses.
    """

    def __init__(self, names: Iterable[str] = (), regions: Sequence[str] = ("US", "GB"),
                 key: bytes | None = None) -> None:
        self.names = sorted({n.strip() for n in names if n.strip()})
        self.regions = tuple(regions)
        self.key = key
        self._finder: Any = None
        self._spans("")  # build the detectors now: a bad region is an error before any export

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers rebuild the detectors
        return {**self.__dict__, "_finder": None}

    def _spans(self, text: str) -> list[Any]:
        if self._finder is None:
            from .adapters.scrubadub_pii import PiiFinder

            self._finder = PiiFinder(self.names, self.regions)
        return self._finder.find(text)

    @classmethod
    def from_names_file(cls, path: Path | str | None, regions: Sequence[str] = ("US", "GB"),
                        key: bytes | None = None) -> Deidentifier:
        return cls(read_names(path) if path else (), regions, key)

    def text(self, text: str) -> str:
        """``text`` with every identifier replaced by its tag."""
        out, last = [], 0
        for span in self._spans(text):
            out.append(text[last:span.start])
            out.append(TAGS[span.kind])
            last = span.end
        out.append(text[last:])
        return "".join(out)

    def words(self, words: Sequence[str]) -> list[str]:
        """Word tokens with every word that is part of an identifier replaced by its tag; an identifier
        spoken as several words ("four one five ...", "Jane Doe") tags each of them, so times stay aligned."""
        starts, pos = [], 0
        for w in words:
            starts.append(pos)
            pos += len(w) + 1
        joined = " ".join(words)
        out = list(words)
        for span in self._spans(joined):
            for i, (start, w) in enumerate(zip(starts, words, strict=True)):
                if start < span.end and start + len(w) > span.start:
                    out[i] = TAGS[span.kind]
        return out

    def alias(self, session_id: str) -> str:
        """A session id without the file name it was built from: ``session-<16 hex of its keyed HMAC>``."""
        if self.key is None:
            raise ConfigError(f"no de-identification key to alias session ids with; set {KEY_ENV} or use the "
                              f"store's key (ether_prep.deidentify.deid_key)")
        return session_alias(self.key, session_id)

    def describe(self) -> dict[str, object]:
        """What was replaced or left out: recorded in de-identified exports."""
        return {"replaced": [TAGS[k] for k in TAGS], "names_listed": len(self.names),
                "withheld": "face boxes, landmarks, identity embeddings; session ids, "
                             "file names and paths aliased (keyed)"}


class IdAliases:
    """Replaces, in id and path strings, every session id, recording path and file name of the given sessions
    by the session's alias (``sessions/<id>/align`` becomes ``sessions/<alias>/align``).

    Only whole tokens are replaced (not inside a longer word); transcript texts are left to
    :meth:`Deidentifier.text`.
    """

    def __init__(self, deid: Deidentifier, sessions: Iterable[tuple[str, str]]) -> None:
        self.of: dict[str, str] = {}  # session id -> alias
        needles: dict[str, str] = {}
        for sid, relpath in sessions:
            alias = self.of[sid] = deid.alias(sid)
            # Not the bare stem or slug: "client.wav" must not turn the role "client" into an alias.
            forms = [sid, relpath, PurePosixPath(relpath).name] if relpath else [sid]
            for form in forms:
                if form and form not in needles:
                    needles[form] = alias
        self.real = {a: sid for sid, a in self.of.items()}  # alias -> session id
        self._needles = needles
        self._pattern = re.compile(
            r"(?<![A-Za-z0-9])(?:" + "|".join(re.escape(n) for n in sorted(needles, key=len, reverse=True))
            + r")(?![A-Za-z0-9])") if needles else None

    def __call__(self, value: Any) -> Any:
        """``value`` (a string, a list or array of strings, or None) with every id and name aliased."""
        if value is None or self._pattern is None:
            return value
        if isinstance(value, str):
            return self._pattern.sub(lambda m: self._needles[m.group(0)], value)
        if isinstance(value, list | tuple):
            return type(value)(self(v) for v in value)
        if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
            out = np.empty(value.shape, dtype=object)
            flat = out.reshape(-1)
            for i, v in enumerate(value.reshape(-1)):  # one by one: an item may be an array (a list column)
                flat[i] = self(v.decode() if isinstance(v, bytes) else v)
            return out
        return value

