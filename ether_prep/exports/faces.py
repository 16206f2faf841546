"""Face tables, one CSV per session, a row per analysed frame and face, written chunk by chunk (a long session
never sits in memory):

- ``faces``: py-feat's layout, so ``feat.utils.io.read_feat`` loads it with working ``.aus``, ``.emotions``,
  ``.poses`` and ``.facebox`` views: ``frame`` (analysed-frame index), ``FaceRectX/Y/Width/Height``,
  ``FaceScore``, ``x_0..x_67``/``y_0..y_67`` (dlib-68 landmarks; MediaPipe's mesh sampled at the same points),
  the AUs ``AU01`` ... ``AU43`` and emotions ``anger`` ... ``neutral`` as stored, ``Pitch``, ``Roll``,
  ``Yaw`` (degrees; ``X``, ``Y``, ``Z`` empty), py-feat's gaze columns ``gaze_pitch`` (+ up), ``gaze_yaw`` (+
  towards the person's right) and ``gaze_angle`` (from straight ahead; radians),
  py-feat's ``Identity`` (``Person_<person>``, so
  ``Fex.identities`` works) and ``input`` (the recording, as the store names it), plus ours: ``time`` (s),
  ``track``, ``person`` (the same person across cuts, gaps and re-entries) and ``mouth_open``;
- ``openface``: OpenFace 2.x names in OpenFace's order, its header separated by ``", "`` as OpenFace writes it
  (rows by plain commas, so an empty cell reads as NaN in plain pandas), which py-feat's
  ``feat.utils.io.read_openface`` reads: ``frame`` from 1, ``face_id`` = the person, ``timestamp``,
  ``confidence``, ``success`` (0 on a row for a frame without any face), ``gaze_0_*``/``gaze_1_*`` (unit
  vectors) and ``gaze_angle_x/y`` (radians) in OpenFace's conventions (:mod:`ether_prep.face.gaze`; per-eye
  vectors empty with the pyfeat backend, which gives one direction per face), ``pose_Tx/Ty/Tz`` empty (not
  computed), ``pose_Rx/Ry/Rz`` (radians, OpenFace's signs:
  pitch and roll flipped from py-feat's), ``x_0..x_67``/``y_0..y_67``, ``AUxx_r`` for the AUs OpenFace has (our
  AU43, eyes closed, is its AU45, blink), scaled x5 to OpenFace's 0-5 range, and ``AUxx_c`` presence, 1 where
  the stored AU value is at least 0.5: with the mediapipe backend both stay blendshape-derived scores, not
  FACS-coded intensities or OpenFace's classifiers. An AU the backend does not give is an empty column.

Empty cells are values a backend does not give. De-identified (``--deidentify``), the columns that show where
a face is (boxes, landmarks) are left out (:func:`ether_prep.deidentify.face_column_shared`); person ids are
kept (numbers within the session) and the file is named by the session's alias.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..deidentify import Deidentifier, face_column_shared
from ..errors import StoreError
from ..face import GAZE_NAMES
from ..face.features import DLIB68_FROM_MP478
from ..face.gaze import pyfeat_gaze
from ..stages.face import FaceBlock, FaceStream, open_faces
from ..store import SessionGroup
from . import NothingToExport

__all__ = ["write_faces_csv", "write_openface_csv"]

# OpenFace 2's AU intensity (_r) and presence (_c) columns, in its order, and our AU each comes from.
_OPENFACE_AU_LIST = ("AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15",
                     "AU17", "AU20", "AU23", "AU25", "AU26")
_OURS = {"AU45": "AU43"}  # OpenFace's blink is our eyes closed
_OPENFACE_AUS = {f"{au}_r": _OURS.get(au, au) for au in (*_OPENFACE_AU_LIST, "AU45")}
_OPENFACE_PRESENCE = {f"{au}_c": _OURS.get(au, au) for au in (*_OPENFACE_AU_LIST, "AU28", "AU45")}
_PRESENT_AT = 0.5  # an AU value at or above which OpenFace's presence column says 1


@dataclass(frozen=True)
class _Block:
    """A block of the face stage's frames, its landmarks as dlib's 68 points (F, T, 68, 2)."""

    faces: FaceBlock
    landmarks68: np.ndarray

    def __getattr__(self, name: str) -> object:  # frames, times, box, ... as the face stage gives them
        return getattr(self.faces, name)


def _faces(session: SessionGroup) -> FaceStream:
    try:
        faces = open_faces(session)
    except StoreError as exc:
        raise StoreError(f"session {session.id!r}: no face results to export ({exc})") from exc
    if faces is None:  # the stage was skipped: a recording without video has no faces to export
        note = session.stage_state("face").note or "face stage skipped"
        raise NothingToExport(f"session {session.id!r}: no faces to export ({note})")
    return faces


def _blocks(faces: FaceStream) -> Iterator[_Block]:
    for blk in faces.blocks():
        lm = blk.landmarks
        if lm is None:
            lm68 = np.full((*blk.box.shape[:2], 68, 2), np.nan)
        else:
            lm68 = (lm[:, :, DLIB68_FROM_MP478] if lm.shape[2] == 478 else lm)[..., :2]
        yield _Block(blk, lm68)


def _fmt(v: float) -> str:
    return "" if not np.isfinite(v) else f"{v:.5g}"


class _Csv:
    """A CSV file whose columns a de-identified export may thin out (rows are given in full)."""

    def __init__(self, dest: Path, header: list[str], deid: Deidentifier | None, header_sep: str = ",") -> None:
        self.keep = [i for i, col in enumerate(header) if deid is None or face_column_shared(col)]
        self._fh = open(dest, "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed by __exit__
        self._writer = csv.writer(self._fh)
        self._fh.write(header_sep.join(header[i] for i in self.keep) + "\r\n")  # names hold no separator

    def row(self, values: list[object]) -> None:
        self._writer.writerow([values[i] for i in self.keep])

    def __enter__(self) -> _Csv:
        return self

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _dest(session: SessionGroup, dest_dir: Path, suffix: str, deid: Deidentifier | None) -> Path:
    return Path(dest_dir) / f"{deid.alias(session.id) if deid is not None else session.id}.{suffix}.csv"


def write_faces_csv(session: SessionGroup, dest_dir: Path, deid: Deidentifier | None = None) -> Path:
    """``<session id>.faces.csv`` in py-feat's layout (see the module docstring); returns its path."""
    faces = _faces(session)
    au_names, emotion_names, person = faces.au_names, faces.emotion_names, faces.person
    source = deid.alias(session.id) if deid is not None else str(session.info.get("relpath", session.id))
    header = ["frame", "time", "track", "person", "Identity", "input", "FaceRectX", "FaceRectY", "FaceRectWidth",
              "FaceRectHeight", "FaceScore", *(f"x_{i}" for i in range(68)), *(f"y_{i}" for i in range(68)), *au_names,
              *emotion_names, "Pitch", "Roll", "Yaw", "X", "Y", "Z", "gaze_pitch", "gaze_yaw", "gaze_angle",
              "mouth_open"]
    dest = _dest(session, dest_dir, "faces", deid)
    with _Csv(dest, header, deid) as out:
        for blk in _blocks(faces):
            gaze = pyfeat_gaze(blk.gaze[..., 6:]).reshape(*blk.gaze.shape[:2], 3)
            for f, k in zip(*np.nonzero(np.isfinite(blk.box[:, :, 0])), strict=True):
                x0, y0, x1, y1 = blk.box[f, k]
                yaw, pitch, roll = blk.pose[f, k]
                values = [x0, y0, x1 - x0, y1 - y0, blk.score[f, k], *blk.landmarks68[f, k, :, 0],
                          *blk.landmarks68[f, k, :, 1], *blk.au[f, k], *blk.emotion[f, k], pitch, roll, yaw,
                          np.nan, np.nan, np.nan, *gaze[f, k], blk.mouth[f, k]]
                pid = "" if person is None else int(person[k])
                row = [int(blk.frames[f]), f"{blk.times[f]:.4f}", int(k), pid, "" if pid == "" else f"Person_{pid}",
                       source, *(_fmt(float(v)) for v in values)]
                out.row(row)
    return dest


def write_openface_csv(session: SessionGroup, dest_dir: Path, deid: Deidentifier | None = None) -> Path:
    """``<session id>.openface.csv`` with OpenFace 2.x column names (see the module docstring)."""
    faces = _faces(session)
    au_index = {name: i for i, name in enumerate(faces.au_names)}
    intensity = [au_index.get(au) for au in _OPENFACE_AUS.values()]
    presence = [au_index.get(au) for au in _OPENFACE_PRESENCE.values()]
    face_id = faces.person if faces.person is not None else np.arange(faces.n_tracks)
    header = ["frame", "face_id", "timestamp", "confidence", "success", *GAZE_NAMES, "pose_Tx", "pose_Ty",
              "pose_Tz", "pose_Rx", "pose_Ry", "pose_Rz", *(f"x_{i}" for i in range(68)),
              *(f"y_{i}" for i in range(68)), *_OPENFACE_AUS, *_OPENFACE_PRESENCE]
    dest = _dest(session, dest_dir, "openface", deid)
    empty = [""] * (len(header) - 5)
    unknown = [""] * 3  # head position: not computed
    with _Csv(dest, header, deid, header_sep=", ") as out:
        for blk in _blocks(faces):
            present = np.isfinite(blk.box[:, :, 0])
            for f in range(len(blk.frames)):
                stamp = f"{blk.times[f]:.3f}"
                seen = np.flatnonzero(present[f])
                if not seen.size:  # OpenFace writes a row for a frame without a face, success 0
                    out.row([int(blk.frames[f]) + 1, 0, stamp, "0", 0, *empty])
                for k in seen:
                    yaw, pitch, roll = np.radians(blk.pose[f, k].astype(np.float64))
                    au = blk.au[f, k].astype(np.float64)
                    values = [-pitch, yaw, -roll, *blk.landmarks68[f, k, :, 0], *blk.landmarks68[f, k, :, 1],
                              *(np.nan if j is None else 5.0 * au[j] for j in intensity)]
                    on = ["" if j is None or not np.isfinite(au[j]) else int(au[j] >= _PRESENT_AT)
                          for j in presence]
                    out.row([int(blk.frames[f]) + 1, int(face_id[k]), stamp, _fmt(float(blk.score[f, k])), 1,
                             *(_fmt(float(v)) for v in blk.gaze[f, k]), *unknown, *(_fmt(float(v)) for v in values),
                             *on])
    return dest
