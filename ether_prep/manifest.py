"""Root-level Parquet manifests: one row per utterance, per dialogue pair and per session.

Written after ``align`` (and again after ``qc``, to carry the review flag) over every session in the store.
Their columns are defined once, here (:data:`UTTERANCE_COLUMNS`, :data:`PAIR_COLUMNS`,
:data:`SESSION_COLUMNS`: name, Arrow type, description); each description travels in the Parquet schema's
field metadata (``description``). Absent values are nulls, never sentinels: a listener who is not there, a
face that was not seen, a cue that could not be judged.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .align.cues import FLAGS
from .stages.qc import read_review
from .store import is_url, read_table

if TYPE_CHECKING:
    import pyarrow as pa

    from .store import Store

__all__ = ["PAIR_COLUMNS", "SESSION_COLUMNS", "UTTERANCE_COLUMNS", "read_manifest", "write_manifests"]

# name -> (Arrow type, description)
UTTERANCE_COLUMNS: dict[str, tuple[str, str]] = {
    "utterance_id": ("string", "stable id, <session_id>/u<5-digit index>"),
    "session_id": ("string", "session id (from the recording's path under the raw folder)"),
    "utterance_index": ("int64", "row of the utterance in its session's align/utterances table and pooled arrays"),
    "start": ("float64", "start, seconds from the start of the recording"),
    "end": ("float64", "end, seconds"),
    "duration": ("float64", "end - start, seconds"),
    "speaker": ("string", "diarized speaker label (SPEAKER_00, ...)"),
    "role": ("string", "client, counsellor, other or unknown"),
    "role_assumed": ("bool", "roles came from a heuristic, not from sessions.csv"),
    "listener": ("string", "the other main participant (null when nobody else speaks)"),
    "listener_role": ("string", "role of the listener (null when there is none)"),
    "speaker_person": ("int64", "person id of the speaker's face (null: no face linked)"),
    "listener_person": ("int64", "person id of the listener's face (null: no face linked)"),
    "speaker_track": ("int64", "longest face track of the speaker's person (null: no face)"),
    "listener_track": ("int64", "longest face track of the listener's person (null: no face)"),
    "text": ("string", "the utterance's words"),
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
    "needs_review": ("bool", "the session failed a quality check (null: qc did not run)"),
    "review_reasons": ("list<string>", "why the session needs review"),
}

PAIR_COLUMNS: dict[str, tuple[str, str]] = {
    "pair_id": ("string", "stable id, <session_id>/p<5-digit index>"),
    "session_id": ("string", "session id"),
    "client_utterance": ("string", "first utterance of the client's turn"),
    "counsellor_utterance": ("string", "first utterance of the counsellor's reply"),
    "client_utterances": ("list<string>", "every utterance of the client's turn, in order"),
    "counsellor_utterances": ("list<string>", "every utterance of the reply, in order"),
    "start": ("float64", "start of the client's turn, seconds"),
    "end": ("float64", "end of the reply, seconds"),
    "gap": ("float64", "reply start - client turn end, seconds"),
    "client_text": ("string", "the client's words"),
    "counsellor_text": ("string", "the counsellor's words"),
    "client_mismatch": ("float64", "highest mismatch over the client's utterances (null: no face to judge)"),
    "client_flags": ("list<string>", "flags raised on any of the client's utterances"),
    "role_assumed": ("bool", "roles came from a heuristic, not from sessions.csv"),
    "needs_review": ("bool", "the session failed a quality check (null: qc did not run)"),
    "review_reasons": ("list<string>", "why the session needs review"),
}

SESSION_COLUMNS: dict[str, tuple[str, str]] = {
    "session_id": ("string", "session id"),
    "relpath": ("string", "the recording's path under the raw folder"),
    "kind": ("string", "video, audio or image"),
    "duration": ("float64", "seconds (from the container)"),
    "needs_review": ("bool", "the session failed a quality check (null: qc did not run)"),
    "review_reasons": ("list<string>", "why the session needs review"),
}
# plus one float64 column per qc metric, qc_<metric> (see ether_prep.stages.qc)


def _nullable(values: Any, missing: Any) -> list[Any]:
    """Values as a list, with the stage's sentinel (-1, "", NaN) turned into None."""
    out = np.asarray(values).tolist()
    if missing is None:  # NaN
        return [None if isinstance(v, float) and not np.isfinite(v) else v for v in out]
    return [None if v == missing else v for v in out]


def _split(values: Any) -> list[list[str]]:
    return [[x for x in str(v).split(";") if x] for v in values]


def _utterance_rows(sid: str, t: dict[str, np.ndarray], attrs: dict[str, Any], review: tuple[Any, ...]
                    ) -> dict[str, list[Any]]:
    n = len(t["id"])
    const = {"session_id": sid, "role_assumed": bool(attrs.get("role_assumed", True)),
             "sample_rate": int(attrs.get("sample_rate", 16000)), "group": f"sessions/{sid}/align",
             "rate_hz": float(attrs.get("rate_hz", 0.0)), "needs_review": review[0], "review_reasons": review[1]}
    cols: dict[str, list[Any]] = {k: [v] * n for k, v in const.items()}
    cols.update({
        "utterance_id": t["id"].tolist(), "utterance_index": t["index"].tolist(),
        "duration": (t["end"] - t["start"]).tolist(), "n_words": (t["word_end"] - t["word_start"]).tolist(),
        "listener": _nullable(t["listener"], ""), "listener_role": _nullable(t["listener_role"], ""),
        "distress_word": _nullable(t["distress_word"], ""), "cue_flags": _split(t["flags"]),
    })
    for k in ("speaker_person", "listener_person", "speaker_track", "listener_track"):
        cols[k] = _nullable(t[k], -1) if k in t else [None] * n  # stores aligned before persons existed
    for k in ("face_valence", "face_expressivity", "mismatch"):
        cols[k] = _nullable(t[k], None)
    for k in UTTERANCE_COLUMNS:
        if k not in cols:
            cols[k] = t[k].tolist()
    return cols


def _pair_rows(sid: str, p: dict[str, np.ndarray], attrs: dict[str, Any], review: tuple[Any, ...]
               ) -> dict[str, list[Any]]:
    m = len(p["id"])
    cols: dict[str, list[Any]] = {
        "pair_id": p["id"].tolist(), "session_id": [sid] * m,
        "client_utterances": _split(p["client_utterances"]),
        "counsellor_utterances": _split(p["counsellor_utterances"]),
        "client_mismatch": _nullable(p["client_mismatch"], None), "client_flags": _split(p["client_flags"]),
        "role_assumed": [bool(attrs.get("role_assumed", True))] * m,
        "needs_review": [review[0]] * m, "review_reasons": [review[1]] * m,
    }
    for k in PAIR_COLUMNS:
        if k not in cols:
            cols[k] = p[k].tolist()
    return cols


def manifest_tables(store: Store) -> tuple[dict[str, list[Any]], dict[str, list[Any]], dict[str, list[Any]]]:
    """Columns of the utterance and pair manifests (sessions whose ``align`` is done) and of the session
    manifest (every session)."""
    utt: dict[str, list[Any]] = {k: [] for k in UTTERANCE_COLUMNS}
    pairs: dict[str, list[Any]] = {k: [] for k in PAIR_COLUMNS}
    session_rows: list[dict[str, Any]] = []
    for sid in store.session_ids():
        group = store.session(sid)
        review = read_review(group)
        info = group.info
        session_rows.append({"session_id": sid, "relpath": info.get("relpath", ""), "kind": info.get("kind", ""),
                             "duration": (info.get("probe") or {}).get("duration"),
                             "needs_review": review.needs_review, "review_reasons": list(review.reasons),
                             **{f"qc_{k}": v for k, v in review.metrics.items()}})
        if group.stage_state("align").state != "done":
            continue
        align = group.stage_group("align")  # checked: damaged outputs raise, never reach the manifest
        attrs = dict(align.attrs)
        verdict = (review.needs_review, list(review.reasons))
        for target, rows in ((utt, _utterance_rows(sid, read_table(align, "utterances"), attrs, verdict)),
                             (pairs, _pair_rows(sid, read_table(align, "pairs"), attrs, verdict))):
            for k in target:
                target[k].extend(rows[k])
    # Sessions measure different things (audio-only ones have no face metrics): null where absent.
    keys = list(dict.fromkeys([*SESSION_COLUMNS, *(k for row in session_rows for k in row)]))
    sessions = {k: [row.get(k) for row in session_rows] for k in keys}
    return utt, pairs, sessions


def _schema(columns: dict[str, list[Any]], spec: dict[str, tuple[str, str]]) -> pa.Schema:
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
             "list<string>": pa.list_(pa.string())}
    fields = []
    for name in columns:
        kind, description = spec.get(name, ("float64", f"quality-check metric {name.removeprefix('qc_')}"))
        fields.append(pa.field(name, types[kind], metadata={"description": description}))
    return pa.schema(fields)


def _write(columns: dict[str, list[Any]], spec: dict[str, tuple[str, str]], path: os.PathLike[str] | str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns, schema=_schema(columns, spec))
    tmp = f"{path}.tmp"
    if is_url(path):  # a store behind an fsspec URL (object stores replace an object whole)
        import fsspec

        fs, target = fsspec.core.url_to_fs(str(path))
        with fs.open(f"{target}.tmp", "wb") as fh:
            pq.write_table(table, fh)
        fs.mv(f"{target}.tmp", target)
        return
    pq.write_table(table, tmp)
    os.replace(tmp, path)  # readers never see a half-written manifest


def read_manifest(path: os.PathLike[str] | str) -> dict[str, np.ndarray]:
    """A manifest's columns as numpy arrays (strings and lists as object arrays; nulls as None/NaN)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def write_manifests(store: Store) -> tuple[int, int]:
    """Write ``utterances.parquet``, ``dialogue_pairs.parquet`` and ``sessions.parquet`` at the store root;
    returns the utterance and pair row counts."""
    utt, pairs, sessions = manifest_tables(store)
    _write(utt, UTTERANCE_COLUMNS, store.manifest_path("utterances"))
    _write(pairs, PAIR_COLUMNS, store.manifest_path("dialogue_pairs"))
    _write(sessions, SESSION_COLUMNS, store.manifest_path("sessions"))
    return len(utt["utterance_id"]), len(pairs["pair_id"])
