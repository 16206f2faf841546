"""Export formats for ``ether-prep export``: each writes one file per session, named after its id.

A format maps to ``"module:function"`` with signature ``(session: SessionGroup, dest_dir: Path,
deid: Deidentifier | None = None) -> Path``; with a :class:`~ether_prep.deidentify.Deidentifier` the file is
de-identified (identifiers in text tagged, face boxes/landmarks/identity left out, the session id aliased).
Modules are imported only when their format is used.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import StoreError
from ..registry import resolve

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


__all__ = ["FORMATS", "NothingToExport", "exporter"]

FORMATS: dict[str, str] = {
    "json": "ether_prep.exports.transcripts:write_json",
    "rttm": "ether_prep.exports.transcripts:write_rttm",
    "srt": "ether_prep.exports.transcripts:write_srt",
    "vtt": "ether_prep.exports.transcripts:write_vtt",
    "txt": "ether_prep.exports.transcripts:write_txt",
    "tsv": "ether_prep.exports.transcripts:write_tsv",
    "faces": "ether_prep.exports.faces:write_faces_csv",
    "openface": "ether_prep.exports.faces:write_openface_csv",
}


class NothingToExport(StoreError):
    """The session has nothing of this kind (faces of an audio-only recording): skipped, not failed."""


def exporter(fmt: str) -> Callable[..., Path]:
    """The writer function of export format ``fmt``."""
    return resolve(FORMATS, fmt, "export format")
