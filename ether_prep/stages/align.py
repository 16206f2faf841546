"""Stage ``align``: face tracks to speakers, per-utterance face tensors, roles, dialogue pairs, cues.

Reads ``utterances/{words,utterances}``, ``face/*`` and ``audio`` attributes; writes per session::

    align/                      attrs: roles, role_assumed, role_source, speakers, feature_names,
                                       features_available, rate_hz, pad_s, cue_params, n_utterances, n_pairs
      links/                    table, one row per face track: track, speaker ("" = unlinked), confidence,
                                corr, margin, n_frames, source ("auto" | "metadata")
      utterances/               table, one row per utterance: id, index, start, end, speaker, role,
                                listener, listener_role, speaker_track, listener_track (-1 = no face; the
                                best-linked of the person's tracks), text,
                                word_start, word_end, audio_start, audio_end (samples in audio/waveform),
                                row_start, n_steps, grid_t0, speaker_coverage, listener_coverage, cue scores
                                (text_valence, text_arousal, text_distress, distress_word, face_valence,
                                face_expressivity, mismatch), flags (";"-joined) and one bool column per flag
      tensors/                  ragged rows (values + offsets, see ether_prep.store.write_ragged):
        offsets   (N+1,)        utterance i is rows offsets[i]:offsets[i+1]
        time      (L,)  float64 grid times in seconds
        face      (L, 2, D)     float32, [:, 0] speaker's face, [:, 1] listener's face; 0 where masked
        mask      (L, 2) bool   a face was present at that step
      pooled      (N, 2, 3, D)  float32 [speaker|listener] x [mean, std, max] over the core span; NaN if none
      coverage    (N, 2)        fraction of core steps with a face (speaker, listener)
      padded/                   only with max_len > 0: face (N, max_len, 2, D), mask (N, max_len, 2),
                                length (N,); longer utterances are cut at max_len
      pairs/                    table: id, client_utterance, counsellor_utterance, client_utterances,
                                counsellor_utterances (";"-joined ids), start, end, gap, client_text,
                                counsellor_text, client_mismatch, client_flags

The store root gets ``utterances.parquet`` and ``dialogue_pairs.parquet`` (see :meth:`AlignStage.finalize`).

Roles. Per-session metadata (``sessions.csv`` beside the recordings, or the file named by ``roles_file``)
may hold, besides ``file``:

- ``client``, ``counsellor``: a diarized speaker label (``SPEAKER_01``) or a face track (``track:1``);
- ``speaker_tracks``: ``SPEAKER_00=1;SPEAKER_01=0`` fixes speaker-to-track links by hand (``-`` or
  ``none`` = no visible face); unnamed speakers and tracks are still linked automatically.

Without roles, ``role_heuristic`` decides and ``role_assumed`` is true: ``most_talk_is_client`` (default;
the speaker with the most speech is the client, the next one the counsellor: in counselling the client
usually talks most), ``first_speaker_is_counsellor`` (the counsellor opens the session), or ``none``
(every role ``unknown``; no dialogue pairs). Other speakers get the role ``other``. The listener of an
utterance is the other main participant (client <-> counsellor); for ``other`` speakers, the client.

Example (pipelines.yaml)::

    - stage: align
      params: {rate_hz: 10.0, pad_s: 0.5, max_len: 0, role_heuristic: most_talk_is_client}
"""

from __future__ import annotations

import csv
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..alignment import (
    TrackLink,
    frame_interval,
    link_tracks,
    merge_tracks,
    mouth_movement,
    mouth_signal,
    offsets_from_lengths,
    pair_dialogue,
    pool,
    resample_track,
    speech_activity,
    str_array,
    track_presence,
    utterance_grid,
)
from ..cues import FLAGS, CueParams, face_cues, text_cues, utterance_cues
from ..errors import ConfigError, StageError
from ..store import write_array, write_ragged, write_table
from .base import Stage

if TYPE_CHECKING:
    import zarr

    from ..records import Session
    from ..store import SessionGroup, Store

__all__ = ["AlignStage", "feature_names"]

HEURISTICS = ("most_talk_is_client", "first_speaker_is_counsellor", "none")
_FACE_BLOCKS = (("au", "au_names"), ("emotion", "emotion_names"))
POSE_NAMES = ("yaw", "pitch", "roll")


@dataclass(frozen=True)
class AlignParams:
    """Resampling, linking, roles, pairing and cue thresholds (see the module docstring)."""

    rate_hz: float = 10.0
    pad_s: float = 0.5
    max_len: int = 0  # > 0 also writes fixed-length padded tensors of this many steps
    movement_window_s: float = 0.5
    min_link_corr: float = 0.2
    min_link_frames: int = 10
    min_seat_iou: float = 0.3  # a track fragment in the same place as a speaker's face is that speaker
    role_heuristic: str = "most_talk_is_client"
    roles_file: str = ""  # a CSV like sessions.csv (absolute, or relative to the recording's folder)
    max_pair_gap_s: float = 10.0
    min_face_coverage: float = 0.5
    distress_min: float = 0.35
    neutral_max: float = 0.2
    neutral_valence: float = 0.1
    polar: float = 0.5

    def validate(self) -> None:
        if not 0.5 <= self.rate_hz <= 200:
            raise ValueError(f"rate_hz must be within 0.5..200, got {self.rate_hz}")
        if self.pad_s < 0 or self.max_len < 0 or self.max_pair_gap_s < 0:
            raise ValueError("pad_s, max_len and max_pair_gap_s must not be negative")
        if self.role_heuristic not in HEURISTICS:
            raise ValueError(f"role_heuristic {self.role_heuristic!r} is not one of {', '.join(HEURISTICS)}")

    def cue_params(self) -> CueParams:
        return CueParams(self.min_face_coverage, self.distress_min, self.neutral_max, self.neutral_valence,
                         self.polar)


def feature_names(au_names: list[str], emotion_names: list[str]) -> list[str]:
    """Column names of the per-step face feature vector: AUs, emotions, head pose, mouth opening."""
    return [*au_names, *emotion_names, *POSE_NAMES, "mouth_open"]


# ------------------------------------------------------------------------------------------- face input
@dataclass
class _Faces:
    times: np.ndarray  # (F,)
    features: np.ndarray  # (F, T, D) float64, NaN where absent or not provided
    present: np.ndarray  # (F, T) bool
    movement: np.ndarray  # (F, T)
    tracks: list[int]
    names: list[str]
    boxes: np.ndarray | None = None  # (T, 4) mean box per track


def _load_faces(store: SessionGroup, window_s: float) -> _Faces | None:
    """The face stage's outputs as one (F, T, D) feature array; None for a skipped or faceless session."""
    state = store.stage_state("face")
    if state.state == "skipped":
        return None
    face = store.stage_group("face")
    if "time" not in face or "au" not in face:
        return None
    times = np.asarray(face["time"][...], dtype=np.float64)
    au = np.asarray(face["au"][...], dtype=np.float64)
    n_frames, n_tracks = au.shape[:2] if au.ndim == 3 else (times.size, 0)
    attrs = dict(face.attrs)
    au_names = list(attrs.get("au_names") or face["au"].attrs.get("names") or [])
    emo = np.asarray(face["emotion"][...], dtype=np.float64) if "emotion" in face else \
        np.full((n_frames, n_tracks, 0), np.nan)
    emo_names = list(attrs.get("emotion_names") or (face["emotion"].attrs.get("names") if "emotion" in face
                                                    else []) or [])
    pose = np.asarray(face["pose"][...], dtype=np.float64) if "pose" in face else \
        np.full((n_frames, n_tracks, 3), np.nan)
    mouth_open = np.asarray(face["mouth_open"][...], dtype=np.float64) if "mouth_open" in face else None
    score = np.asarray(face["score"][...], dtype=np.float64) if "score" in face else None
    box = np.asarray(face["box"][...], dtype=np.float64) if "box" in face else None
    if n_tracks == 0:
        return _Faces(times, np.zeros((n_frames, 0, 0)), np.zeros((n_frames, 0), bool),
                      np.zeros((n_frames, 0)), [], feature_names(au_names, emo_names))
    present = track_presence(score, box)
    mouth = mouth_signal(mouth_open, au, au_names)
    mouth[~present] = np.nan
    features = np.concatenate([au, emo, pose, (mouth_open if mouth_open is not None else mouth)[..., None]],
                              axis=-1)
    features[~present] = np.nan
    tracks = list(range(n_tracks))
    if "tracks" in face and "track" in face["tracks"]:
        tracks = [int(t) for t in face["tracks"]["track"][...]][:n_tracks] or tracks
    mean_box = None
    if box is not None:
        with warnings.catch_warnings():  # a track with no box at all keeps NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            mean_box = np.nanmean(np.where(present[..., None], box, np.nan), axis=0)
    return _Faces(times, features, present, mouth_movement(mouth, times, window_s), tracks,
                  feature_names(au_names, emo_names), mean_box)


def _nanmax(values: list[float]) -> float:
    """The largest non-NaN value; NaN when there is none (no face to judge)."""
    finite = [v for v in values if np.isfinite(v)]
    return float(max(finite)) if finite else float("nan")


def _plain(table: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Zarr string columns come back as numpy StringDType; make them plain unicode arrays."""
    return {k: str_array(v) if v.dtype.kind in ("T", "O", "U") else v for k, v in table.items()}


# ---------------------------------------------------------------------------------------------- roles
def _meta(session: Session, roles_file: str) -> dict[str, str]:
    """Session metadata: the ``sessions.csv`` row, overridden by the row of ``roles_file`` if given."""
    meta = dict(session.meta)
    if not roles_file:
        return meta
    path = Path(roles_file)
    path = path if path.is_absolute() else Path(session.path).parent / path
    if not path.is_file():
        return meta
    with path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "file" not in reader.fieldnames:
            raise ConfigError(f"{path}: roles file needs a 'file' column naming each recording; "
                              f"found {reader.fieldnames}")
        for row in reader:
            if (row.get("file") or "").strip() in (Path(session.path).name, session.relpath):
                meta.update({k: (v or "").strip() for k, v in row.items() if k != "file" and v})
    return meta


def _parse_tracks(value: str, where: str) -> dict[str, int | None]:
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


def _apply_manual_links(links: list[TrackLink], manual: dict[str, int | None]) -> list[TrackLink]:
    """Hand-fixed speaker->track links replace the automatic ones for the speakers and tracks they name."""
    fixed_tracks = {t for t in manual.values() if t is not None}
    out = []
    for link in links:
        if link.track in fixed_tracks:
            spk = next(s for s, t in manual.items() if t == link.track)
            out.append(TrackLink(link.track, spk, 1.0, link.corr, link.margin, link.n_frames))
        elif link.speaker in manual:
            out.append(TrackLink(link.track, "", 0.0, link.corr, 0.0, link.n_frames))
        else:
            out.append(link)
    return out


def _resolve_role(value: str, track_to_speaker: dict[int, str], where: str) -> str:
    value = value.strip()
    if value.lower().startswith("track:"):
        try:
            trk = int(value.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"{where}: role value {value!r}: track must be an integer (track:0)") from None
        spk = track_to_speaker.get(trk)
        if not spk:
            raise StageError(f"{where}: role given as {value!r}, but face track {trk} is linked to no "
                             f"speaker; give the speaker label instead, or fix the link with speaker_tracks")
        return spk
    return value


def assign_roles(speakers: list[str], talk: dict[str, float], first: list[str], meta: dict[str, str],
                 track_to_speaker: dict[int, str], heuristic: str,
                 where: str) -> tuple[dict[str, str], bool, str]:
    """speaker -> role ("client", "counsellor", "other", "unknown"), whether assumed, and where from."""
    given = {r: meta[r] for r in ("client", "counsellor") if meta.get(r)}
    if given:
        roles = {s: "other" for s in speakers}
        for role, value in given.items():
            roles[_resolve_role(value, track_to_speaker, where)] = role
        return roles, False, "metadata"
    if heuristic == "none" or not speakers:
        return {s: "unknown" for s in speakers}, True, "none"
    roles = {s: "other" for s in speakers}
    if heuristic == "most_talk_is_client":
        ranked = sorted(speakers, key=lambda s: (-talk.get(s, 0.0), s))
        roles[ranked[0]] = "client"
        if len(ranked) > 1:
            roles[ranked[1]] = "counsellor"
    else:  # first_speaker_is_counsellor
        roles[first[0]] = "counsellor"
        rest = [s for s in first if s != first[0]]
        if rest:
            roles[rest[0]] = "client"
    return roles, True, heuristic


def _listener(speaker: str, roles: dict[str, str]) -> str:
    by_role = {r: s for s, r in roles.items() if r in ("client", "counsellor")}
    role = roles.get(speaker, "unknown")
    if role == "client":
        return by_role.get("counsellor", "")
    if role == "counsellor":
        return by_role.get("client", "")
    if role == "other":
        return by_role.get("client", "")
    # unknown roles: the most frequent other speaker is found by the caller
    return ""


# ---------------------------------------------------------------------------------------------- stage
class AlignStage(Stage):
    """Link faces to speakers and cut per-utterance speaker/listener face tensors (see the module docstring)."""

    name = "align"
    version = "1"
    family = "align"
    requires = ("utterances", "face")
    needs_stream = None
    Params = AlignParams
    libraries = ("vaderSentiment", "scipy", "pyarrow")

    def fingerprint_inputs(self, session: Session) -> dict[str, Any]:
        # Roles and hand-fixed links from sessions.csv (or roles_file) change the output; notes do not.
        meta = _meta(session, self.params.roles_file)
        return {k: meta[k] for k in ("client", "counsellor", "speaker_tracks") if meta.get(k)}

    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        p: AlignParams = self.params
        where = f"session {session.id!r} ({session.relpath})"
        utt_state = store.stage_state("utterances")
        if utt_state.state == "skipped" or "utterances" not in store.stage_group("utterances"):
            utts: dict[str, np.ndarray] = {}
            words: dict[str, np.ndarray] = {}
        else:
            utts = _plain(store.read_table("utterances", "utterances"))
            words = _plain(store.read_table("utterances", "words"))
        n_utt = len(utts.get("id", []))
        faces = _load_faces(store, p.movement_window_s)
        sample_rate = 16000
        if store.stage_state("audio").complete:
            sample_rate = int(store.stage_group("audio").attrs.get("sample_rate", 16000))

        # Speakers and their speech activity (word-level when words exist: tighter than utterance spans).
        speakers = sorted({str(s) for s in utts.get("speaker", [])})
        if words and len(words.get("start", [])):
            act_spk, act_start, act_end = words["speaker"], words["start"], words["end"]
        else:
            act_spk, act_start, act_end = utts.get("speaker", []), utts.get("start", []), utts.get("end", [])
        talk = {s: float(sum(e - b for b, e, k in zip(utts["start"], utts["end"], utts["speaker"], strict=True)
                             if str(k) == s)) for s in speakers}
        first = list(dict.fromkeys(str(s) for s in utts["speaker"][np.argsort(utts["start"], kind="stable")])) \
            if n_utt else []

        # Face tracks -> speakers.
        meta = _meta(session, p.roles_file)
        names = faces.names if faces is not None else []
        links: list[TrackLink] = []
        if faces is not None and faces.tracks:
            activity = speech_activity(speakers, act_spk, act_start, act_end, faces.times)
            links, _ = link_tracks(faces.movement, activity, speakers, faces.tracks, p.min_link_corr,
                                   p.min_link_frames, faces.boxes, p.min_seat_iou)
            source = ["auto"] * len(links)
            if meta.get("speaker_tracks"):
                manual = _parse_tracks(meta["speaker_tracks"], where)
                links = _apply_manual_links(links, manual)
                source = ["metadata" if lk.speaker in manual else "auto" for lk in links]
        else:
            source = []
        track_to_speaker = {lk.track: lk.speaker for lk in links if lk.speaker}
        # A speaker's face may span several tracks (a track that broke and came back); best link first.
        speaker_cols: dict[str, list[int]] = {}
        for i in sorted(range(len(links)), key=lambda i: -links[i].confidence):
            if links[i].speaker:
                speaker_cols.setdefault(links[i].speaker, []).append(i)
        person: dict[str, tuple[np.ndarray, np.ndarray]] = {
            spk: merge_tracks(faces.features, faces.present, cols) for spk, cols in speaker_cols.items()
        } if faces is not None else {}
        write_table(out, "links", {
            "track": np.array([lk.track for lk in links], dtype=np.int64),
            "speaker": np.array([lk.speaker for lk in links], dtype=str),
            "confidence": np.array([lk.confidence for lk in links], dtype=np.float64),
            "corr": np.array([lk.corr for lk in links], dtype=np.float64),
            "margin": np.array([lk.margin for lk in links], dtype=np.float64),
            "n_frames": np.array([lk.n_frames for lk in links], dtype=np.int64),
            "source": np.array(source, dtype=str),
        })

        roles, assumed, role_source = assign_roles(speakers, talk, first, meta, track_to_speaker,
                                                   p.role_heuristic, where)
        # Utterance by utterance: grid, speaker/listener resampling, pooling, cues.
        dim = len(names)
        available = (np.isfinite(faces.features).any(axis=(0, 1)) if faces is not None and faces.tracks
                     else np.zeros(dim, bool))
        frame_dt = frame_interval(faces.times) if faces is not None else 1.0
        texts = [str(t) for t in utts.get("text", [])]
        text_scores = text_cues(texts)
        cue_params = p.cue_params()
        lengths, t_chunks, f_chunks, m_chunks = [], [], [], []
        pooled = np.full((n_utt, 2, 3, dim), np.nan, dtype=np.float32)
        coverage = np.zeros((n_utt, 2), dtype=np.float64)
        rows: dict[str, list[Any]] = {k: [] for k in (
            "listener", "speaker_track", "listener_track", "grid_t0", "cues")}
        for i in range(n_utt):
            start, end, spk = float(utts["start"][i]), float(utts["end"][i]), str(utts["speaker"][i])
            listener = _listener(spk, roles) or next(
                (s for s in sorted(speakers, key=lambda s: -talk[s]) if s != spk), "")
            grid = utterance_grid(start, end, p.pad_s, p.rate_hz)
            core = (grid >= start - 1e-9) & (grid <= end + 1e-9)
            values = np.zeros((grid.size, 2, dim), dtype=np.float32)
            mask = np.zeros((grid.size, 2), dtype=bool)
            tracks = []
            for j, who in enumerate((spk, listener)):
                cols = speaker_cols.get(who)
                tracks.append(links[cols[0]].track if cols else -1)
                if not cols or faces is None:
                    continue
                feats, present = person[who]
                values[:, j], mask[:, j] = resample_track(faces.times, feats, present, grid, frame_dt)
                pooled[i, j], coverage[i, j] = pool(values[:, j], mask[:, j], core)
                if not available.all():  # a feature the backend never gives has no statistics
                    pooled[i, j][:, ~available] = np.nan
            f_val, f_expr = face_cues(values[core, 0], mask[core, 0], names, available)
            rows["cues"].append(utterance_cues(text_scores[i], f_val, f_expr, coverage[i, 0], cue_params))
            rows["listener"].append(listener)
            rows["speaker_track"].append(tracks[0])
            rows["listener_track"].append(tracks[1])
            rows["grid_t0"].append(float(grid[0]))
            lengths.append(grid.size)
            t_chunks.append(grid)
            f_chunks.append(values)
            m_chunks.append(mask)

        offsets = offsets_from_lengths(lengths)
        tensor_attrs = {"feature_names": names, "features_available": [bool(a) for a in available],
                        "slots": ["speaker", "listener"], "rate_hz": p.rate_hz, "pad_s": p.pad_s,
                        "fill": "0 where mask is false"}
        write_ragged(out, "tensors", {
            "time": np.concatenate(t_chunks) if t_chunks else np.zeros(0),
            "face": np.concatenate(f_chunks) if f_chunks else np.zeros((0, 2, dim), np.float32),
            "mask": np.concatenate(m_chunks) if m_chunks else np.zeros((0, 2), bool),
        }, offsets, attrs=tensor_attrs)
        write_array(out, "pooled", pooled, chunk_len=max(n_utt, 1),
                    attrs={"dims": ["utterance", "slot", "stat", "feature"], "stats": ["mean", "std", "max"],
                           "feature_names": names, "span": "core [start, end], steps with a face"})
        write_array(out, "coverage", coverage, chunk_len=max(n_utt, 1), attrs={"slots": ["speaker", "listener"]})
        if p.max_len > 0:
            self._write_padded(out, f_chunks, m_chunks, p.max_len, dim)

        cues = rows["cues"]
        utt_roles = [roles.get(str(s), "unknown") for s in utts.get("speaker", [])]
        table: dict[str, Any] = {
            "id": np.asarray(utts.get("id", []), dtype=str),
            "index": np.arange(n_utt, dtype=np.int64),
            "start": np.asarray(utts.get("start", []), dtype=np.float64),
            "end": np.asarray(utts.get("end", []), dtype=np.float64),
            "speaker": np.asarray(utts.get("speaker", []), dtype=str),
            "role": np.asarray(utt_roles, dtype=str),
            "listener": np.asarray(rows["listener"], dtype=str),
            "listener_role": np.asarray([roles.get(s, "unknown") if s else "" for s in rows["listener"]],
                                        dtype=str),
            "speaker_track": np.asarray(rows["speaker_track"], dtype=np.int64),
            "listener_track": np.asarray(rows["listener_track"], dtype=np.int64),
            "text": np.asarray(texts, dtype=str),
            "word_start": np.asarray(utts.get("word_start", []), dtype=np.int64),
            "word_end": np.asarray(utts.get("word_end", []), dtype=np.int64),
            "audio_start": np.round(np.asarray(utts.get("start", []), dtype=np.float64) * sample_rate
                                    ).astype(np.int64),
            "audio_end": np.round(np.asarray(utts.get("end", []), dtype=np.float64) * sample_rate
                                  ).astype(np.int64),
            "row_start": offsets[:-1],
            "n_steps": np.asarray(lengths, dtype=np.int64),
            "grid_t0": np.asarray(rows["grid_t0"], dtype=np.float64),
            "speaker_coverage": coverage[:, 0],
            "listener_coverage": coverage[:, 1],
            "text_valence": np.array([c.text_valence for c in cues], dtype=np.float64),
            "text_arousal": np.array([c.text_arousal for c in cues], dtype=np.float64),
            "text_distress": np.array([c.text_distress for c in cues], dtype=np.float64),
            "distress_word": np.array([c.distress_word for c in cues], dtype=str),
            "face_valence": np.array([c.face_valence for c in cues], dtype=np.float64),
            "face_expressivity": np.array([c.face_expressivity for c in cues], dtype=np.float64),
            "mismatch": np.array([c.mismatch for c in cues], dtype=np.float64),
            "flags": np.array([";".join(c.flags) for c in cues], dtype=str),
            **{f"flag_{f}": np.array([f in c.flags for c in cues], dtype=bool) for f in FLAGS},
        }
        write_table(out, "utterances", table)

        pairs = pair_dialogue(list(table["id"]), table["start"], table["end"], utt_roles, p.max_pair_gap_s)
        index = {u: k for k, u in enumerate(table["id"])}
        write_table(out, "pairs", {
            "id": np.array([f"{session.id}/p{k:05d}" for k in range(len(pairs))], dtype=str),
            "client_utterance": np.array([pr["client_utterances"][0] for pr in pairs], dtype=str),
            "counsellor_utterance": np.array([pr["counsellor_utterances"][0] for pr in pairs], dtype=str),
            "client_utterances": np.array([";".join(pr["client_utterances"]) for pr in pairs], dtype=str),
            "counsellor_utterances": np.array([";".join(pr["counsellor_utterances"]) for pr in pairs],
                                              dtype=str),
            "start": np.array([pr["start"] for pr in pairs], dtype=np.float64),
            "end": np.array([pr["end"] for pr in pairs], dtype=np.float64),
            "gap": np.array([pr["gap"] for pr in pairs], dtype=np.float64),
            "client_text": np.array([" ".join(texts[index[u]] for u in pr["client_utterances"]) for pr in pairs],
                                    dtype=str),
            "counsellor_text": np.array([" ".join(texts[index[u]] for u in pr["counsellor_utterances"])
                                         for pr in pairs], dtype=str),
            "client_mismatch": np.array([_nanmax([table["mismatch"][index[u]] for u in pr["client_utterances"]])
                                         for pr in pairs], dtype=np.float64),
            "client_flags": np.array([";".join(sorted({f for u in pr["client_utterances"]
                                                       for f in cues[index[u]].flags})) for pr in pairs],
                                     dtype=str),
        })

        from ..adapters.vader_text import vader_version

        out.attrs.update({
            "roles": roles, "role_assumed": assumed, "role_source": role_source, "speakers": speakers,
            "feature_names": names, "features_available": [bool(a) for a in available],
            "rate_hz": p.rate_hz, "pad_s": p.pad_s, "sample_rate": sample_rate,
            "cue_params": asdict(cue_params), "text_analyser": f"vaderSentiment {vader_version()}",
            "n_utterances": n_utt, "n_pairs": len(pairs), "n_tracks": len(links),
            "face": "skipped" if faces is None else f"{len(links)} track(s)",
        })
        linked = ", ".join(f"track {lk.track}->{lk.speaker} ({lk.confidence:.2f})" for lk in links if lk.speaker)
        return (f"{n_utt} utterance(s), {len(pairs)} pair(s); roles {'assumed' if assumed else 'given'}; "
                f"links: {linked or 'none'}")

    @staticmethod
    def _write_padded(out: zarr.Group, faces: list[np.ndarray], masks: list[np.ndarray], max_len: int,
                      dim: int) -> None:
        n = len(faces)
        face = np.zeros((n, max_len, 2, dim), dtype=np.float32)
        mask = np.zeros((n, max_len, 2), dtype=bool)
        length = np.zeros(n, dtype=np.int64)
        for i, (f, m) in enumerate(zip(faces, masks, strict=True)):
            k = min(len(f), max_len)
            face[i, :k], mask[i, :k], length[i] = f[:k], m[:k], k
        grp = out.create_group("padded", overwrite=True)
        # ~1 MB chunks of whole utterances: one read per batch of neighbouring utterances.
        per = max(1, (1024 * 1024) // max(face[0:1].nbytes, 1))
        write_array(grp, "face", face, chunk_len=per)
        write_array(grp, "mask", mask, chunk_len=per)
        write_array(grp, "length", length)
        grp.attrs.update({"max_len": max_len, "note": "utterances longer than max_len are cut"})

    def finalize(self, store: Store) -> None:
        """Write the root manifests ``utterances.parquet`` and ``dialogue_pairs.parquet`` over all sessions."""
        from ..manifest import write_manifests

        write_manifests(store)
