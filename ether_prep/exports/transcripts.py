"""Transcript exports, one file per session named after its id, in the shapes the field's tools read:

- ``json``: whisperx's result shape, ``{"segments": [{"start", "end", "text", "speaker", "words": [{"word",
  "start", "end", "score", "speaker", "interpolated"}]}], "word_segments": [...], "language"}`` (one segment
  per utterance), plus ``session``, ``uri`` and ``model``: ``whisperx.utils.get_writer`` writes SRT, VTT, TXT
  and TSV from it;
- ``srt`` and ``vtt``: one cue per utterance, ``[SPEAKER_00]: text`` (whisperx's own SRT prefix) /
  ``<v SPEAKER_00>text``; a session without speech gets one empty zero-length cue at 0 (an SRT without any cue
  is a 0-byte file, which pysubs2 and webvtt-py refuse);
- ``txt``: one line per utterance, ``[SPEAKER_00]: text`` (as whisperx writes it);
- ``tsv``: ``start end text speaker`` with times in integer milliseconds (whisperx's TSV columns in its order,
  plus a speaker column last);
- ``rttm``: NIST RTTM of the diarized turns, ``uri`` = the session id (unique in the store: two
  ``session1.wav`` in different folders stay two recordings in pyannote's ``load_rttm``), beside a ``.uem``
  file giving the scored extent (the whole recording).

Words whose end is not after their start (an aligner that gave a word no duration) are flagged
``"zero_length": true`` in the JSON.

Words and utterances come from the ``utterances`` stage (speaker-attributed), turns from ``diarize``. Given a
:class:`~ether_prep.deidentify.Deidentifier` (``--deidentify``), texts have identifiers replaced by tags (times
unchanged) and the session id and ``uri`` become the session's alias, in file names
and contents alike.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..stages.diarize import read_turns
from ..stages.utterances import Transcript, read_transcript
from . import NothingToExport

if TYPE_CHECKING:
    from ..deidentify import Deidentifier
    from ..store import SessionGroup

__all__ = ["srt_text", "whisperx_result", "write_json", "write_rttm", "write_srt", "write_tsv", "write_txt",
           "write_vtt"]


def _transcript(session: SessionGroup, deid: Deidentifier | None = None) -> Transcript:
    state = session.stage_state("utterances")
    if state.state == "skipped":
        # a recording without audio has no transcript: skipped, as faces of an audio-only one are
        raise NothingToExport(f"session {session.id!r}: no transcript ({state.note or 'utterances stage skipped'})")
    t = read_transcript(session)
    if deid is not None and len(t.words.get("text", ())):
        t.words["text"] = np.array(deid.words([str(w) for w in t.words["text"]]))
    if deid is not None and len(t):
        alias = deid.alias(session.id)
        t.utterances["text"] = np.array([deid.text(str(x)) for x in t.utterances["text"]])
        t.utterances["id"] = np.array([str(u).replace(session.id, alias, 1) for u in t.utterances["id"]])
    return t


def _name(session: SessionGroup, deid: Deidentifier | None) -> str:
    """The id files are named after: the session id, or its alias when de-identified."""
    return deid.alias(session.id) if deid is not None else session.id


def _number(v: Any) -> float | None:
    v = float(v)
    return round(v, 3) if math.isfinite(v) else None  # JSON has no NaN


def _uri(session: SessionGroup, deid: Deidentifier | None = None) -> str:
    """The ``uri`` diarization tools key files by: the session id, unique in the store where file stems are not
    (``a/session1.wav``, ``b/session1.wav``); the alias when de-identified."""
    return _name(session, deid)


def whisperx_result(session: SessionGroup, deid: Deidentifier | None = None) -> dict[str, Any]:
    """The session's transcript as a whisperx result: one segment per utterance, words inside."""
    t = _transcript(session, deid)
    w, u = t.words, t.utterances
    words = [{"word": str(w["text"][i]), "start": _number(w["start"][i]), "end": _number(w["end"][i]),
              "score": _number(w["score"][i]), "speaker": str(w["speaker"][i]),
              "interpolated": bool(w["interpolated"][i]),
              "zero_length": not float(w["end"][i]) > float(w["start"][i])} for i in range(len(w.get("text", ())))]
    segments = [{"id": str(u["id"][k]), "start": _number(u["start"][k]), "end": _number(u["end"][k]),
                 "text": str(u["text"][k]), "speaker": str(u["speaker"][k]),
                 "words": words[int(u["word_start"][k]):int(u["word_end"][k])]} for k in range(len(t))]
    result = {"session": _name(session, deid), "uri": _uri(session, deid), "language": t.language,
              "model": t.asr_model, "segments": segments, "word_segments": words}
    if deid is not None:
        result["deidentified"] = deid.describe()
    return result


def _write(session: SessionGroup, dest_dir: Path, ext: str, text: str, deid: Deidentifier | None = None) -> Path:
    path = Path(dest_dir) / f"{_name(session, deid)}.{ext}"
    path.write_text(text, encoding="utf-8")
    return path


def write_json(session: SessionGroup, dest_dir: Path, deid: Deidentifier | None = None) -> Path:
    """whisperx-shaped JSON (see the module docstring)."""
    text = json.dumps(whisperx_result(session, deid), ensure_ascii=False, indent=1)
    return _write(session, dest_dir, "json", text, deid)


def write_rttm(session: SessionGroup, dest_dir: Path, deid: Deidentifier | None = None) -> Path:
    """NIST RTTM, ``SPEAKER <uri> 1 <onset> <duration> <NA> <NA> <speaker> <NA> <NA>`` per turn, and a UEM."""
    uri = _uri(session, deid)
    lines = [f"SPEAKER {uri} 1 {t.start:.3f} {t.end - t.start:.3f} <NA> <NA> {t.speaker} <NA> <NA>\n"
             for t in read_turns(session)]
    duration = float((session.info.get("probe") or {}).get("duration") or 0.0)
    _write(session, dest_dir, "uem", f"{uri} 1 0.000 {duration:.3f}\n", deid)
    return _write(session, dest_dir, "rttm", "".join(lines), deid)


def _stamp(t: float, sep: str) -> str:
    ms = max(round(t * 1000), 0)
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def _cues(session: SessionGroup, deid: Deidentifier | None) -> list[tuple[float, float, str, str]]:
    u = _transcript(session, deid).utterances
    return [(float(s), float(e), str(spk), str(txt))
            for s, e, spk, txt in zip(u.get("start", []), u.get("end", []), u.get("speaker", []),
                                      u.get("text", []), strict=True)]


def srt_text(cues: list[tuple[float, float, str, str]]) -> str:
    """SubRip text of ``(start, end, speaker, text)`` cues, prefixed ``[SPEAKER_00]: `` as whisperx writes them;
    no cue gives one empty zero-length cue (readers refuse an SRT without any)."""
    if not cues:
        return f"1\n{_stamp(0.0, ',')} --> {_stamp(0.0, ',')}\n\n"
    return "\n".join(f"{i}\n{_stamp(s, ',')} --> {_stamp(max(e, s + 0.001), ',')}\n[{spk}]: {txt}\n"
                     for i, (s, e, spk, txt) in enumerate(cues, 1))


def write_srt(session: SessionGroup, dest_dir: Path, deid: Deidentifier | None = None) -> Path:
    """SubRip: one cue per utterance, text prefixed ``[SPEAKER_00]: ``."""
    return _write(session, dest_dir, "srt", srt_text(_cues(session, deid)), deid)


def write_vtt(session: SessionGroup, dest_dir: Path, deid: Deidentifier | None = None) -> Path:
    """WebVTT: one cue per utterance with a voice span ``<v SPEAKER_00>``."""
    blocks = ["WEBVTT\n"] + [f"{_stamp(s, '.')} --> {_stamp(max(e, s + 0.001), '.')}\n<v {spk}>{txt}\n"
                             for s, e, spk, txt in _cues(session, deid)]
    return _write(session, dest_dir, "vtt", "\n".join(blocks), deid)


def write_txt(session: SessionGroup, dest_dir: Path, deid: Deidentifier | None = None) -> Path:
    """Plain text, one utterance per line: ``[SPEAKER_00]: text``."""
    lines = "".join(f"[{spk}]: {txt}\n" for _, _, spk, txt in _cues(session, deid))
    return _write(session, dest_dir, "txt", lines, deid)


def write_tsv(session: SessionGroup, dest_dir: Path, deid: Deidentifier | None = None) -> Path:
    """Tab-separated ``start end text speaker`` (milliseconds; whisperx's columns, then the speaker), one
    utterance per row, with a header."""
    rows = [f"{round(s * 1000)}\t{round(e * 1000)}\t{txt.strip().replace(chr(9), ' ')}\t{spk}\n"
            for s, e, spk, txt in _cues(session, deid)]
    return _write(session, dest_dir, "tsv", "start\tend\ttext\tspeaker\n" + "".join(rows), deid)
