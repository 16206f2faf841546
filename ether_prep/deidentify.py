"""De-identification for sharing features outside the clinic.

Transcripts keep their words and times, with e-mail addresses, phone numbers, URLs and person names replaced
by the tags ``[EMAIL]``, ``[PHONE]``, ``[URL]`` and ``[NAME]``; names are those of a list the user gives (one
per line: list first names and surnames on lines of their own when they may be said alone). Face data keep
action units, emotions, head pose and mouth movement, and lose what shows or identifies a face: boxes,
landmarks and identity embeddings. Session ids, which are built from file names that often name people,
become ``session-<hash>`` aliases (the same for a recording in every export).

Detection is pattern- and list-based (see :mod:`ether_prep.adapters.scrubadub_pii`): it does not find names
missing from the list, nor numbers spelt out in words ("oh seven seven..."); review shared transcripts.

    deid = Deidentifier.from_names_file("names.txt")
    deid.text("Call Jane on 415-555-0199")   # 'Call [NAME] on [PHONE]'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["TAGS", "Deidentifier", "face_column_shared", "read_names"]

TAGS = {"email": "[EMAIL]", "phone": "[PHONE]", "url": "[URL]", "name": "[NAME]"}
# Face outputs that show or identify a face, left out of de-identified exports (the identity family covers
# any embedding a face backend adds).
_FACE_WITHHELD = re.compile(r"^(x0|y0|x1|y1|box.*|FaceRect.*|[xyXYZ]_\d+|landmark.*|identity.*|Identity.*|"
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


class Deidentifier:
    """Replaces identifiers in transcript text with tags; build once per export (patterns compile once)."""

    def __init__(self, names: Iterable[str] = (), regions: Sequence[str] = ("US", "GB")) -> None:
        self.names = sorted({n.strip() for n in names if n.strip()})
        self.regions = tuple(regions)
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
    def from_names_file(cls, path: Path | str | None, regions: Sequence[str] = ("US", "GB")) -> Deidentifier:
        return cls(read_names(path) if path else (), regions)

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

    @staticmethod
    def alias(session_id: str) -> str:
        """A session id without the file name it was built from: ``session-<hash of the relative path>``."""
        return f"session-{session_id.rsplit('-', 1)[-1]}"

    def describe(self) -> dict[str, object]:
        """What was replaced or left out: recorded in de-identified exports."""
        return {"replaced": [TAGS[k] for k in TAGS], "names_listed": len(self.names),
                "withheld": "face boxes, landmarks, identity embeddings; session ids aliased"}
