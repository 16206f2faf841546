"""What a session's report page shows, gathered from the store through the stages' own readers (nothing is
recomputed; thumbnails decode only the frames they show)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import EtherPrepError

if TYPE_CHECKING:
    from ..stages.align import AlignOutputs
    from ..stages.face import FaceOutputs
    from ..stages.qc import Review
    from ..store import SessionGroup

__all__ = ["PersonData", "SessionData", "StageRow", "Thumbnail", "gather_session"]

THUMBNAILS_PER_PERSON = 3
THUMB_HEIGHT = 112  # px


@dataclass(frozen=True)
class StageRow:
    """One stage of one session: its shown state and message (as ``status`` gives them) and its provenance."""

    stage: str
    state: str
    message: str
    marker: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Thumbnail:
    time: float
    png: bytes


@dataclass
class PersonData:
    """A person on screen: their tracks, their face over time (per analysed frame, NaN without a face), the
    speaker they were linked to and how surely."""

    person: int
    tracks: list[int]
    n_frames: int
    first_time: float
    last_time: float
    au: np.ndarray  # (F, A)
    emotion: np.ndarray  # (F, E)
    speaker: str = ""
    role: str = ""
    confidence: float = math.nan
    source: str = ""
    thumbnails: list[Thumbnail] = field(default_factory=list)
    thumbnail_note: str = ""


@dataclass
class SessionData:
    """Everything one page shows; a part whose stage did not complete is None, with the reason in ``missing``."""

    id: str
    name: str  # shown and used as the file name (an alias with --deidentify)
    relpath: str
    kind: str
    duration: float
    stages: list[StageRow]
    review: Review
    missing: dict[str, str] = field(default_factory=dict)  # part -> why it is not shown
    turns: list[tuple[float, float, str]] | None = None
    utterances: dict[str, np.ndarray] | None = None  # the utterances stage's table
    coverage: dict[str, Any] | None = None
    alignment: AlignOutputs | None = None
    faces: FaceOutputs | None = None
    persons: list[PersonData] = field(default_factory=list)

    @property
    def failed(self) -> list[StageRow]:
        return [r for r in self.stages if r.state in ("failed", "damaged")]

    @property
    def speakers(self) -> list[str]:
        if self.utterances is not None and len(self.utterances.get("speaker", ())):
            return sorted({str(s) for s in self.utterances["speaker"]})
        return sorted({t[2] for t in self.turns or []})

    @property
    def roles(self) -> dict[str, str]:
        return dict(self.alignment.attrs.get("roles", {})) if self.alignment is not None else {}


def _done(rows: dict[str, StageRow], stage: str) -> bool:
    row = rows.get(stage)
    return row is not None and row.state in ("done", "stale")


def _why(rows: dict[str, StageRow], stage: str) -> str:
    row = rows.get(stage)
    if row is None:
        return f"stage {stage!r} has not run on this session"
    text = f"stage {stage!r} is {row.state}"
    return f"{text}: {row.message}" if row.message else text


def gather_session(group: SessionGroup, status: list[dict[str, Any]], name: str, thumbnails: bool = True
                   ) -> SessionData:
    """The page's data for one session; ``status`` holds its rows of :func:`ether_prep.runner.status_table`."""
    from ..stages.qc import Review, read_review

    info = group.info
    probe = info.get("probe") or {}
    rows = {r["stage"]: StageRow(r["stage"], r["state"], r["message"], group.stage_state(r["stage"]).info)
            for r in status}
    data = SessionData(id=group.id, name=name, relpath=str(info.get("relpath", "")), kind=str(info.get("kind", "")),
                       duration=float(probe.get("duration") or 0.0), stages=list(rows.values()), review=Review())
    _part(data, "qc", lambda: read_review(group), rows, "review")
    if _done(rows, "diarize"):
        from ..stages.diarize import read_turns

        _part(data, "diarize", lambda: [(t.start, t.end, t.speaker) for t in read_turns(group)], rows, "turns")
    else:
        data.missing["turns"] = _why(rows, "diarize")
    if _done(rows, "utterances"):
        from ..stages.utterances import read_transcript

        _part(data, "utterances", lambda: read_transcript(group).utterances, rows, "utterances")
    else:
        data.missing["utterances"] = _why(rows, "utterances")
    if _done(rows, "transcribe"):
        from ..stages.transcribe import read_words

        _part(data, "transcribe", lambda: _attrs_of(read_words(group)), rows, "coverage")
    if _done(rows, "align"):
        from ..stages.align import read_align

        _part(data, "align", lambda: read_align(group), rows, "alignment")
    else:
        data.missing["alignment"] = _why(rows, "align")
    if _done(rows, "face"):
        from ..stages.face import read_faces

        _part(data, "face", lambda: read_faces(group), rows, "faces")
    else:
        data.missing["faces"] = _why(rows, "face")
    if data.faces is not None:
        data.persons = _persons(data)
        if thumbnails and data.persons:
            _thumbnails(data, Path(str(info.get("path", ""))))
    if not data.duration:
        ends = [t[1] for t in data.turns or []]
        if data.faces is not None and len(data.faces.time):
            ends.append(float(data.faces.time[-1]))
        data.duration = max(ends, default=0.0)
    return data


def _attrs_of(outputs: Any) -> dict[str, Any] | None:
    """The transcribe stage's attributes (speech coverage, uncovered stretches), None when it is not done."""
    return dict(outputs.attrs) if outputs is not None else None


def _part(data: SessionData, stage: str, read: Any, rows: dict[str, StageRow], attr: str) -> None:
    """Set ``data.<attr>`` from ``read()``; a stage whose outputs cannot be read (damaged) is shown as missing,
    with the reader's message, instead of failing the whole page."""
    try:
        setattr(data, attr, read())
    except EtherPrepError as exc:
        data.missing[attr] = f"stage {stage!r}: {exc}"


def _persons(data: SessionData) -> list[PersonData]:
    """One entry per person id of the face stage, their tracks merged (a person is on at most one track a
    frame), with the link the align stage made for them."""
    faces = data.faces
    assert faces is not None
    present = faces.present
    links: dict[int, tuple[str, float, str]] = {}
    if data.alignment is not None:
        t = data.alignment.links
        for p, s, c, src in zip(t.get("person", []), t.get("speaker", []), t.get("confidence", []),
                                t.get("source", []), strict=True):
            links.setdefault(int(p), (str(s), float(c), str(src)))
    roles = data.roles
    out = []
    for person in sorted({tr.person for tr in faces.tracks}):
        cols = [i for i, tr in enumerate(faces.tracks) if tr.person == person]
        au = np.full((len(faces.time), faces.au.shape[2]), np.nan)
        emotion = np.full((len(faces.time), faces.emotion.shape[2]), np.nan)
        filled = np.zeros(len(faces.time), bool)
        for c in cols:
            here = present[:, c] & ~filled
            au[here], emotion[here] = faces.au[here, c], faces.emotion[here, c]
            filled |= here
        speaker, confidence, source = links.get(person, ("", math.nan, ""))
        seen = faces.time[filled]
        out.append(PersonData(person, [faces.tracks[c].track for c in cols], int(filled.sum()),
                              float(seen[0]) if len(seen) else math.nan, float(seen[-1]) if len(seen) else math.nan,
                              au, emotion, speaker, roles.get(speaker, "") if speaker else "", confidence, source))
    return out


def _thumbnails(data: SessionData, recording: Path) -> None:
    """A few crops of each person's face, at times spread over their appearance, decoded from the recording."""
    from ..adapters.matplotlib_plot import encode_png
    from ..adapters.pyav import frames_at

    faces = data.faces
    assert faces is not None
    wanted: list[tuple[int, int, int]] = []  # (person index, frame, track column)
    for k, p in enumerate(data.persons):
        cols = [i for i, tr in enumerate(faces.tracks) if tr.person == p.person]
        frames = [(f, c) for f in np.flatnonzero(faces.present[:, cols].any(axis=1))
                  for c in cols if faces.present[f, c]]
        if not frames:
            continue
        n = min(THUMBNAILS_PER_PERSON, len(frames))
        for q in ((np.arange(n) + 0.5) / n):
            f, c = frames[int(q * (len(frames) - 1))]
            wanted.append((k, int(f), int(c)))
    if not wanted:
        return
    if not recording.is_file():
        for p in data.persons:
            p.thumbnail_note = f"recording not found at {recording}: no thumbnails"
        return
    try:
        decoded = frames_at(recording, [float(faces.time[f]) for _, f, _ in wanted])
    except EtherPrepError as exc:
        for p in data.persons:
            p.thumbnail_note = f"no thumbnails: {exc}"
        return
    for (k, f, c), frame in zip(wanted, decoded, strict=True):
        if frame is None:
            continue
        crop = _crop(frame.rgb, faces.box[f, c])
        if crop is not None:
            data.persons[k].thumbnails.append(Thumbnail(float(faces.time[f]), encode_png(crop)))


def _crop(rgb: np.ndarray, box: np.ndarray, margin: float = 0.3) -> np.ndarray | None:
    """The face box with a margin, scaled (nearest pixel) to :data:`THUMB_HEIGHT` pixels high."""
    if not np.isfinite(box).all():
        return None
    x0, y0, x1, y1 = (float(v) for v in box)
    w, h = x1 - x0, y1 - y0
    height, width = rgb.shape[:2]
    a, b = max(int(x0 - margin * w), 0), min(math.ceil(x1 + margin * w), width)
    c, d = max(int(y0 - margin * h), 0), min(math.ceil(y1 + margin * h), height)
    if b - a < 2 or d - c < 2:
        return None
    crop = rgb[c:d, a:b]
    scale = THUMB_HEIGHT / crop.shape[0]
    rows = np.minimum((np.arange(THUMB_HEIGHT) / scale).astype(int), crop.shape[0] - 1)
    n_cols = max(1, round(crop.shape[1] * scale))
    cols = np.minimum((np.arange(n_cols) / scale).astype(int), crop.shape[1] - 1)
    return crop[rows][:, cols]
