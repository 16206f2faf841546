"""Faces to speakers: which person on screen is which diarized speaker.

Pure numpy; the ``align`` stage feeds it what the face and speech stages stored.

Linking (:func:`link_persons`)
------------------------------
Faces are linked as *persons*: the face stage clusters its tracks by identity (a person keeps one id across
shot cuts, gaps and re-entries); without identities every track is its own person.

1. *Mouth signal* per person and analysed frame (:func:`mouth_signal`): the face stage's ``mouth_open``
   (jaw opening / lip aperture, 0..~1); where it is missing, the mean of AU25 (lips part) and AU26
   (jaw drop). NaN where the person has no face.
2. *Mouth movement* (:func:`mouth_movement`): the standard deviation of the mouth signal in a centred
   window (default 0.5 s). Talking opens and closes the mouth several times a second, so movement is
   high while a person speaks and ~0 for a still or silent face whatever its resting opening.
3. *Speech activity* (:func:`speech_activity`): 1 where a speaker's words (or utterances) cover a frame
   time, else 0, per diarized speaker.
4. Evidence, per person ``p`` and speaker ``s``: ``mouth_corr``, the Pearson correlation of ``p``'s
   movement with ``s``'s activity over the frames where ``p`` has a face (at least ``min_frames`` of them,
   else 0); and ``screen_corr``, the correlation of ``p``'s presence on screen with ``s``'s activity over
   all frames. Mouth movement tells speakers apart when several faces are on screen; screen time does so
   in edited video that shows whoever talks (there every visible face is talking, so its mouth alone says
   nothing about who). ``corr = max(mouth_corr, screen_corr)``: either can establish a link, and a face
   that is simply always on screen (screen_corr 0) is judged by its mouth.
5. Persons and speakers are matched one-to-one by maximising the summed ``corr``
   (``scipy.optimize.linear_sum_assignment``); a match with ``corr < min_corr`` is dropped, so a face
   that never speaks, or a speaker with no visible face, stays unlinked.
6. ``margin = corr - r_alt`` where ``r_alt`` is the best competing evidence in the same row or column
   (the same person with another speaker, or the same speaker with another person; 0 when there is no
   competitor). ``confidence = clip(corr, 0, 1) * clip(margin / corr, 0, 1)``: the evidence itself when
   no alternative comes close, 0 when another person or speaker fits as well.
7. Fragments: without identities (or when identity could not be measured) a face track that breaks and
   comes back is a new person. A still unlinked person never on screen together with a speaker's linked
   persons joins that speaker when its mean box overlaps the speaker's primary face's mean box (IoU >=
   ``min_seat_iou``: same seat; confidence = primary confidence x IoU), or else when its own evidence
   matches that speaker best (>= ``min_corr``; confidence as in 6). So one-to-one holds among faces on
   screen at the same time.

Hand-fixed links (:func:`parse_speaker_tracks`, :func:`apply_manual_links`)
-------------------------------------------------------------------------
``speaker_tracks`` in ``sessions.csv`` (``SPEAKER_00=1;SPEAKER_01=-``) replaces the automatic links of the
speakers and the persons of the tracks it names; ``-`` or ``none`` means the speaker has no visible face.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ..boxes import iou
from ..errors import ConfigError

__all__ = [
    "PersonLink",
    "apply_manual_links",
    "by_person",
    "frame_interval",
    "link_persons",
    "merge_tracks",
    "mouth_movement",
    "mouth_signal",
    "parse_speaker_tracks",
    "speech_activity",
    "str_array",
]


@dataclass(frozen=True)
class PersonLink:
    """A person (all face tracks of one identity) and the diarized speaker they are linked to
    (``speaker == ""`` when unlinked). ``corr`` is the evidence used, ``max(mouth_corr, screen_corr)``."""

    person: int
    speaker: str
    confidence: float
    corr: float
    mouth_corr: float
    screen_corr: float
    margin: float
    n_frames: int


def str_array(values: Sequence[object] | np.ndarray) -> np.ndarray:
    """A fixed-width unicode array from anything (zarr returns numpy's variable-width StringDType)."""
    return np.array([str(v) for v in values], dtype=str) if len(values) else np.array([], dtype=str)


def mouth_signal(mouth_open: np.ndarray | None, au: np.ndarray | None = None,
                 au_names: Sequence[str] = ()) -> np.ndarray:
    """(F, T) mouth opening per frame and track: ``mouth_open``, else mean(AU25, AU26); NaN = no face."""
    fallback = None
    if au is not None and au.size:
        cols = [list(au_names).index(n) for n in ("AU25", "AU26") if n in au_names]
        if cols:
            with warnings.catch_warnings():  # all-NaN rows (no face) are meant to stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                fallback = np.nanmean(np.asarray(au, dtype=np.float64)[..., cols], axis=-1)
    if mouth_open is None:
        if fallback is None:
            raise ValueError("no mouth activity: the face stage stored neither mouth_open nor AU25/AU26")
        return fallback
    sig = np.asarray(mouth_open, dtype=np.float64).copy()
    if fallback is not None:
        missing = ~np.isfinite(sig)
        sig[missing] = fallback[missing]
    return sig


def frame_interval(times: np.ndarray) -> float:
    """The typical spacing of analysed frames (median difference), 1.0 when there are fewer than 2."""
    times = np.asarray(times, dtype=np.float64)
    if times.size < 2:
        return 1.0
    return float(np.median(np.diff(times)))


def mouth_movement(signal: np.ndarray, times: np.ndarray, window_s: float = 0.5) -> np.ndarray:
    """(F, T) standard deviation of the mouth signal in a centred window of ``window_s`` (NaN where no face).

    Only frames with a face enter a window; a frame whose window holds fewer than 2 such frames gets 0.
    """
    signal = np.asarray(signal, dtype=np.float64)
    if signal.ndim == 1:
        signal = signal[:, None]
    n_frames = signal.shape[0]
    half = max(1, round(window_s / frame_interval(times) / 2))
    present = np.isfinite(signal)
    x = np.where(present, signal, 0.0)
    # Windowed sums through cumulative sums: O(F*T) whatever the window.
    zero = np.zeros((1, signal.shape[1]))
    c1 = np.concatenate([zero, np.cumsum(x, axis=0)])
    c2 = np.concatenate([zero, np.cumsum(x * x, axis=0)])
    cn = np.concatenate([zero, np.cumsum(present, axis=0)])
    lo = np.clip(np.arange(n_frames) - half, 0, n_frames)
    hi = np.clip(np.arange(n_frames) + half + 1, 0, n_frames)
    n = cn[hi] - cn[lo]
    s1 = c1[hi] - c1[lo]
    s2 = c2[hi] - c2[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        var = np.where(n >= 2, s2 / np.maximum(n, 1) - (s1 / np.maximum(n, 1)) ** 2, 0.0)
    move = np.sqrt(np.clip(var, 0.0, None))
    move[~present] = np.nan
    return move


def speech_activity(speakers: Sequence[str], word_speaker: Sequence[str], word_start: np.ndarray,
                    word_end: np.ndarray, times: np.ndarray) -> np.ndarray:
    """(S, F) 1.0 where one of speaker ``s``'s intervals covers frame time ``times[f]``, else 0.0."""
    times = np.asarray(times, dtype=np.float64)
    act = np.zeros((len(speakers), times.size))
    word_speaker = str_array(word_speaker)
    starts = np.asarray(word_start, dtype=np.float64)
    ends = np.asarray(word_end, dtype=np.float64)
    for i, spk in enumerate(speakers):
        sel = word_speaker == spk
        for a, b in zip(starts[sel], ends[sel], strict=True):
            act[i, (times >= a) & (times <= b)] = 1.0
    return act


def _masked_corr(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant."""
    x = x - x.mean()
    y = y - y.mean()
    den = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / den) if den > 1e-12 else 0.0


@dataclass
class _Evidence:
    """Per person (row) and speaker (column): mouth and on-screen correlations, their maximum, and how many
    frames each person is present in."""

    persons: list[int]
    speakers: Sequence[str]
    present: np.ndarray  # (F, P)
    n_present: np.ndarray  # (P,)
    mouth: np.ndarray
    screen: np.ndarray
    corr: np.ndarray  # max(mouth, screen): the evidence a link rests on

    def link(self, t: int, s: int | None = None, confidence: float = 0.0, margin: float = 0.0) -> PersonLink:
        """Person ``t`` linked to speaker index ``s``, or unlinked (evidence of its best speaker) when None."""
        corr = self.corr
        best = s if s is not None else (int(np.argmax(corr[t])) if corr.shape[1] else None)
        ev = (corr[t, best], self.mouth[t, best], self.screen[t, best]) if best is not None else (0.0, 0.0, 0.0)
        return PersonLink(self.persons[t], str(self.speakers[s]) if s is not None else "", float(confidence),
                          *(float(x) for x in ev), float(margin), int(self.n_present[t]))


def _evidence(movement: np.ndarray, activity: np.ndarray, speakers: Sequence[str], persons: list[int],
              min_frames: int) -> _Evidence:
    n = movement.shape[1] if movement.ndim == 2 else 0
    present = np.isfinite(movement)
    mouth = np.zeros((n, len(speakers)))
    screen = np.zeros((n, len(speakers)))
    n_present = present.sum(axis=0).astype(int) if n else np.zeros(0, int)
    for t in range(n):
        ok = present[:, t]
        if n_present[t] < min_frames:
            continue
        for s in range(len(speakers)):
            mouth[t, s] = _masked_corr(movement[ok, t], activity[s, ok])
            # On screen while this speaker talks, off screen while they are silent (edited video that
            # shows whoever talks): evidence a mouth cannot give, since the face is seen only while talking.
            screen[t, s] = _masked_corr(ok.astype(np.float64), activity[s])
    return _Evidence(persons, speakers, present, n_present, mouth, screen, np.maximum(mouth, screen))


def _link_primary(ev: _Evidence, corr: np.ndarray, links: dict[int, PersonLink],
                  min_corr: float) -> dict[int, list[int]]:
    """Step 1, one-to-one among all persons: each speaker's primary face. Returns speaker index -> linked
    person columns."""
    from ..adapters.scipy_optimize import best_assignment

    rows, cols = best_assignment(corr)
    owner: dict[int, list[int]] = {}
    for t, s in zip(rows, cols, strict=True):
        r = float(corr[t, s])
        if r < min_corr:
            continue
        rivals = np.concatenate([np.delete(corr[t], s), np.delete(corr[:, s], t)])
        margin = r - max(float(rivals.max()) if rivals.size else 0.0, 0.0)
        confidence = float(np.clip(r, 0, 1) * np.clip(margin / r, 0, 1))
        links[t] = ev.link(t, int(s), confidence, margin)
        owner.setdefault(int(s), []).append(int(t))
    return owner


def _fragment_candidate(ev: _Evidence, corr: np.ndarray, links: dict[int, PersonLink], t: int, s: int, p: int,
                        boxes: np.ndarray | None, min_corr: float, min_frames: int,
                        min_seat_iou: float) -> tuple[float, int, float] | None:
    """(confidence, speaker, margin) of fragment ``t`` as speaker ``s`` whose primary face is ``p``, or None."""
    iou_ = iou(boxes[t], boxes[p]) if boxes is not None else 0.0
    if iou_ >= min_seat_iou:
        return (links[p].confidence * iou_, s, links[p].margin)
    if ev.n_present[t] >= min_frames and corr[t, s] >= min_corr and corr[t, s] == corr[t].max():
        rival = max(float(np.delete(corr[t], s).max()) if corr.shape[1] > 1 else 0.0, 0.0)
        r = float(corr[t, s])
        return (float(np.clip(r, 0, 1) * np.clip((r - rival) / r, 0, 1)), s, r - rival)
    return None


def link_persons(movement: np.ndarray, activity: np.ndarray, speakers: Sequence[str],
                 persons: Sequence[int] | None = None, min_corr: float = 0.2, min_frames: int = 10,
                 boxes: np.ndarray | None = None, min_seat_iou: float = 0.3) -> tuple[list[PersonLink], np.ndarray]:
    """Link persons (or single face tracks) to speakers (see the module docstring); returns one link per
    person and the evidence matrix ``max(mouth_corr, screen_corr)``.

    ``movement`` is (F, P) (NaN where a person has no face), ``activity`` (S, F). ``boxes`` (P, 4), the
    persons' mean boxes, enables seat continuity for fragments. ``speaker == ""`` means unlinked.
    """
    movement = np.asarray(movement, dtype=np.float64)
    activity = np.asarray(activity, dtype=np.float64)
    n = movement.shape[1] if movement.ndim == 2 else 0
    ev = _evidence(movement, activity, speakers, list(range(n)) if persons is None else [int(p) for p in persons],
                   min_frames)
    corr = ev.corr
    links = {t: ev.link(t) for t in range(n)}
    if not (n and len(speakers)):
        return [links[t] for t in range(n)], corr
    owner = _link_primary(ev, corr, links, min_corr)
    # 2. fragments: a face never on screen together with a speaker's faces is that speaker when it sits
    #    where the primary face sat (seat continuity), or when its own evidence matches that speaker.
    primary = {s: ts[0] for s, ts in owner.items()}
    for t in sorted((t for t in range(n) if not links[t].speaker), key=lambda t: -ev.n_present[t]):
        best: tuple[float, int, float] | None = None  # confidence, speaker, margin
        for s, ts in owner.items():
            if any((ev.present[:, t] & ev.present[:, u]).any() for u in ts):
                continue  # on screen together: two different people
            cand = _fragment_candidate(ev, corr, links, t, s, primary[s], boxes, min_corr, min_frames, min_seat_iou)
            if cand is not None and (best is None or cand[0] > best[0]):
                best = cand
        if best is not None:
            conf, s, margin = best
            links[t] = ev.link(t, s, conf, margin)
            owner[s].append(t)
    return [links[t] for t in range(n)], corr


def merge_tracks(features: np.ndarray, present: np.ndarray, cols: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """One speaker's (F, D) face features and (F,) presence from the person columns ``cols`` linked to them.

    The persons never overlap in time (see :func:`link_persons`); where they would, the first wins.
    """
    n_frames = present.shape[0]
    feats = np.full((n_frames, features.shape[2]), np.nan)
    pres = np.zeros(n_frames, dtype=bool)
    for c in cols:
        take = present[:, c] & ~pres
        feats[take] = features[take, c]
        pres |= take
    return feats, pres


def parse_speaker_tracks(value: str, where: str) -> dict[str, int | None]:
    """``SPEAKER_00=1;SPEAKER_01=-`` -> {"SPEAKER_00": 1, "SPEAKER_01": None}."""
    out: dict[str, int | None] = {}
    for part in filter(None, (p.strip() for p in value.replace(",", ";").split(";"))):
        spk, sep, trk = part.partition("=")
        if not sep:
            raise ConfigError(f"{where}: speaker_tracks entry {part!r} must look like SPEAKER_00=1 "
                              f"(or SPEAKER_00=- for no face)")
        trk = trk.strip().lower()
        try:
            out[spk.strip()] = None if trk in ("-", "none", "") else int(trk.removeprefix("track:"))
        except ValueError:
            raise ConfigError(f"{where}: speaker_tracks entry {part!r}: track must be an integer") from None
    return out


def apply_manual_links(links: list[PersonLink], manual: dict[str, int | None]) -> list[PersonLink]:
    """Hand-fixed speaker->person links replace the automatic ones for the speakers and persons they name."""
    fixed = {p: spk for spk, p in manual.items() if p is not None}
    out = []
    for link in links:
        if link.person in fixed:
            out.append(replace(link, speaker=fixed[link.person], confidence=1.0))
        elif link.speaker in manual:
            out.append(replace(link, speaker="", confidence=0.0, margin=0.0))
        else:
            out.append(link)
    return out


def by_person(person: np.ndarray, present: np.ndarray, *values: np.ndarray) -> tuple[list[int], np.ndarray,
                                                                                      list[np.ndarray]]:
    """Collapse track columns (axis 1) into person columns: person ids (sorted), (F, P) presence, and each
    (F, T, ...) array as (F, P, ...) (NaN where the person has no face).

    A person's tracks do not share frames (identity clustering keeps two faces seen at once apart); where
    they would, the track seen in more frames wins.
    """
    person = np.asarray(person, dtype=np.int64)
    persons = sorted({int(p) for p in person})
    n_frames = present.shape[0]
    out_present = np.zeros((n_frames, len(persons)), dtype=bool)
    out = [np.full((n_frames, len(persons), *v.shape[2:]), np.nan) for v in values]
    order = np.argsort(-present.sum(axis=0), kind="stable")
    for t in order:
        j = persons.index(int(person[t]))
        take = present[:, t] & ~out_present[:, j]
        out_present[take, j] = True
        for src, dst in zip(values, out, strict=True):
            dst[take, j] = src[take, t]
    return persons, out_present, out
