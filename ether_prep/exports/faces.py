"""``ether-prep export --format faces DEST_DIR``: one CSV per session in the shape researchers know from
OpenFace and py-feat: a row per analysed frame and face.

Columns: ``frame`` (analysed-frame index), ``time`` (s), ``track``, ``person`` (the same person across shot
cuts, gaps and re-entries; empty in stores written before face stage version 2), ``x0 y0 x1 y1`` (face box, pixels),
``score``, the AU columns ``AU01`` ... ``AU43``, the emotion columns ``anger`` ... ``neutral``, ``yaw``,
``pitch``, ``roll`` (degrees) and ``mouth_open``. Empty cells are NaN (an AU the backend does not
estimate). The file is written chunk by chunk, so a long session never sits in memory. De-identified
(``--deidentify``), the box columns are left out (see :func:`ether_prep.deidentify.face_column_shared`; person
ids are kept: they are numbers within the session) and the file is named by the session's alias.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..deidentify import Deidentifier, face_column_shared
from ..errors import StoreError
from ..store import SessionGroup

__all__ = ["write_faces_csv"]


def _fmt(v: float) -> str:
    return "" if np.isnan(v) else f"{v:.5g}"


def write_faces_csv(session: SessionGroup, dest_dir: Path, deid: Deidentifier | None = None) -> Path:
    """Write ``<session id>.faces.csv`` into ``dest_dir`` from the session's ``face`` stage; return its path."""
    try:
        group = session.stage_group("face")
    except StoreError as exc:
        raise StoreError(f"session {session.id!r}: no face results to export ({exc})") from exc
    if "au" not in group:  # the stage was skipped (no video stream)
        note = dict(group.attrs.get("stage", {})).get("note") or "face stage skipped"
        raise StoreError(f"session {session.id!r}: no face results to export ({note})")
    dest = Path(dest_dir) / f"{deid.alias(session.id) if deid is not None else session.id}.faces.csv"
    au_names = list(group["au"].attrs["names"])
    emotion_names = list(group["emotion"].attrs["names"])
    person = [str(int(x)) for x in group["person"][...]] if "person" in group else None
    header = ["frame", "time", "track", "person", "x0", "y0", "x1", "y1", "score", *au_names, *emotion_names,
              "yaw", "pitch", "roll", "mouth_open"]
    keep = [i for i, col in enumerate(header) if deid is None or face_column_shared(col)]
    times = group["time"][...]
    n_frames, n_tracks = group["box"].shape[:2]
    rows = max(1, group["au"].chunks[0])
    with open(dest, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow([header[i] for i in keep])
        for a in range(0, n_frames if n_tracks else 0, rows):
            b = min(a + rows, n_frames)
            box, score = group["box"][a:b], group["score"][a:b]
            au, emo, pose, mouth = group["au"][a:b], group["emotion"][a:b], group["pose"][a:b], group["mouth_open"][a:b]
            for f, k in zip(*np.nonzero(~np.isnan(box[:, :, 0])), strict=True):
                values = [*box[f, k], score[f, k], *au[f, k], *emo[f, k], *pose[f, k], mouth[f, k]]
                row = [a + f, f"{times[a + f]:.4f}", k, person[k] if person else "",
                       *(_fmt(float(v)) for v in values)]
                writer.writerow([row[i] for i in keep])
    return dest
