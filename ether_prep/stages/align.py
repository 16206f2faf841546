"""Stage ``align``: persons on screen to speakers, per-utterance face tensors, roles, dialogue pairs, cues.

Reads ``utterances/{words,utterances}``, ``face/*`` and ``audio`` attributes; writes per session::

    align/                      attrs: roles, role_assumed, role_source, speakers, feature_names,
                                       features_available, rate_hz, pad_s, cue_params, n_utterances, n_pairs,
                                       n_tracks, n_persons
      links/                    table, one row per face track, carrying its person's link: track, person,
                                speaker ("" = unlinked), confidence, corr (= max of mouth_corr and
                                screen_corr), mouth_corr, screen_corr, margin, n_frames (the track's),
                                person_frames, source ("auto" | "metadata")
      utterances/               table, one row per utterance: id, index, start, end, speaker, role,
                                listener, listener_role, speaker_person, listener_person (-1 = no face),
                                speaker_track, listener_track (that person's longest track), text,
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

The store root gets ``utterances.parquet`` and ``dialogue_pairs.parquet``, rebuilt by the runner at the end of
a run when an align or qc result changed (see :mod:`ether_prep.manifest`).

Steps (each a pure module under :mod:`ether_prep.align`, unit-tested on its own): faces to speakers
(:mod:`~ether_prep.align.linking`), roles (:mod:`~ether_prep.align.roles`: ``sessions.csv`` columns
``client``, ``counsellor``, ``speaker_tracks``, or ``role_heuristic``), per-utterance tensors
(:mod:`~ether_prep.align.tensors`), cues (:mod:`~ether_prep.align.cues`) and dialogue pairs
(:mod:`~ether_prep.align.pairs`).

Example (pipelines.yaml)::

    - stage: align
      params: {rate_hz: 10.0, pad_s: 0.5, max_len: 0, role_heuristic: most_talk_is_client}
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..align.cues import CUE_THRESHOLDS, FLAGS, text_cues, utterance_cues
from ..align.linking import (
    PersonLink,
    apply_manual_links,
    by_person,
    link_persons,
    merge_tracks,
    mouth_movement,
    mouth_signal,
    parse_speaker_tracks,
    speech_activity,
)
from ..align.pairs import pair_dialogue, pairs_table
from ..align.roles import HEURISTICS, ROLE_KEYS, assign_roles, listener_of, session_meta
from ..align.tensors import UtteranceTensors, cut_utterances, feature_names, padded
from ..errors import StageError
from ..face import AU_NAMES, EMOTION_NAMES
from ..face.features import step_features
from ..store import read_table, write_array, write_labels, write_ragged, write_table
from .audio import read_audio
from .base import Each, Stage
from .face import read_faces
from .utterances import Transcript, read_transcript

if TYPE_CHECKING:
    import zarr

    from ..records import Session
    from ..store import SessionGroup

__all__ = ["AlignOutputs", "AlignParams", "AlignStage", "AlignTensors", "read_align", "read_align_tensors"]


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


@dataclass
class _Faces:
    """The face stage's outputs per person (all face tracks of one identity), on the analysed frames."""

    times: np.ndarray  # (F,)
    names: list[str]  # feature names (D)
    tracks: list[int]  # track ids (T)
    track_person: np.ndarray  # (T,) person of each track
    track_frames: np.ndarray  # (T,) frames with a face, per track
    persons: list[int]  # person ids (P)
    features: np.ndarray  # (F, P, D) float64, NaN where absent or not provided
    present: np.ndarray  # (F, P) bool
    movement: np.ndarray  # (F, P) mouth movement, NaN where absent
    boxes: np.ndarray | None  # (P, 4) mean box per person

    def main_track(self, person: int) -> int:
        """The person's track seen in the most frames (-1 for no person)."""
        cols = [i for i, p in enumerate(self.track_person) if p == person]
        return self.tracks[max(cols, key=lambda i: self.track_frames[i])] if cols else -1


def _load_faces(store: SessionGroup, window_s: float) -> _Faces | None:
    """The face stage's outputs as per-person arrays; None for a session without video."""
    out = read_faces(store)
    if out is None:
        return None
    n_frames, n_tracks = out.au.shape[:2]
    names = feature_names(out.au_names, out.emotion_names)
    if n_tracks == 0:
        return _Faces(out.time, names, [], np.zeros(0, np.int64), np.zeros(0, np.int64), [],
                      np.zeros((n_frames, 0, 0)), np.zeros((n_frames, 0), bool), np.zeros((n_frames, 0)), None)
    present = out.present
    mouth = mouth_signal(out.mouth_open, out.au, out.au_names)
    mouth[~present] = np.nan
    features = step_features(out.au, out.emotion, out.pose, out.mouth_open, out.gaze)
    features[~present] = np.nan
    persons, p_present, (p_features, p_mouth, p_box) = by_person(out.person, present, features, mouth, out.box)
    with warnings.catch_warnings():  # a person with no box at all keeps NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_box = np.nanmean(p_box, axis=0)
    return _Faces(out.time, names, [t.track for t in out.tracks], out.person, present.sum(axis=0), persons,
                  p_features, p_present, mouth_movement(p_mouth, out.time, window_s), mean_box)


@dataclass(frozen=True)
class _Links:
    """Persons linked to speakers, and each linked speaker's face (their persons merged)."""

    links: list[PersonLink]  # one per person
    source: list[str]  # per link: "auto" or "metadata"
    speaker_persons: dict[str, list[int]]  # speaker -> linked person ids, best-linked first
    faces: dict[str, tuple[np.ndarray, np.ndarray]]  # speaker -> (F, D) features, (F,) presence

    def person_of(self, speaker: str) -> int:
        persons = self.speaker_persons.get(speaker)
        return persons[0] if persons else -1


# ------------------------------------------------------------------------------------- manifest columns
# What align adds to the root manifests (see ether_prep.manifest): name -> (Arrow type, description).
_IDENTITY: dict[str, tuple[str, str]] = {
    "align_fingerprint": ("string", "fingerprint of the session's align stage these rows were built from "
                                    "(readers compare it with the store's: a re-aligned session raises)"),
    "align_finished_at": ("string", "when that align run finished (UTC, ISO 8601)"),
}
_UTTERANCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "utterance_id": ("string", "stable id, <session_id>/u<5-digit index>", "item"),
    "session_id": ("string", "session id (from the recording's path under the raw folder)", "item"),
    "utterance_index": ("int64", "row of the utterance in its session's align/utterances table and pooled arrays"),
    "start": ("float64", "start, seconds from the start of the recording", "item"),
    "end": ("float64", "end, seconds", "item"),
    "duration": ("float64", "end - start, seconds"),
    "speaker": ("string", "diarized speaker label (SPEAKER_00, ...)", "item"),
    "role": ("string", "client, counsellor, other or unknown", "item"),
    "role_assumed": ("bool", "roles came from a heuristic, not from sessions.csv"),
    "listener": ("string", "the other main participant (null when nobody else speaks)"),
    "listener_role": ("string", "role of the listener (null when there is none)", "item"),
    "speaker_person": ("int64", "person id of the speaker's face (null: no face linked)"),
    "listener_person": ("int64", "person id of the listener's face (null: no face linked)"),
    "speaker_track": ("int64", "longest face track of the speaker's person (null: no face)"),
    "listener_track": ("int64", "longest face track of the listener's person (null: no face)"),
    "text": ("string", "the utterance's words", "text", "item"),
    "n_words": ("int64", "number of words"),
    "word_start": ("int64", "first word's row in utterances/words"),
    "word_end": ("int64", "one past the last word's row"),
    "audio_start": ("int64", "first sample in audio/waveform"),
    "audio_end": ("int64", "one past the last sample"),
    "sample_rate": ("int64", "sample rate of audio/waveform, Hz"),
    "speaker_coverage": ("float64", "share of the utterance's steps with the speaker's face"),
    "listener_coverage": ("float64", "share of the utterance's steps with the listener's face"),
    "text_valence": ("float64", "VADER compound, -1..1"),
    "text_arousal": ("float64", "VADER pos + neg, 0..1 (an arousal proxy)"),
    "text_distress": ("float64", "most negative word valence / 4, 0..1"),
    "distress_word": ("string", "the word that gave text_distress (null: none)"),
    "face_valence": ("float64", "speaker's facial valence, -1..1 (null: no face)"),
    "face_expressivity": ("float64", "speaker's facial expressivity, 0..1 (null: no face)"),
    "mismatch": ("float64", "verbal-visual mismatch score, 0..1 (null: too little face to judge)"),
    "cue_flags": ("list<string>", "incongruence flags raised (minimizing, ...)"),
    **{f"flag_{f}": ("bool", f"the {f} flag is raised") for f in FLAGS},
    "group": ("string", "Zarr group holding the tensors, sessions/<id>/align"),
    "row_start": ("int64", "first row of the utterance in <group>/tensors/{time,face,mask}"),
    "n_steps": ("int64", "number of tensor rows (time steps)"),
    "grid_t0": ("float64", "time of the first step, seconds; step k is at grid_t0 + k / rate_hz"),
    "rate_hz": ("float64", "tensor time steps per second"),
    **{k: (*v, "last") for k, v in _IDENTITY.items()},
}
_PAIR_COLUMNS: dict[str, tuple[str, ...]] = {
    "pair_id": ("string", "stable id, <session_id>/p<5-digit index>"),
    "session_id": ("string", "session id"),
    "client_utterance": ("string", "first utterance of the client's turn"),
    "counsellor_utterance": ("string", "first utterance of the counsellor's reply"),
    "client_utterances": ("list<string>", "every utterance of the client's turn, in order"),
    "counsellor_utterances": ("list<string>", "every utterance of the reply, in order"),
    "start": ("float64", "start of the client's turn, seconds"),
    "end": ("float64", "end of the reply, seconds"),
    "gap": ("float64", "reply start - client turn end, seconds"),
    "client_text": ("string", "the client's words", "text"),
    "counsellor_text": ("string", "the counsellor's words", "text"),
    "client_mismatch": ("float64", "highest mismatch over the client's utterances (null: no face to judge)"),
    "client_flags": ("list<string>", "flags raised on any of the client's utterances"),
    "role_assumed": ("bool", "roles came from a heuristic, not from sessions.csv"),
    **{k: (*v, "last") for k, v in _IDENTITY.items()},
}
_SESSION_COLUMNS: dict[str, tuple[str, ...]] = {k: (kind, f"{text} (null: not aligned)", "last")
                                                for k, (kind, text) in _IDENTITY.items()}


# ---------------------------------------------------------------------------------------------- stage
class AlignStage(Stage):
    """Link faces to speakers and cut per-utterance speaker/listener face tensors (see the module docstring)."""

    name = "align"
    version = "3"
    family = "align"
    requires = ("utterances", "face")
    needs_stream = None
    Params = AlignParams
    libraries = ("vaderSentiment", "scipy", "pyarrow")
    manifest_columns: ClassVar[dict[str, dict[str, tuple[str, ...]]]] = {
        "utterances": _UTTERANCE_COLUMNS, "dialogue_pairs": _PAIR_COLUMNS, "sessions": _SESSION_COLUMNS}
    utterance_arrays = ("pooled",)  # (N, 2, 3, D): the items' ``pooled``

    @classmethod
    def manifest_values(cls, store: SessionGroup) -> dict[str, dict[str, Any]]:
        """The utterance and pair rows of an aligned session, and its align identity (every row carries it)."""
        out = read_align(store)
        if out is None:
            return {}
        identity = {"align_fingerprint": out.marker.get("fingerprint"),
                    "align_finished_at": out.marker.get("finished_at")}
        return {"utterances": _utterance_values(store.id, out, identity),
                "dialogue_pairs": _pair_values(store.id, out, identity), "sessions": identity}

    def fingerprint_inputs(self, session: Session) -> dict[str, Any]:
        meta = session_meta(session, self.params.roles_file)
        return {k: meta[k] for k in ROLE_KEYS if meta.get(k)}

    def run(self, session: Session, store: SessionGroup, out: zarr.Group) -> str | None:
        p: AlignParams = self.params
        where = f"session {session.id!r} ({session.relpath})"
        transcript = read_transcript(store)
        faces = _load_faces(store, p.movement_window_s)
        meta = session_meta(session, p.roles_file)
        linked = self._link(transcript, faces, meta, where)
        person_speaker = {lk.person: lk.speaker for lk in linked.links if lk.speaker}
        track_to_speaker = {t: person_speaker[int(p)] for t, p in zip(faces.tracks, faces.track_person, strict=True)
                            if int(p) in person_speaker} if faces is not None else {}
        talk = transcript.talk_time()
        roles, assumed, role_source = assign_roles(transcript.speakers, talk, transcript.speakers_in_order(),
                                                   meta, track_to_speaker, p.role_heuristic, where)
        utts = transcript.utterances
        listeners = [listener_of(str(s), roles, talk) for s in utts.get("speaker", [])]
        # Sessions without video get the face schema's columns too (all masked): one width per store.
        names = faces.names if faces is not None else feature_names(AU_NAMES, EMOTION_NAMES)
        available = (np.isfinite(faces.features).any(axis=(0, 1)) if faces is not None and faces.tracks
                     else np.zeros(len(names), bool))
        tensors = cut_utterances(
            utts.get("start", np.zeros(0)), utts.get("end", np.zeros(0)),
            list(zip(utts.get("speaker", []), listeners, strict=True)), linked.faces,
            faces.times if faces is not None else np.zeros(0), names, available, p.rate_hz, p.pad_s)
        table = self._utterance_table(transcript, roles, listeners, linked, faces, tensors, store)
        cues = [utterance_cues(t, v, e, c, p) for t, v, e, c in zip(
            text_cues(list(table["text"])), tensors.face_valence, tensors.face_expressivity,
            tensors.coverage[:, 0], strict=True)]
        table.update(_cue_columns(cues))
        pairs = pair_dialogue(list(table["id"]), table["start"], table["end"], list(table["role"]),
                              p.max_pair_gap_s)

        self._write_links(out, linked, faces)
        self._write_tensors(out, tensors, names, available)
        write_table(out, "utterances", table, dim="utterance")
        write_table(out, "pairs", pairs_table(session.id, pairs, list(table["id"]), list(table["text"]),
                                              table["mismatch"], [c.flags for c in cues]), dim="pair")
        out.attrs.update({
            "roles": roles, "role_assumed": assumed, "role_source": role_source, "speakers": transcript.speakers,
            "feature_names": names, "features_available": [bool(a) for a in available],
            "rate_hz": p.rate_hz, "pad_s": p.pad_s, "sample_rate": read_audio(store).sample_rate,
            "cue_params": {k: getattr(p, k) for k in CUE_THRESHOLDS},
            "text_analyser": "vaderSentiment",  # its version: the stage marker's libraries
            "n_utterances": len(transcript), "n_pairs": len(pairs),
            "n_tracks": len(faces.tracks) if faces is not None else 0, "n_persons": len(linked.links),
            "face": "skipped" if faces is None else f"{len(faces.tracks)} track(s), {len(linked.links)} person(s)",
        })
        shown = ", ".join(f"person {lk.person}->{lk.speaker} ({lk.confidence:.2f})"
                          for lk in linked.links if lk.speaker)
        return (f"{len(transcript)} utterance(s), {len(pairs)} pair(s); roles {'assumed' if assumed else 'given'}; "
                f"links: {shown or 'none'}")

    # -- steps -----------------------------------------------------------------------------------------
    def _link(self, transcript: Transcript, faces: _Faces | None, meta: dict[str, str], where: str) -> _Links:
        """Persons -> speakers: automatic (mouth movement and screen time vs speech), then hand-fixed links."""
        p: AlignParams = self.params
        if faces is None or not faces.persons:
            return _Links([], [], {}, {})
        speakers = transcript.speakers
        activity = speech_activity(speakers, *transcript.activity_spans(), faces.times)
        links, _ = link_persons(faces.movement, activity, speakers, faces.persons, p.min_link_corr,
                                p.min_link_frames, faces.boxes, p.min_seat_iou)
        source = ["auto"] * len(links)
        if meta.get("speaker_tracks"):
            manual = parse_speaker_tracks(meta["speaker_tracks"], where)
            person_of_track = dict(zip(faces.tracks, faces.track_person.tolist(), strict=True))
            unknown = sorted(t for t in manual.values() if t is not None and t not in person_of_track)
            if unknown:
                raise StageError(f"{where}: speaker_tracks names face track(s) {unknown}, but the face stage found "
                                 f"tracks {faces.tracks}; fix speaker_tracks in sessions.csv")
            links = apply_manual_links(links, {s: None if t is None else person_of_track[t]
                                               for s, t in manual.items()})
            source = ["metadata" if lk.speaker in manual else "auto" for lk in links]
        # A speaker's face may span several persons (fragments without identity); best link first.
        cols: dict[str, list[int]] = {}
        for i in sorted(range(len(links)), key=lambda i: -links[i].confidence):
            if links[i].speaker:
                cols.setdefault(links[i].speaker, []).append(i)
        merged = {spk: merge_tracks(faces.features, faces.present, c) for spk, c in cols.items()}
        return _Links(links, source, {spk: [links[i].person for i in c] for spk, c in cols.items()}, merged)

    def _utterance_table(self, transcript: Transcript, roles: dict[str, str], listeners: list[str],
                         linked: _Links, faces: _Faces | None, tensors: UtteranceTensors,
                         store: SessionGroup) -> dict[str, np.ndarray]:
        """Per-utterance columns before the cues: ids, times, roles, face tracks, word/audio/tensor ranges."""
        utts = transcript.utterances
        n = len(transcript)
        starts = np.asarray(utts.get("start", []), dtype=np.float64)
        ends = np.asarray(utts.get("end", []), dtype=np.float64)
        speakers = [str(s) for s in utts.get("speaker", [])]
        speaker_person = [linked.person_of(s) for s in speakers]
        listener_person = [linked.person_of(s) for s in listeners]

        def main_track(person: int) -> int:
            return faces.main_track(person) if faces is not None and person >= 0 else -1

        sample_rate = read_audio(store).sample_rate
        return {
            "id": np.asarray(utts.get("id", []), dtype=str),
            "index": np.arange(n, dtype=np.int64),
            "start": starts,
            "end": ends,
            "speaker": np.asarray(speakers, dtype=str),
            "role": np.asarray([roles.get(s, "unknown") for s in speakers], dtype=str),
            "listener": np.asarray(listeners, dtype=str),
            "listener_role": np.asarray([roles.get(s, "unknown") if s else "" for s in listeners], dtype=str),
            "speaker_person": np.asarray(speaker_person, dtype=np.int64),
            "listener_person": np.asarray(listener_person, dtype=np.int64),
            "speaker_track": np.asarray([main_track(q) for q in speaker_person], dtype=np.int64),
            "listener_track": np.asarray([main_track(q) for q in listener_person], dtype=np.int64),
            "text": np.asarray([str(t) for t in utts.get("text", [])], dtype=str),
            "word_start": np.asarray(utts.get("word_start", []), dtype=np.int64),
            "word_end": np.asarray(utts.get("word_end", []), dtype=np.int64),
            "audio_start": np.round(starts * sample_rate).astype(np.int64),
            "audio_end": np.round(ends * sample_rate).astype(np.int64),
            "row_start": tensors.offsets[:-1],
            "n_steps": tensors.lengths.astype(np.int64),
            "grid_t0": tensors.grid_t0,
            "speaker_coverage": tensors.coverage[:, 0],
            "listener_coverage": tensors.coverage[:, 1],
        }

    @staticmethod
    def _write_links(out: zarr.Group, linked: _Links, faces: _Faces | None) -> None:
        """One row per face track, carrying its person's link (persons, not fragments, are linked)."""
        by_person = {lk.person: (lk, src) for lk, src in zip(linked.links, linked.source, strict=True)}
        rows = [(t, int(p), *by_person[int(p)], n) for t, p, n in zip(
            faces.tracks, faces.track_person, faces.track_frames, strict=True)] if faces is not None else []
        write_table(out, "links", {
            "track": np.array([r[0] for r in rows], dtype=np.int64),
            "person": np.array([r[1] for r in rows], dtype=np.int64),
            "speaker": np.array([r[2].speaker for r in rows], dtype=str),
            "confidence": np.array([r[2].confidence for r in rows], dtype=np.float64),
            "corr": np.array([r[2].corr for r in rows], dtype=np.float64),
            "mouth_corr": np.array([r[2].mouth_corr for r in rows], dtype=np.float64),
            "screen_corr": np.array([r[2].screen_corr for r in rows], dtype=np.float64),
            "margin": np.array([r[2].margin for r in rows], dtype=np.float64),
            "n_frames": np.array([r[4] for r in rows], dtype=np.int64),
            "person_frames": np.array([r[2].n_frames for r in rows], dtype=np.int64),
            "source": np.array([r[3] for r in rows], dtype=str),
        }, dim="track")

    def _write_tensors(self, out: zarr.Group, tensors: UtteranceTensors, names: list[str],
                       available: np.ndarray) -> None:
        p: AlignParams = self.params
        n = len(tensors.grid_t0)
        write_ragged(out, "tensors", {"time": tensors.time, "face": tensors.face, "mask": tensors.mask},
                     tensors.offsets, dims={"time": ("step",), "face": ("step", "slot", "feature"),
                                            "mask": ("step", "slot")}, attrs={"feature_names": names,
                                             "features_available": [bool(a) for a in available],
                                             "slots": ["speaker", "listener"], "rate_hz": p.rate_hz,
                                             "pad_s": p.pad_s, "fill": "0 where mask is false"})
        write_array(out, "pooled", tensors.pooled, chunk_len=max(n, 1), dims=("utterance", "slot", "stat", "feature"),
                    attrs={"dims": ["utterance", "slot", "stat", "feature"], "stats": ["mean", "std", "max"],
                           "feature_names": names, "span": "core [start, end], steps with a face"})
        write_array(out, "coverage", tensors.coverage, chunk_len=max(n, 1), dims=("utterance", "slot"),
                    attrs={"slots": ["speaker", "listener"]})
        for group in (out, out["tensors"]):
            write_labels(group, "slot", ("speaker", "listener"))
            write_labels(group, "feature", names)
        write_labels(out, "stat", ("mean", "std", "max"))
        if p.max_len > 0:
            face, mask, length = padded(tensors, p.max_len)
            grp = out.create_group("padded", overwrite=True)
            # ~1 MB chunks of whole utterances: one read per batch of neighbouring utterances.
            per = max(1, (1024 * 1024) // max(face[0:1].nbytes, 1))
            write_array(grp, "face", face, chunk_len=per, dims=("utterance", "step", "slot", "feature"))
            write_array(grp, "mask", mask, chunk_len=per, dims=("utterance", "step", "slot"))
            write_array(grp, "length", length, dims=("utterance",))
            grp.attrs.update({"max_len": p.max_len, "note": "utterances longer than max_len are cut"})


def _cue_columns(cues: list[Any]) -> dict[str, np.ndarray]:
    return {
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


# ---------------------------------------------------------------------------------------------- readers
@dataclass(frozen=True)
class AlignOutputs:
    """A session's align tables and attributes (see the module docstring; tensors: :func:`read_align_tensors`)."""

    attrs: dict[str, Any]
    marker: dict[str, Any]  # the stage's completion marker (fingerprint, finished_at, ...)
    utterances: dict[str, np.ndarray]
    pairs: dict[str, np.ndarray]
    links: dict[str, np.ndarray]

    @property
    def speakers(self) -> list[str]:
        return list(self.attrs.get("speakers", []))


def read_align(store: SessionGroup) -> AlignOutputs | None:
    """The align stage's tables of one session (None when it is not done there); damaged outputs raise."""
    state = store.stage_state("align")
    if state.state != "done":
        return None
    group = store.stage_group("align")  # checked: damaged outputs raise
    attrs = dict(group.attrs)
    return AlignOutputs(attrs, dict(state.info), read_table(group, "utterances"), read_table(group, "pairs"),
                        read_table(group, "links"))


@dataclass(frozen=True)
class AlignTensors:
    """A session's per-utterance face tensors, opened lazily: ``face`` (L, 2, D), ``mask`` (L, 2)."""

    face: Any
    mask: Any
    feature_names: list[str]


def read_align_tensors(store: SessionGroup) -> AlignTensors:
    """The align stage's ragged tensors of one session (arrays opened, not read); a StoreError when absent."""
    tensors = store.stage_group("align")["tensors"]
    return AlignTensors(tensors["face"], tensors["mask"], list(tensors.attrs.get("feature_names", [])))


def _nullable(values: Any, missing: Any) -> list[Any]:
    """Values as a list, with the stage's sentinel (-1, "", NaN) turned into None."""
    out = np.asarray(values).tolist()
    if missing is None:  # NaN
        return [None if isinstance(v, float) and not np.isfinite(v) else v for v in out]
    return [None if v == missing else v for v in out]


def _split(values: Any) -> list[list[str]]:
    return [[x for x in str(v).split(";") if x] for v in values]


def _utterance_values(sid: str, out: AlignOutputs, identity: dict[str, Any]) -> dict[str, Any]:
    """The utterance manifest's align columns of one session."""
    t, attrs = out.utterances, out.attrs
    n = len(t["id"])
    cols: dict[str, Any] = {k: Each(v) for k, v in identity.items()}
    cols.update({
        "session_id": Each(sid), "role_assumed": Each(bool(attrs.get("role_assumed", True))),
        "sample_rate": Each(int(attrs["sample_rate"])), "group": Each(f"sessions/{sid}/align"),
        "rate_hz": Each(float(attrs["rate_hz"])),
        "utterance_id": t["id"].tolist(), "utterance_index": t["index"].tolist(),
        "duration": (t["end"] - t["start"]).tolist(), "n_words": (t["word_end"] - t["word_start"]).tolist(),
        "listener": _nullable(t["listener"], ""), "listener_role": _nullable(t["listener_role"], ""),
        "distress_word": _nullable(t["distress_word"], ""), "cue_flags": _split(t["flags"]),
    })
    for k in ("speaker_person", "listener_person", "speaker_track", "listener_track"):
        cols[k] = _nullable(t[k], -1) if k in t else [None] * n  # stores aligned before persons existed
    for k in ("face_valence", "face_expressivity", "mismatch"):
        cols[k] = _nullable(t[k], None)
    for k in _UTTERANCE_COLUMNS:
        if k not in cols:
            cols[k] = t[k].tolist()
    return cols


def _pair_values(sid: str, out: AlignOutputs, identity: dict[str, Any]) -> dict[str, Any]:
    """The dialogue pair manifest's align columns of one session."""
    p = out.pairs
    cols: dict[str, Any] = {
        "pair_id": p["id"].tolist(), "session_id": Each(sid),
        "client_utterances": _split(p["client_utterances"]),
        "counsellor_utterances": _split(p["counsellor_utterances"]),
        "client_mismatch": _nullable(p["client_mismatch"], None), "client_flags": _split(p["client_flags"]),
        "role_assumed": Each(bool(out.attrs.get("role_assumed", True))),
        **{k: Each(v) for k, v in identity.items()},
    }
    for k in _PAIR_COLUMNS:
        if k not in cols:
            cols[k] = p[k].tolist()
    return cols
