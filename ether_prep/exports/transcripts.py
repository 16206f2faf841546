"""Transcript exports: JSON (words + utterances), RTTM (diarization turns), SRT and WebVTT (utterances with
speaker labels). Each writes one file per session, ``<dest_dir>/<session_id>.<ext>``.

Words and utterances come from the ``utterances`` stage (speaker-attributed); RTTM from ``diarize``. Given a
:class:`~ether_prep.deidentify.Deidentifier`, texts have identifiers replaced by tags and the session id (built
from the file name) becomes an alias, in file names and contents alike.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import StoreError

if TYPE_CHECKING:
    from ..deidentify import Deidentifier
    from ..store import SessionGroup

__all__ = ["write_json", "write_rttm", "write_srt", "write_vtt"]


def _rows(table: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    keys = list(table)
    n = len(table[keys[0]]) if keys else 0
    out = []
    for i in range(n):
        row = {}
        for k in keys:
            v = table[k][i]
            v = v.item() if isinstance(v, np.generic) else v
            if isinstance(v, float) and not math.isfinite(v):
                v = None  # JSON has no NaN
            elif isinstance(v, float):
                v = round(v, 3)
            row[k] = v
        out.append(row)
    return out


def _name(session: SessionGroup, deid: Deidentifier | None) -> str:
    return deid.alias(session.id) if deid is not None else session.id


def _speech(session: SessionGroup,
            deid: Deidentifier | None = None) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    state = session.stage_state("utterances")
    if state.state == "skipped":
        raise StoreError(f"session {session.id!r}: no transcript ({state.note or 'utterances stage skipped'})")
    words, utts = session.read_table("utterances", "words"), session.read_table("utterances", "utterances")
    if deid is not None:
        alias = deid.alias(session.id)
        words["text"] = np.array(deid.words([str(w) for w in words["text"]]), dtype=object)
        utts["text"] = np.array([deid.text(str(t)) for t in utts["text"]], dtype=object)
        utts["id"] = np.array([str(u).replace(session.id, alias, 1) for u in utts["id"]], dtype=object)
    return words, utts


def write_json(session: SessionGroup, dest_dir: Path, deid: Deidentifier | None = None) -> Path:
    """``{"session", "language", "model", "words": [...], "utterances": [...]}`` (and ``deidentified``)."""
    words, utts = _speech(session, deid)
    attrs = session.stage_group("utterances").attrs
    doc = {
        "session": _name(session, deid),
        "language": attrs.get("language"),
        "model": attrs.get("asr_model"),
        "words": _rows({k: words[k] for k in ("text", "start", "end", "speaker", "score")}),
        "utterances": _rows({k: utts[k] for k in ("id", "start", "end", "speaker", "text")}),
    }
    if deid is not None:
        doc["deidentified"] = deid.describe()
    path = Path(dest_dir) / f"{_name(session, deid)}.json"
    path.write_text(json.dumps(doc, ensure_ascii=False, indent=1), encoding="utf-8")
    return path


def write_rttm(session: SessionGroup, dest_dir: Path, deid: Deidentifier | None = None) -> Path:
    """NIST RTTM: ``SPEAKER <file> 1 <onset> <duration> <NA> <NA> <speaker> <NA> <NA>`` per turn."""
    turns = session.read_table("diarize", "turns")
    name = _name(session, deid)
    lines = [f"SPEAKER {name} 1 {s:.3f} {e - s:.3f} <NA> <NA> {spk} <NA> <NA>"
             for s, e, spk in zip(turns["start"], turns["end"], turns["speaker"], strict=True)]
    path = Path(dest_dir) / f"{name}.rttm"
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def _stamp(t: float, sep: str) -> str:
    ms = max(round(t * 1000), 0)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(session: SessionGroup, deid: Deidentifier | None) -> list[tuple[float, float, str, str]]:
    _, utts = _speech(session, deid)
    return [(float(s), float(e), str(spk), str(txt))
            for s, e, spk, txt in zip(utts["start"], utts["end"], utts["speaker"], utts["text"], strict=True)]


def write_srt(session: SessionGroup, dest_dir: Path, deid: Deidentifier | None = None) -> Path:
    """SubRip: one cue per utterance, text prefixed ``[SPEAKER_00]``."""
    blocks = [f"{i}\n{_stamp(s, ',')} --> {_stamp(max(e, s + 0.001), ',')}\n[{spk}] {txt}\n"
              for i, (s, e, spk, txt) in enumerate(_cues(session, deid), 1)]
    path = Path(dest_dir) / f"{_name(session, deid)}.srt"
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path


def write_vtt(session: SessionGroup, dest_dir: Path, deid: Deidentifier | None = None) -> Path:
    """WebVTT: one cue per utterance with a voice span ``<v SPEAKER_00>``."""
    blocks = ["WEBVTT\n"] + [f"{_stamp(s, '.')} --> {_stamp(max(e, s + 0.001), '.')}\n<v {spk}>{txt}\n"
                             for s, e, spk, txt in _cues(session, deid)]
    path = Path(dest_dir) / f"{_name(session, deid)}.vtt"
    path.write_text("\n".join(blocks), encoding="utf-8")
    return path
