"""Root-level Parquet manifests: one row per utterance, per dialogue pair and per session.

Written by the runner at the end of a run that ran ``align`` or ``qc`` (:func:`refresh_manifests`), over every
session in the store, and only when what they are built from changed: each manifest records, in its Parquet
metadata, a digest of every session's metadata and ``align`` and ``qc`` markers (:func:`manifest_sources`); a
cached rerun finds them current and leaves them alone. :func:`write_manifests` rebuilds them from the store
whatever they hold (e.g. after a session was removed).

Their columns are defined once, here (:data:`UTTERANCE_COLUMNS`, :data:`PAIR_COLUMNS`,
:data:`SESSION_COLUMNS`: name, Arrow type, description); each description travels in the Parquet schema's
field metadata (``description``). Absent values are nulls, never sentinels: a listener who is not there, a
face that was not seen, a cue that could not be judged.

Every row carries its session's ``align_fingerprint`` and ``align_finished_at`` (of the ``align`` marker it was
built from): the training API compares them with the store's marker on every read, so rows never index tensors
of another layout (see :mod:`ether_prep.dataset`). A manifest is written to a temporary file in the store's
folder and moved onto its name (``os.replace``, atomic on POSIX file systems): a reader sees the old file or
the new one, never a part. Behind an fsspec URL (``s3://``, ``gs://``) the manifest is written in one object
upload, which object stores publish whole when it completes (the same guarantee); the three files of one
build share a ``build`` id in their metadata, so a reader that met two builds knows it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .align.cues import FLAGS
from .stages.qc import read_review
from .store import local_path, now, read_group_attrs, read_table

if TYPE_CHECKING:
    import pyarrow as pa

    from .store import Store

__all__ = ["PAIR_COLUMNS", "SESSION_COLUMNS", "UTTERANCE_COLUMNS", "manifest_meta", "manifest_sources",
           "manifests_current", "read_manifest", "read_manifest_build", "refresh_manifests", "write_manifests"]

# Bumped when the columns or how they are built change: a store's manifests are then rebuilt on the next run.
MANIFEST_VERSION = 2
_META_KEY = b"ether_prep"
_NAMES = ("utterances", "dialogue_pairs", "sessions")
_ALIGN_COLUMNS: dict[str, tuple[str, str]] = {
    "align_fingerprint": ("string", "fingerprint of the session's align stage these rows were built from "
                                    "(readers compare it with the store's: a re-aligned session raises)"),
    "align_finished_at": ("string", "when that align run finished (UTC, ISO 8601)"),
}

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
    **_ALIGN_COLUMNS,
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
    **_ALIGN_COLUMNS,
}

SESSION_COLUMNS: dict[str, tuple[str, str]] = {
    "session_id": ("string", "session id"),
    "relpath": ("string", "the recording's path under the raw folder"),
    "kind": ("string", "video, audio or image"),
    "duration": ("float64", "seconds (from the container)"),
    "needs_review": ("bool", "the session failed a quality check (null: qc did not run)"),
    "review_reasons": ("list<string>", "why the session needs review"),
    **{k: (kind, f"{text} (null: not aligned)") for k, (kind, text) in _ALIGN_COLUMNS.items()},
}
# plus one float64 column per qc metric, qc_<metric> (see ether_prep.stages.qc)


def _align_identity(attrs: dict[str, Any]) -> dict[str, Any]:
    """What rows carry of the align marker they were built from (``attrs``: the align group's attributes)."""
    marker = attrs.get("stage") or {}
    return {"align_fingerprint": marker.get("fingerprint"), "align_finished_at": marker.get("finished_at")}


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
    const = {"session_id": sid, **_align_identity(attrs), "role_assumed": bool(attrs.get("role_assumed", True)),
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
        **{k: [v] * m for k, v in _align_identity(attrs).items()},
    }
    for k in PAIR_COLUMNS:
        if k not in cols:
            cols[k] = p[k].tolist()
    return cols


def _source(info: dict[str, Any] | None, align: dict[str, Any] | None, qc: dict[str, Any] | None) -> str:
    """One session's part of :func:`manifest_sources`: a digest of what its manifest rows are built from."""
    text = json.dumps([info or {}, align or {}, qc or {}], sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _sources_digest(sources: dict[str, str]) -> str:
    payload = json.dumps({"version": MANIFEST_VERSION, "columns": [list(UTTERANCE_COLUMNS), list(PAIR_COLUMNS),
                                                                     list(SESSION_COLUMNS)],
                          "sessions": sources}, sort_keys=True)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def manifest_sources(store: Store) -> str:
    """A digest of everything the manifests are built from: each session's metadata and its ``align`` and
    ``qc`` markers (written last by a stage, so they change whenever its outputs do), read straight from the
    metadata files (milliseconds for hundreds of sessions)."""
    sources = {}
    for sid in store.session_ids():
        base = f"sessions/{sid}"
        info = (read_group_attrs(store.url, base) or {}).get("session")
        align = (read_group_attrs(store.url, f"{base}/align") or {}).get("stage")
        qc = (read_group_attrs(store.url, f"{base}/qc") or {}).get("stage")
        sources[sid] = _source(info, align, qc)
    return _sources_digest(sources)


def manifest_tables(store: Store) -> tuple[dict[str, list[Any]], dict[str, list[Any]], dict[str, list[Any]], str]:
    """Columns of the utterance and pair manifests (sessions whose ``align`` is done), of the session
    manifest (every session), and the digest of what they were built from (see :func:`manifest_sources`)."""
    utt: dict[str, list[Any]] = {k: [] for k in UTTERANCE_COLUMNS}
    pairs: dict[str, list[Any]] = {k: [] for k in PAIR_COLUMNS}
    session_rows: list[dict[str, Any]] = []
    sources: dict[str, str] = {}
    for sid in store.session_ids():
        group = store.session(sid)
        review = read_review(group)
        info = group.info
        align_state, qc_state = group.stage_state("align"), group.stage_state("qc")
        sources[sid] = _source(group.group.attrs.get("session"), align_state.info or None, qc_state.info or None)
        aligned = align_state.state == "done"
        session_rows.append({"session_id": sid, "relpath": info.get("relpath", ""), "kind": info.get("kind", ""),
                             "duration": (info.get("probe") or {}).get("duration"),
                             "needs_review": review.needs_review, "review_reasons": list(review.reasons),
                             **(_align_identity({"stage": align_state.info}) if aligned else {}),
                             **{f"qc_{k}": v for k, v in review.metrics.items()}})
        if not aligned:
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
    return utt, pairs, sessions, _sources_digest(sources)


def _schema(columns: dict[str, list[Any]], spec: dict[str, tuple[str, str]]) -> pa.Schema:
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
             "list<string>": pa.list_(pa.string())}
    fields = []
    for name in columns:
        kind, description = spec.get(name, ("float64", f"quality-check metric {name.removeprefix('qc_')}"))
        fields.append(pa.field(name, types[kind], metadata={"description": description}))
    return pa.schema(fields)


def _write(columns: dict[str, list[Any]], spec: dict[str, tuple[str, str]], path: os.PathLike[str] | str,
           meta: dict[str, Any]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = _schema(columns, spec).with_metadata({_META_KEY: json.dumps(meta).encode("utf-8")})
    table = pa.table(columns, schema=schema)
    target = local_path(path)
    if target is None:  # behind an object-store URL: one upload, published whole when it completes
        import fsspec

        with fsspec.open(str(path), "wb") as fh:
            pq.write_table(table, fh)
        return
    _drop_leftovers(target)
    # A temporary file beside the manifest, then one rename: a reader opens the old file or the new one.
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            pq.write_table(table, fh)
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the name points at it
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the manifest is read like the store's other files
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _drop_leftovers(target: Path, age_s: float = 600.0) -> None:
    """Remove temporary files of this manifest that a killed write left (old enough not to be a live one)."""
    cutoff = time.time() - age_s
    for stray in target.parent.glob(f".{target.name}.*.tmp"):
        with contextlib.suppress(OSError):
            if stray.stat().st_mtime < cutoff:
                stray.unlink()


def read_manifest(path: os.PathLike[str] | str) -> dict[str, np.ndarray]:
    """A manifest's columns as numpy arrays (strings and lists as object arrays; nulls as None/NaN)."""
    return read_manifest_build(path)[0]


def read_manifest_build(path: os.PathLike[str] | str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A manifest's columns (as :func:`read_manifest`) and what it records about its build
    (:func:`manifest_meta`), from one read of the file."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    return columns, _meta_of(table.schema)


def _meta_of(schema: pa.Schema) -> dict[str, Any]:
    try:
        return dict(json.loads((schema.metadata or {}).get(_META_KEY, b"{}")))
    except ValueError:
        return {}


def manifest_meta(path: os.PathLike[str] | str) -> dict[str, Any]:
    """What a manifest records about its build (``sources``, ``build``, ``written``); ``{}`` when it is missing
    or was written by an ether-prep that recorded nothing."""
    import pyarrow.parquet as pq

    try:
        return _meta_of(pq.read_schema(path))
    except (OSError, ValueError):  # missing, or not a Parquet file (then it is rebuilt)
        return {}


def manifests_current(store: Store) -> bool:
    """Whether every manifest exists and was built from what the store holds now (one build)."""
    metas = [manifest_meta(store.manifest_path(name)) for name in _NAMES]
    digest = manifest_sources(store)
    return all(m.get("sources") == digest for m in metas) and len({m.get("build") for m in metas}) == 1


def write_manifests(store: Store) -> tuple[int, int]:
    """Rebuild ``utterances.parquet``, ``dialogue_pairs.parquet`` and ``sessions.parquet`` at the store root
    from what the store holds; returns the utterance and pair row counts."""
    utt, pairs, sessions, digest = manifest_tables(store)
    meta = {"sources": digest, "build": uuid.uuid4().hex, "written": now(), "manifest_version": MANIFEST_VERSION}
    _write(utt, UTTERANCE_COLUMNS, store.manifest_path("utterances"), meta)
    _write(pairs, PAIR_COLUMNS, store.manifest_path("dialogue_pairs"), meta)
    _write(sessions, SESSION_COLUMNS, store.manifest_path("sessions"), meta)
    return len(utt["utterance_id"]), len(pairs["pair_id"])


def refresh_manifests(store: Store) -> bool:
    """Rebuild the manifests unless they are current (:func:`manifests_current`); returns whether it wrote."""
    if manifests_current(store):
        return False
    write_manifests(store)
    return True
