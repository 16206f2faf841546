"""Root-level Parquet manifests: one row per utterance, per dialogue pair and per session.

Written by the runner's one collect step at the end of a run that selected a stage declaring manifest columns
(:func:`refresh_manifests`, after every stage's ``finalize``), over every session in the store, and only when
what they are built from changed: each manifest records, in its Parquet metadata, a digest of every session's
metadata and the markers of those stages (:func:`manifest_sources`); a cached rerun finds them current and
leaves them alone. :func:`write_manifests` rebuilds them from the store whatever they hold (e.g. after a
session was removed).

Their columns are not spelled here: every registered stage declares its own
(:attr:`~ether_prep.stages.base.Stage.manifest_columns`: name, Arrow type, description) and gives their values
(:meth:`~ether_prep.stages.base.Stage.manifest_values`); this module iterates the registry
(:func:`manifest_columns`). Each description travels in the Parquet schema's field metadata (``description``).
Absent values are nulls, never sentinels: a listener who is not there, a face that was not seen, a cue that
could not be judged.

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

from .store import local_path, now, read_group_attrs

if TYPE_CHECKING:
    import pyarrow as pa

    from .stages.base import Stage
    from .store import SessionGroup, Store

__all__ = ["flagged_columns", "manifest_columns", "manifest_meta", "manifest_sources", "manifests_current",
           "read_manifest", "read_manifest_build", "read_parquet", "refresh_manifests", "write_manifests"]

# Bumped when the columns or how they are built change: a store's manifests are then rebuilt on the next run.
MANIFEST_VERSION = 2
_META_KEY = b"ether_prep"
_NAMES = ("utterances", "dialogue_pairs", "sessions")
# The column naming a manifest's rows: the stage that gives it defines that manifest's rows (one per its values).
_ROW_ID = {"utterances": "utterance_id", "dialogue_pairs": "pair_id"}
# What sessions.parquet holds of the session record itself (the store's, not a stage's).
_SESSION_RECORD: dict[str, tuple[str, str]] = {
    "session_id": ("string", "session id"),
    "relpath": ("string", "the recording's path under the raw folder"),
    "kind": ("string", "video, audio or image"),
    "duration": ("float64", "seconds (from the container)"),
}


def _feeding() -> list[type[Stage]]:
    """The registered stages that declare manifest columns, in pipeline order."""
    from .stages import stage_classes

    return [cls for cls in stage_classes() if cls.manifest_columns]


def _declared(name: str) -> dict[str, tuple[str, str]]:
    """Every column (and ``*`` family) the registered stages declare for manifest ``name``, in order: the
    session record's (sessions.parquet), every stage's in pipeline order, then those declared ``"last"``."""
    first = dict(_SESSION_RECORD) if name == "sessions" else {}
    last: dict[str, tuple[str, str]] = {}
    for cls in _feeding():
        for col, (kind, text, *where) in cls.manifest_columns.get(name, {}).items():
            (last if "last" in where else first)[col] = (kind, text)
    return {**first, **last}


def manifest_columns(name: str) -> dict[str, tuple[str, str]]:
    """The columns of manifest ``name`` (``utterances``, ``dialogue_pairs``, ``sessions``): column -> (Arrow type,
    description), as the registered stages declare them (families such as ``qc_*`` left out: they have a column
    per value found)."""
    return {k: v for k, v in _declared(name).items() if not k.endswith("*")}


def flagged_columns(name: str, flag: str) -> dict[str, str]:
    """Columns of manifest ``name`` declared with ``flag`` (column -> Arrow type): ``"text"``, free text that
    de-identification scrubs; ``"item"``, a column the dataset's items carry (utterances)."""
    from .stages import stage_classes

    return {col: spec[0] for cls in stage_classes() for col, spec in cls.manifest_columns.get(name, {}).items()
            if flag in spec[2:]}


def _rows(name: str, sid: str, values: dict[str, Any], columns: dict[str, tuple[str, str]]) -> dict[str, list[Any]]:
    """One session's rows of manifest ``name`` from the stages' values (none without the row-defining column)."""
    from .stages.base import Each

    if _ROW_ID[name] not in values:
        return {}
    unknown = sorted(set(values) - set(columns))
    if unknown:
        raise ValueError(f"session {sid!r}: stages gave {name} column(s) {unknown} they do not declare in "
                         f"manifest_columns; declare them")
    n = len(values[_ROW_ID[name]])
    out: dict[str, list[Any]] = {}
    for col in columns:
        v = values.get(col)
        if isinstance(v, Each) or v is None:
            out[col] = [None if v is None else v.value] * n
            continue
        out[col] = v.tolist() if isinstance(v, np.ndarray) else list(v)
        if len(out[col]) != n:
            raise ValueError(f"session {sid!r}: {name} column {col!r} has {len(out[col])} values for {n} rows")
    return out


def _source(info: dict[str, Any] | None, *markers: dict[str, Any] | None) -> str:
    """One session's part of :func:`manifest_sources`: a digest of what its manifest rows are built from."""
    text = json.dumps([info or {}, *(m or {} for m in markers)], sort_keys=True, default=str)
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


def _sources_digest(sources: dict[str, str]) -> str:
    payload = json.dumps({"version": MANIFEST_VERSION, "columns": [list(manifest_columns(n)) for n in _NAMES],
                          "sessions": sources}, sort_keys=True)
    return hashlib.sha1(payload.encode("utf-8")).hexdigest()


def manifest_sources(store: Store) -> str:
    """A digest of everything the manifests are built from: each session's metadata and the markers of the
    stages declaring manifest columns (written last by a stage, so they change whenever its outputs do), read
    straight from the metadata files (milliseconds for hundreds of sessions)."""
    names = [cls.name for cls in _feeding()]
    sources = {}
    for sid in store.session_ids():
        base = f"sessions/{sid}"
        info = (read_group_attrs(store.url, base) or {}).get("session")
        sources[sid] = _source(info, *((read_group_attrs(store.url, f"{base}/{n}") or {}).get("stage")
                                       for n in names))
    return _sources_digest(sources)


def _session_values(group: SessionGroup, feeding: list[type[Stage]]) -> dict[str, dict[str, Any]]:
    """Every feeding stage's values for one session, merged per manifest (the session record's first)."""
    info = group.info
    merged: dict[str, dict[str, Any]] = {name: {} for name in _NAMES}
    merged["sessions"].update({"session_id": group.id, "relpath": info.get("relpath", ""),
                               "kind": info.get("kind", ""), "duration": (info.get("probe") or {}).get("duration")})
    for cls in feeding:
        for name, values in cls.manifest_values(group).items():
            merged[name].update(values)
    return merged


def manifest_tables(store: Store) -> tuple[dict[str, list[Any]], dict[str, list[Any]], dict[str, list[Any]], str]:
    """Columns of the utterance and pair manifests (rows of the sessions their row-defining stage gives them),
    of the session manifest (every session), and the digest of what they were built from (see
    :func:`manifest_sources`)."""
    feeding = _feeding()
    columns = {name: manifest_columns(name) for name in _NAMES}
    tables: dict[str, dict[str, list[Any]]] = {name: {k: [] for k in columns[name]} for name in _ROW_ID}
    session_rows: list[dict[str, Any]] = []
    sources: dict[str, str] = {}
    for sid in store.session_ids():
        group = store.session(sid)
        sources[sid] = _source(group.info,
                               *(group.stage_state(cls.name).info or None for cls in feeding))
        values = _session_values(group, feeding)
        session_rows.append(values["sessions"])
        for name, target in tables.items():
            for k, col in _rows(name, sid, values[name], columns[name]).items():
                target[k].extend(col)
    # Sessions measure different things (audio-only ones have no face metrics): null where absent.
    keys = list(dict.fromkeys([*columns["sessions"], *(k for row in session_rows for k in row)]))
    sessions = {k: [row.get(k) for row in session_rows] for k in keys}
    return tables["utterances"], tables["dialogue_pairs"], sessions, _sources_digest(sources)


def _schema(columns: dict[str, list[Any]], spec: dict[str, tuple[str, str]]) -> pa.Schema:
    import pyarrow as pa

    types = {"string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(),
             "list<string>": pa.list_(pa.string()), "list<float32>": pa.list_(pa.float32())}
    fields = []
    for name in columns:
        kind, description = spec[name] if name in spec else _family(name, spec)
        fields.append(pa.field(name, types[kind], metadata={"description": description}))
    return pa.schema(fields)


def _family(name: str, spec: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """Type and description of a column of a declared family (``qc_*``: ``qc_speech_share``)."""
    for pattern, (kind, text) in spec.items():
        if pattern.endswith("*") and name.startswith(pattern[:-1]):
            return kind, text.format(name.removeprefix(pattern[:-1]))
    raise ValueError(f"manifest column {name!r} is declared by no stage's manifest_columns; declare it")


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
    table = read_parquet(path)
    columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    return columns, _meta_of(table.schema)


def read_parquet(path: os.PathLike[str] | str) -> pa.Table:
    """A whole Parquet file, a local one through one open file: pyarrow opens a path more than once (footer, then
    row groups), so a manifest replaced in between (a run rebuilding it) would mix two files' bytes."""
    import pyarrow.parquet as pq

    if isinstance(path, Path) or (isinstance(path, str) and "://" not in path):
        with open(path, "rb") as f:
            return pq.read_table(f)
    return pq.read_table(path)


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
    for name, columns in (("utterances", utt), ("dialogue_pairs", pairs), ("sessions", sessions)):
        _write(columns, _declared(name), store.manifest_path(name), meta)
    return len(utt["utterance_id"]), len(pairs["pair_id"])


def refresh_manifests(store: Store) -> bool:
    """Rebuild the manifests unless they are current (:func:`manifests_current`); returns whether it wrote."""
    if manifests_current(store):
        return False
    write_manifests(store)
    return True
