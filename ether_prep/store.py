"""The Zarr v3 store: the one module that knows the on-disk layout.

::

    STORE/                                 a Zarr v3 directory store
      zarr.json                            attrs.ether_prep = {schema_version, version, created}
      sessions/<session_id>/               attrs.session = {id, relpath, path, kind, meta}
        <stage>/                           one group per stage; attrs.stage = completion marker (below)
          <array>                          stage outputs: e.g. audio/waveform (float32, 16 kHz mono)
          <table>/<column>                 a table is a group of equal-length 1-D columns
      parts/<session_id>/<stage>/<k>/     while a stage computes one recording as time windows (a stage's
                                           ``windowed``): window k's per-frame measurements, until the join
                                           has written the stage's group; then removed
      utterances.parquet, dialogue_pairs.parquet   manifests written by ``align``

A stage group's ``stage`` attribute holds ``state`` (running, done, skipped, failed), the ``fingerprint``
of stage version, backend, model, parameters and upstream fingerprints, provenance (library versions,
model ids, parameters, times), and ``outputs``: what the stage wrote (each file's size and digest, each array's
shape and chunk count), which every read checks (see *verified stores* below). The runner writes it with
``state: running`` before the stage runs and with the fingerprint only after every array is written, so an
interrupted stage never counts as done.
Different sessions live in different groups, so workers in different processes never write the same
chunk. Metadata is consolidated once at the end of a run; writers always open unconsolidated.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from . import __version__
from .errors import StoreDamageError, StoreError

__all__ = [
    "SCHEMA_VERSION",
    "CheckedArray",
    "CheckedGroup",
    "Damage",
    "SessionGroup",
    "StageState",
    "Store",
    "absolute_location",
    "is_url",
    "local_path",
    "now",
    "read_group_attrs",
    "read_ragged",
    "stage_marker",
    "write_array",
    "write_labels",
    "write_ragged",
    "write_table",
]

SCHEMA_VERSION = 1
_SESSIONS = "sessions"
_WINDOWS = "parts"  # scratch groups of time windows; the folder keeps its name, so interrupted runs resume
# About 2 MB of float32 per chunk: big enough for fast sequential reads, small enough to slice.
DEFAULT_CHUNK_BYTES = 2 * 1024 * 1024
# zarr's default zstd, with zstd's own content checksum on: a flipped byte fails at decode instead of reading
# as a plausible value (the stage's completion marker also records a digest of every file; see ``verify``).
_COMPRESSORS = (ZstdCodec(level=0, checksum=True),)


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StageState:
    """The recorded state of one stage for one session."""

    stage: str
    state: str  # pending | running | done | skipped | failed
    fingerprint: str | None = None
    error: str | None = None
    note: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        """Done or skipped with a fingerprint: downstream stages may use it."""
        return self.state in ("done", "skipped") and self.fingerprint is not None


def _chunk_rows(n_rows: int, row_bytes: int) -> int:
    return max(1, min(max(n_rows, 1), DEFAULT_CHUNK_BYTES // max(row_bytes, 1)))


def _dims(name: str, shape: tuple[int, ...], dims: Sequence[str] | None) -> list[str]:
    """Zarr v3 dimension names (xarray reads them): ``dims`` as given, or the array's own name for 1-D."""
    if dims is None:
        if len(shape) > 1:
            raise StoreError(f"array {name!r} of shape {shape}: name its dimensions (dims=...)")
        dims = (name,) * len(shape)
    if len(dims) != len(shape):
        raise StoreError(f"array {name!r} of shape {shape}: {len(dims)} dimension names {list(dims)}")
    return list(dims)


def write_array(group: zarr.Group, name: str, data: np.ndarray, chunk_len: int | None = None,
                attrs: Mapping[str, Any] | None = None, dims: Sequence[str] | None = None) -> zarr.Array:
    """Write an N-d array chunked along its first (time) axis; float arrays use NaN as fill. ``dims`` names
    its dimensions (required beyond 1-D; a 1-D array's default is its own name, a coordinate for xarray)."""
    data = np.asarray(data)
    row_bytes = int(np.prod(data.shape[1:], dtype=np.int64)) * data.dtype.itemsize if data.ndim else 1
    rows = chunk_len or _chunk_rows(data.shape[0] if data.ndim else 1, row_bytes)
    chunks = (min(rows, max(data.shape[0], 1)), *data.shape[1:]) if data.ndim else ()
    fill = np.nan if data.dtype.kind == "f" else None
    arr = group.create_array(name, shape=data.shape, chunks=chunks, dtype=data.dtype, fill_value=fill,
                             overwrite=True, dimension_names=_dims(name, data.shape, dims), compressors=_COMPRESSORS)
    if data.size:
        arr[...] = data
    if attrs:
        arr.attrs.update(dict(attrs))
    return arr


def create_array(group: zarr.Group, name: str, shape: tuple[int, ...], dtype: Any,
                 chunk_len: int | None = None, attrs: Mapping[str, Any] | None = None,
                 dims: Sequence[str] | None = None, fill_value: Any = None) -> zarr.Array:
    """Create an empty array chunked along its first (time) axis, for writing block by block
    (``arr[a:b] = block``) or appending, when the whole array would not fit in memory; float arrays fill with
    NaN unless ``fill_value`` says otherwise. ``dims`` as in :func:`write_array`."""
    dtype = np.dtype(dtype)
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize if len(shape) else 1
    rows = chunk_len or _chunk_rows(shape[0] if shape else 1, row_bytes)
    chunks = (min(rows, max(shape[0], 1)) if chunk_len is None else chunk_len, *shape[1:]) if shape else ()
    chunks = tuple(max(c, 1) for c in chunks)
    fill = fill_value if fill_value is not None else (np.nan if dtype.kind == "f" else None)
    arr = group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=fill, overwrite=True,
                             dimension_names=_dims(name, shape, dims), compressors=_COMPRESSORS)
    if attrs:
        arr.attrs.update(dict(attrs))
    return arr


def write_labels(group: zarr.Group, dim: str, labels: Sequence[str]) -> zarr.Array:
    """A 1-D string array named like a dimension: xarray takes it as that dimension's coordinate labels."""
    arr = group.create_array(dim, shape=(len(labels),), dtype=str, overwrite=True, dimension_names=[dim],
                             compressors=_COMPRESSORS)
    if labels:
        arr[...] = np.asarray(labels, dtype=str)
    return arr


def write_table(group: zarr.Group, name: str, columns: Mapping[str, Any],
                attrs: Mapping[str, Any] | None = None, dim: str | None = None) -> zarr.Group:
    """Write a table as a group of equal-length 1-D columns sharing the dimension ``dim`` (default: the
    table's name); str columns become UTF-8 strings."""
    dim = dim or name
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise StoreError(f"table {name!r}: columns differ in length: {lengths}")
    table = group.create_group(name, overwrite=True)
    for col, values in columns.items():
        arr = np.asarray(values)
        if arr.dtype.kind in ("U", "O", "T"):
            arr = arr.astype(str) if arr.size else np.array([], dtype=str)
            out = table.create_array(col, shape=arr.shape, chunks=(_chunk_rows(len(arr), 64),), dtype=str,
                                     dimension_names=[dim], compressors=_COMPRESSORS)
            if arr.size:
                out[...] = arr
        else:
            write_array(table, col, arr, dims=(dim,))
    table.attrs.update({"columns": list(columns), "n_rows": next(iter(lengths.values()), 0), **(attrs or {})})
    return table


def read_table(group: zarr.Group | CheckedGroup, name: str) -> dict[str, np.ndarray]:
    """Read a table written by :func:`write_table` into memory (columns in written order)."""
    with _translated(group, name):
        table = group[name]
        return {col: _plain(table[col][...]) for col in table.attrs.get("columns", list(table.array_keys()))}


def _plain(values: np.ndarray) -> np.ndarray:
    """Zarr returns string columns as numpy's variable-width StringDType; callers get plain unicode."""
    if values.dtype.kind == "T":
        return np.array(values.tolist(), dtype=str) if values.size else np.array([], dtype=str)
    return values


# ------------------------------------------------------------------------------------------ verified stores
# A stage's completion marker records what the stage wrote (``outputs``): every file under its group but the
# group's own zarr.json (which holds the marker), each with its size and a blake2b digest, and every array
# with its shape and number of stored chunks. Two checks use it:
# - fast (every ``stage_group`` read, ``status``, every rerun): every recorded file is there with its recorded
#   size, no chunk file was added; a file modified after the stage wrote it (mtime, on a local store) has its
#   digest compared. One stat per file, no reads: cheap on a cached rerun of a big store.
# - full (``ether-prep verify``): the digest of every file.
# A missing chunk would otherwise read as the fill value (NaN: "no face", 0.0: silence), a missing array
# zarr.json as "the stage wrote no such array"; both are damage here, never data.
_OUTPUTS_FORMAT = 1
_READ_ERRORS = (RuntimeError, ValueError, OSError, EOFError, KeyError)  # zarr / numcodecs decode failures


def _digest(data: bytes, like: str | None = None) -> str:
    """blake2b of a file's bytes: 8 bytes (finds damage; no defence against forgery), or as long as ``like``."""
    return hashlib.blake2b(data, digest_size=len(like) // 2 if like else 8).hexdigest()


def _local_root(zstore: Any) -> Path | None:
    """The folder behind a zarr store on this machine, or None (an object store)."""
    from zarr.storage import FsspecStore, LocalStore

    if isinstance(zstore, LocalStore):
        return Path(zstore.root)
    if isinstance(zstore, FsspecStore):
        protocol = zstore.fs.protocol
        if "file" in ((protocol,) if isinstance(protocol, str) else protocol):
            return Path(zstore.path)
    return None


def _list_files(group: zarr.Group, stage: str) -> dict[str, tuple[int, int | None]]:
    """Every file under a stage's group, relative to it: (size, mtime in ns; None on an object store)."""
    zstore, prefix = group.store, f"{group.path}/{stage}".strip("/")
    root = _local_root(zstore)
    out: dict[str, tuple[int, int | None]] = {}
    if root is not None:
        def scan(folder: str, rel: str) -> None:  # plain scandir: this runs for every cached stage of a rerun
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                return
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    scan(entry.path, f"{rel}{entry.name}/")
                elif not entry.name.endswith(".partial"):  # zarr's temporary of a write in progress (or killed)
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    out[rel + entry.name] = (st.st_size, st.st_mtime_ns)

        scan(str(root / prefix), "")
        return out
    from zarr.core.sync import sync

    async def listing() -> list[str]:
        return [key async for key in zstore.list_prefix(f"{prefix}/")]

    for key in sync(listing()):
        if not key.endswith(".partial"):
            out[key[len(prefix) + 1:]] = (int(sync(zstore.getsize(key))), None)
    return out


def _read_file(group: zarr.Group, stage: str, rel: str) -> bytes | None:
    zstore, key = group.store, f"{group.path}/{stage}/{rel}".strip("/")
    root = _local_root(zstore)
    if root is not None:
        try:
            return (root / key).read_bytes()
        except FileNotFoundError:
            return None
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buf = sync(zstore.get(key, prototype=default_buffer_prototype()))
    return None if buf is None else buf.to_bytes()


def _owner(rel: str, arrays: Collection[str]) -> str | None:
    """The recorded array a file belongs to (its metadata or a chunk), or None."""
    best = None
    for name in arrays:
        if rel.startswith(f"{name}/") and (best is None or len(name) > len(best)):
            best = name
    return best


def record_outputs(group: zarr.Group, stage: str) -> dict[str, Any]:
    """What a stage just wrote under its group (see the section comment): for its completion marker."""
    listed = _list_files(group, stage)
    listed.pop("zarr.json", None)  # the stage group's own metadata: it holds this very record
    files: dict[str, list[Any]] = {}
    arrays: dict[str, dict[str, Any]] = {}
    for rel in sorted(listed):
        data = _read_file(group, stage, rel)
        if data is None:
            continue
        files[rel] = [len(data), _digest(data)]
        if rel == "zarr.json" or rel.endswith("/zarr.json"):
            meta = json.loads(data)
            if meta.get("node_type") == "array":
                arrays[rel.removesuffix("zarr.json").rstrip("/")] = {"shape": list(meta["shape"]), "chunks": 0}
    for rel in files:
        name = _owner(rel, arrays)
        if name is not None and rel != f"{name}/zarr.json":
            arrays[name]["chunks"] += 1
    mtimes = [listed[rel][1] for rel in files if listed[rel][1] is not None]
    return {"format": _OUTPUTS_FORMAT, "written_ns": max(mtimes) if mtimes else None, "arrays": arrays,
            "files": files}


def check_outputs(group: zarr.Group, stage: str, outputs: Mapping[str, Any], full: bool = False,
                  only: str | None = None) -> list[tuple[str, str]]:
    """(array, problem) for every way a stage's files differ from its record; ``full`` compares every file's
    digest (else only those modified since written); ``only`` limits the check to one array or table."""
    arrays = outputs.get("arrays", {})
    recorded: dict[str, list[Any]] = dict(outputs.get("files", {}))
    written = outputs.get("written_ns")
    listed = _list_files(group, stage)
    listed.pop("zarr.json", None)

    def wanted(rel: str) -> bool:
        return only is None or rel == only or rel.startswith(f"{only}/")

    problems: list[tuple[str, str]] = []
    for rel, (size, digest) in recorded.items():
        if not wanted(rel):
            continue
        name = _owner(rel, arrays) or rel.rsplit("/", 1)[0]  # a table's group metadata: the table
        what = "metadata (zarr.json)" if rel.endswith("zarr.json") else f"chunk {rel[len(name) + 1:]}"
        if rel not in listed:
            problems.append((name, f"{what} is missing"))
            continue
        now_size, mtime = listed[rel]
        if now_size != size:
            how = "truncated" if now_size < size else "overwritten"
            problems.append((name, f"{what} is damaged ({how}: {now_size} bytes, the stage wrote {size})"))
            continue
        if full or (written is not None and mtime is not None and mtime > written):
            data = _read_file(group, stage, rel)
            if data is None:
                problems.append((name, f"{what} is missing"))
            elif _digest(data, digest) != digest:
                problems.append((name, f"{what} is damaged (bad checksum: its bytes changed after the stage "
                                       f"wrote them)"))
    for rel in sorted(listed.keys() - recorded.keys()):
        name = _owner(rel, arrays)
        if name is not None and wanted(rel):  # a planted chunk would read as data where the stage wrote fill
            problems.append((name, f"chunk {rel[len(name) + 1:]} was not written by the stage"))
    return problems


@dataclass(frozen=True)
class Damage:
    """One problem found in a stage's stored outputs."""

    session: str
    stage: str
    array: str  # path inside the stage's group ('au', 'tracks/track'); '' for the stage's own metadata
    problem: str

    def message(self, store_url: str | None = None) -> str:
        return damage_message(self.session, self.stage, self.array, self.problem, store_url)


def damage_message(session: str, stage: str, array: str, problem: str, store_url: str | None = None) -> str:
    """'session S, stage T, array A: PROBLEM; run `ether-prep verify --repair`' (the one wording of damage)."""
    out = f" --out {store_url}" if store_url else ""
    where = f"session {session!r}, stage {stage!r}" + (f", array {array!r}" if array else "")
    return f"{where}: {problem}; run `ether-prep verify --repair{out}` to recompute it"


@contextlib.contextmanager
def _translated(group: Any, name: str) -> Iterator[None]:
    """Decode errors of a read through a plain zarr group (not a :class:`CheckedGroup`, which names the session
    and stage itself) as a StoreDamageError naming the node."""
    if isinstance(group, CheckedGroup):
        yield
        return
    try:
        yield
    except KeyError:
        raise
    except _READ_ERRORS as exc:
        parts = f"{group.path}/{name}".strip("/").split("/")
        if len(parts) >= 3 and parts[0] == _SESSIONS:
            raise StoreDamageError(damage_message(parts[1], parts[2], "/".join(parts[3:]),
                                                  f"cannot be read ({type(exc).__name__}: {exc})")) from exc
        raise StoreDamageError(f"{'/'.join(parts)}: cannot be read ({type(exc).__name__}: {exc}); run "
                               f"`ether-prep verify --repair`") from exc


class CheckedArray:
    """A stage's output array as its readers get it: zarr's array, whose decode errors (a truncated chunk,
    a bad zstd checksum) become a StoreDamageError naming session, stage, array and the fix."""

    def __init__(self, array: zarr.Array, owner: SessionGroup, stage: str, name: str) -> None:
        self._array, self._owner, self._stage, self._name = array, owner, stage, name

    def __getitem__(self, selection: Any) -> Any:
        try:
            return self._array[selection]
        except _READ_ERRORS as exc:
            raise self._owner.read_error(self._stage, self._name, exc) from exc

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        data = np.asarray(self[...])
        return data if dtype is None else data.astype(dtype)

    def __len__(self) -> int:
        return len(self._array)

    def __getattr__(self, name: str) -> Any:  # shape, dtype, chunks, attrs, ... as zarr has them
        return getattr(self._array, name)

    def __repr__(self) -> str:
        return f"<CheckedArray {self._owner.id}/{self._stage}/{self._name} {self._array.shape} {self._array.dtype}>"


class CheckedGroup:
    """A stage's output group (or a table or ragged group in it) as its readers get it: members come back as
    :class:`CheckedArray` / :class:`CheckedGroup`, and a member the stage wrote whose metadata is gone is a
    StoreDamageError, never "absent"."""

    def __init__(self, group: zarr.Group, owner: SessionGroup, stage: str, prefix: str = "") -> None:
        self._group, self._owner, self._stage, self._prefix = group, owner, stage, prefix

    def _rel(self, key: str) -> str:
        return f"{self._prefix}/{key}" if self._prefix else key

    def _wrap(self, key: str, node: Any) -> Any:
        if isinstance(node, zarr.Array):
            return CheckedArray(node, self._owner, self._stage, self._rel(key))
        if isinstance(node, zarr.Group):
            return CheckedGroup(node, self._owner, self._stage, self._rel(key))
        return node

    def __getitem__(self, key: str) -> Any:
        try:
            node = self._group[key]
        except _READ_ERRORS as exc:
            error = self._owner.read_error(self._stage, self._rel(key), exc)
            if error is None:
                raise
            raise error from exc
        return self._wrap(key, node)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: str) -> bool:
        if key in self._group:
            return True
        if self._owner.recorded(self._stage, self._rel(key)):
            raise self._owner.read_error(self._stage, self._rel(key), KeyError(key)) or StoreDamageError(key)
        return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._group)

    def arrays(self) -> Iterator[tuple[str, CheckedArray]]:
        for name, arr in self._group.arrays():
            yield name, CheckedArray(arr, self._owner, self._stage, self._rel(name))

    def groups(self) -> Iterator[tuple[str, CheckedGroup]]:
        for name, sub in self._group.groups():
            yield name, CheckedGroup(sub, self._owner, self._stage, self._rel(name))

    @property
    def attrs(self) -> Any:
        return self._group.attrs

    def __getattr__(self, name: str) -> Any:  # array_keys, group_keys, path, ... as zarr has them
        return getattr(self._group, name)

    def __repr__(self) -> str:
        return f"<CheckedGroup {self._owner.id}/{self._stage}/{self._prefix}>"


class SessionGroup:
    """One session's group: stage states, stage outputs, and helpers to read them."""

    def __init__(self, session_id: str, group: zarr.Group, store_url: str | None = None) -> None:
        self.id = session_id
        self.group = group
        self.store_url = store_url  # named in the fix of a damage message
        self._sound: dict[str, tuple[Any, Any]] = {}  # stage -> (fingerprint, finished_at) that passed the check

    @property
    def info(self) -> dict[str, Any]:
        return dict(self.group.attrs.get("session", {}))

    def stage_state(self, stage: str) -> StageState:
        try:
            folder = self._folder()
            if folder is not None:  # read straight from the file: a rerun plans every stage of every session
                attrs = _read_attrs(folder / stage / "zarr.json")
                marker = dict((attrs or {}).get("stage") or {})
            else:
                sub = self.group.get(stage)
                marker = dict(sub.attrs.get("stage", {})) if isinstance(sub, zarr.Group) else {}
        except Exception as exc:  # a half-written zarr.json after a kill: counted as not done, redone
            return StageState(stage, "pending", error=f"unreadable stage metadata ({exc})")
        if not marker:
            return StageState(stage, "pending")
        return StageState(stage, marker.get("state", "pending"), marker.get("fingerprint"),
                          marker.get("error"), marker.get("note"), marker)

    def _folder(self) -> Path | None:
        """The session group's folder when its store is a local directory (else None)."""
        root = getattr(self.group.store, "root", None)
        return Path(root) / self.group.path if isinstance(root, Path) else None

    def damage(self, stage: str, full: bool = False) -> list[Damage]:
        """What is wrong with a completed stage's stored outputs (empty: sound, or not complete). The fast
        check by default, every file's digest with ``full``; a stage written before ether-prep recorded its
        outputs is checked with ``full`` by decoding every chunk of every array."""
        state = self.stage_state(stage)
        if state.error and state.error.startswith("unreadable stage metadata"):
            return [Damage(self.id, stage, "", f"the stage's own metadata (zarr.json) is damaged ({state.error})")]
        if not state.complete:
            return []
        outputs = state.info.get("outputs")
        if outputs is None:
            return self._decode_all(stage) if full else []
        return [Damage(self.id, stage, name, problem)
                for name, problem in check_outputs(self.group, stage, outputs, full=full)]

    def _decode_all(self, stage: str) -> list[Damage]:
        found: list[Damage] = []

        def walk(group: zarr.Group, prefix: str) -> None:
            for name, arr in group.arrays():
                rows = max(1, arr.chunks[0]) if arr.ndim else 1
                try:
                    for a in range(0, max(arr.shape[0], 1) if arr.ndim else 1, rows):
                        np.asarray(arr[a:a + rows] if arr.ndim else arr[...])  # decoded, then dropped
                except _READ_ERRORS as exc:
                    found.append(Damage(self.id, stage, f"{prefix}{name}", f"cannot be read ({type(exc).__name__}:"
                                                                           f" {exc})"))
            for name, sub in group.groups():
                walk(sub, f"{prefix}{name}/")

        walk(self.group[stage], "")
        return found

    def recorded(self, stage: str, name: str) -> bool:
        """Whether the stage's marker records that it wrote the array or group ``name``."""
        files = (self.stage_state(stage).info.get("outputs") or {}).get("files", {})
        return any(rel.startswith(f"{name}/") for rel in files)

    def read_error(self, stage: str, name: str, exc: Exception) -> StoreDamageError | None:
        """The StoreDamageError for an exception raised while reading ``name`` of ``stage`` (None: a KeyError
        for a member the stage never wrote, which stays a KeyError)."""
        outputs = self.stage_state(stage).info.get("outputs")
        if outputs is not None:
            found = check_outputs(self.group, stage, outputs, full=True, only=name)
            if found:
                problems = "; ".join(p for _, p in found[:3]) + (f"; {len(found) - 3} more" if len(found) > 3 else "")
                return StoreDamageError(damage_message(self.id, stage, found[0][0], problems, self.store_url))
        if isinstance(exc, KeyError) and not self.recorded(stage, name):
            return None
        return StoreDamageError(damage_message(self.id, stage, name, f"cannot be read ({type(exc).__name__}: "
                                                                     f"{exc})", self.store_url))

    def stage_group(self, stage: str) -> CheckedGroup:
        """The output group of a completed stage, checked (fast) against what the stage recorded it wrote:
        raises StoreError when the stage is not complete, StoreDamageError when its outputs are damaged."""
        state = self.stage_state(stage)
        if not state.complete:
            raise StoreError(f"session {self.id!r}: stage {stage!r} is {state.state}; run it first")
        key = (state.fingerprint, state.info.get("finished_at"))
        if self._sound.get(stage) != key:
            found = self.damage(stage)
            if found:
                more = (f" (and {len(found) - 1} more problem(s): `ether-prep verify` lists all)"
                        if len(found) > 1 else "")
                raise StoreDamageError(found[0].message(self.store_url) + more)
            self._sound[stage] = key
        return CheckedGroup(self.group[stage], self, stage)

    def begin_stage(self, stage: str, marker: dict[str, Any]) -> zarr.Group:
        """Replace whatever the stage left before with an empty group marked ``running``."""
        running = {**marker, "state": "running", "fingerprint": None, "started_at": now()}
        try:
            old = self.group.get(stage)
        except Exception:  # unreadable metadata: replaced below all the same
            old = None
        if isinstance(old, zarr.Group) and old.attrs.get("stage"):
            # Marked first, before any output goes: a reader checking the marker around each read (the
            # training API) never takes a half-removed group for the done one.
            old.attrs["stage"] = running
        out = self.group.create_group(stage, overwrite=True)
        out.attrs["stage"] = running
        self._sound.pop(stage, None)
        return out

    def finish_stage(self, stage: str, state: str, fingerprint: str | None, **fields: Any) -> None:
        """Write the completion marker last; a failed stage gets no fingerprint. A done or skipped stage's
        marker records what it wrote (``outputs``: files, sizes, digests; arrays, shapes, chunk counts)."""
        out = self.group.require_group(stage)
        marker = dict(out.attrs.get("stage", {}))
        if state != "failed":
            fields = {**fields, "outputs": record_outputs(self.group, stage)}
        marker.update(fields, state=state, fingerprint=fingerprint if state != "failed" else None,
                      finished_at=now())
        out.attrs["stage"] = marker

    def read_table(self, stage: str, name: str) -> dict[str, np.ndarray]:
        return read_table(self.stage_group(stage), name)

    def array(self, stage: str, name: str) -> CheckedArray:
        return self.stage_group(stage)[name]


def open_session(store_path: Path | str, session_id: str) -> SessionGroup:
    """One session's group, read-only, opened directly (cheap enough for every DataLoader worker)."""
    try:
        group = zarr.open_group(f"{store_path}/{_SESSIONS}/{session_id}", mode="r", zarr_format=3,
                                use_consolidated=False)
    except FileNotFoundError:
        raise StoreError(f"{store_path}: no session {session_id!r}") from None
    return SessionGroup(session_id, group, str(store_path))


def _read_attrs(path: Path) -> dict[str, Any] | None:
    """The ``attributes`` of one local ``zarr.json`` (None when there is none; ValueError when cut short). A
    group's attributes only: an array's ``zarr.json`` holds no stage marker, so reads as having none."""
    try:
        doc = json.loads(path.read_bytes())
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: not a Zarr metadata document")
    return dict(doc.get("attributes") or {}) if doc.get("node_type") == "group" else {}


_HEAD_BYTES = 64 * 1024


def _root_attributes(path: Path) -> dict[str, Any] | None:
    """The attributes of a Zarr v3 group's ``zarr.json`` read from its head (zarr writes ``attributes`` first,
    ``zarr_format`` next); None when the file is missing or its head is not laid out so."""
    try:
        with path.open("rb") as fh:
            head = fh.read(_HEAD_BYTES).decode("utf-8", errors="replace")
    except OSError:
        return None
    decoder = json.JSONDecoder()
    try:
        pos = len(head) - len(head.lstrip())
        if head[pos] != "{":
            return None
        key, pos = decoder.raw_decode(head, _skip(head, pos + 1))
        if key != "attributes":
            return None
        pos = _skip(head, pos)
        if head[pos] != ":":
            return None
        attrs, pos = decoder.raw_decode(head, _skip(head, pos + 1))
        pos = _skip(head, pos)
        if head[pos] != ",":
            return None
        key, pos = decoder.raw_decode(head, _skip(head, pos + 1))
        pos = _skip(head, pos)
        fmt, _ = decoder.raw_decode(head, _skip(head, pos + 1)) if head[pos] == ":" else (None, pos)
    except (ValueError, IndexError):  # cut off within the head (huge attributes), or not JSON at all
        return None
    if key != "zarr_format" or fmt != 3 or not isinstance(attrs, dict):
        return None
    return attrs


def _skip(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


def read_group_attrs(location: Path | str, key: str) -> dict[str, Any] | None:
    """The attributes of the group ``key`` (``sessions/<id>/align``) read straight from its ``zarr.json``, with
    no Zarr machinery: cheap enough for every training item and for every session of a rerun. None when the
    group is not there; ``{"stage": {"state": "unreadable"}}`` when its metadata is cut short (a write under
    way or killed)."""
    try:
        if is_url(location) and not str(location).startswith("file://"):
            import fsspec

            fs, root = fsspec.core.url_to_fs(str(location))
            raw = fs.cat_file(f"{root.rstrip('/')}/{key}/zarr.json")
        else:
            return _read_attrs(local_path(location) / key / "zarr.json")  # type: ignore[operator]
    except FileNotFoundError:
        return None
    except ValueError:
        return {"stage": {"state": "unreadable"}}
    try:
        return dict(json.loads(raw).get("attributes", {}))
    except (ValueError, AttributeError):
        return {"stage": {"state": "unreadable"}}


def stage_marker(location: Path | str, session_id: str, stage: str) -> dict[str, Any]:
    """A stage's completion marker (see :class:`StageState`) as stored now; ``{}`` when the stage never ran."""
    attrs = read_group_attrs(location, f"{_SESSIONS}/{session_id}/{stage}")
    return dict((attrs or {}).get("stage") or {})


def is_url(location: str | os.PathLike[str]) -> bool:
    """Whether a store location is an fsspec URL (``file://``, ``s3://``, ``gs://``) rather than a folder."""
    return "://" in str(location)


def local_path(location: str | os.PathLike[str]) -> Path | None:
    """The folder of a store on this machine: the path given, or a ``file://`` URL's; None for other URLs."""
    text = str(location)
    if not is_url(text):
        return Path(text)
    return Path(urlsplit(text).path) if text.startswith("file://") else None


def absolute_location(location: str | os.PathLike[str]) -> str | os.PathLike[str]:
    """A store folder as an absolute path (``~`` expanded), resolved once in the driver: workers (Ray actors,
    other processes) have other working directories, so a relative path would name another folder there.
    URLs are returned as they are."""
    if is_url(location):
        return location
    return Path(os.path.abspath(os.path.expanduser(os.fspath(location))))


class Store:
    """An ether-prep Zarr store (created on first write): a folder, or an fsspec URL such as
    ``s3://bucket/study.zarr`` (credentials come from that filesystem's usual environment, e.g. AWS_PROFILE
    for s3fs, GOOGLE_APPLICATION_CREDENTIALS for gcsfs; the package itself must be installed)."""

    def __init__(self, path: Path | str, mode: str = "a") -> None:
        self.url = str(path)  # what workers on other nodes open
        self.remote = is_url(self.url)
        if mode == "r" and not self._exists("zarr.json"):
            raise StoreError(f"{self.url}: no ether-prep store here; run `ether-prep extract RAW_DIR "
                             f"--out {self.url}` first")
        # fsspec's local filesystem does not make folders for a new key unless asked to.
        options = {"storage_options": {"auto_mkdir": True}} if self.url.startswith("file://") else {}
        try:
            root = self._open_root(mode)
            self.root = root if root is not None else zarr.open_group(self.url, mode=mode, zarr_format=3,
                                                                      use_consolidated=False, **options)
        except Exception as exc:
            raise StoreError(f"{self.url}: cannot open as a Zarr v3 store ({exc})") from exc
        self.dirty = False  # whether this object wrote Zarr metadata (then the run consolidates again)
        meta = self.root.attrs.get("ether_prep")
        if meta is None:
            self.dirty = True
            if mode == "r":
                raise StoreError(f"{self.url}: a Zarr store, but not written by ether-prep")
            self.root.attrs["ether_prep"] = {"schema_version": SCHEMA_VERSION, "version": __version__,
                                             "created": now()}
        elif meta.get("schema_version") != SCHEMA_VERSION:
            raise StoreError(f"{self.url}: store schema version {meta.get('schema_version')} but this ether-prep "
                             f"reads {SCHEMA_VERSION}; write to a new --out or re-run with --force")

    def _open_root(self, mode: str) -> zarr.Group | None:
        """The root group of an existing local store, opened from the head of its ``zarr.json`` alone.

        The root ``zarr.json`` also holds the consolidated metadata of every array (megabytes for a hundred
        sessions), which writers never use: zarr would read and parse all of it on every open. Its attributes
        come first in the file; when the head does not parse as expected, None (zarr opens it as usual).
        A root written through this group loses the consolidated metadata, which the run then writes again
        (:attr:`dirty`)."""
        folder = None if self.remote else local_path(self.url)
        if folder is None or mode not in ("r", "a"):
            return None
        attrs = _root_attributes(folder / "zarr.json")
        if attrs is None:
            return None
        from zarr.core.group import AsyncGroup, GroupMetadata
        from zarr.storage import LocalStore, StorePath

        store = LocalStore(folder, read_only=mode == "r")
        return zarr.Group(AsyncGroup(GroupMetadata(attributes=attrs), StorePath(store)))

    @property
    def path(self) -> Path:
        """The store's folder on this machine (also for a ``file://`` URL); a store elsewhere has none."""
        folder = local_path(self.url)
        if folder is None:
            raise StoreError(f"{self.url}: a store behind a URL has no local folder")
        return folder

    def _exists(self, key: str) -> bool:
        if not self.remote:
            return (Path(self.url) / key).exists()
        import fsspec

        fs, root = fsspec.core.url_to_fs(self.url)
        return bool(fs.exists(f"{root.rstrip('/')}/{key}"))

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.root.attrs["ether_prep"])

    def record_pipeline(self, name: str, config: str, digest: str) -> None:
        """Remember which pipeline (name, config file, digest of its stages) last ran on this store (the root
        ``zarr.json`` is rewritten only when that changes: a cached rerun leaves it alone)."""
        meta = {**self.attrs, "pipeline": name, "config": config, "config_digest": digest}
        if meta != self.attrs:
            self.root.attrs["ether_prep"] = meta
            self.dirty = True

    def session_ids(self) -> list[str]:
        folder = None if self.remote else local_path(self.url)
        if folder is not None:  # a listing, not one metadata read per session through zarr
            base = folder / _SESSIONS
            return sorted(p.name for p in base.iterdir() if (p / "zarr.json").is_file()) if base.is_dir() else []
        if _SESSIONS not in self.root:
            return []
        return sorted(self.root[_SESSIONS].group_keys())

    def session(self, session_id: str, info: Mapping[str, Any] | None = None) -> SessionGroup:
        """A session's group; created (with ``info`` as its attributes) when writing."""
        if info is not None:
            group = self.root.require_group(_SESSIONS).require_group(session_id)
            # Compared as stored (JSON: tuples read back as lists), so unchanged info is never rewritten.
            stored = json.loads(json.dumps(dict(info)))
            if dict(group.attrs.get("session", {})) != stored:
                group.attrs["session"] = stored
                self.dirty = True
        else:
            try:
                group = self.root[f"{_SESSIONS}/{session_id}"]
            except KeyError:
                raise StoreError(f"{self.url}: no session {session_id!r}") from None
        return SessionGroup(session_id, group, self.url)

    def verify(self, session_ids: Sequence[str] | None = None, full: bool = True) -> list[Damage]:
        """Every problem in the stored outputs of every completed stage of these sessions (default: all),
        with the full check (every file's digest) unless ``full`` is False."""
        found: list[Damage] = []
        for sid in session_ids or self.session_ids():
            group = self.session(sid)
            for stage in sorted(group.group.group_keys()):
                found.extend(group.damage(stage, full=full))
        return found

    def remove_session(self, session_id: str) -> None:
        """Delete a session's group and any time windows of it under ``parts/`` (consolidate afterwards)."""
        if session_id not in self.session_ids():
            raise StoreError(f"{self.url}: no session {session_id!r}")
        del self.root[_SESSIONS][session_id]
        windows = self.root.get(_WINDOWS)
        if isinstance(windows, zarr.Group) and session_id in windows:
            del windows[session_id]

    def has_manifest(self, name: str) -> bool:
        """Whether the Parquet manifest ``name`` (see :meth:`manifest_path`) has been written."""
        return self._exists(f"{name}.parquet")

    def begin_window(self, session_id: str, stage: str, index: int) -> zarr.Group:
        """An empty group for window ``index`` of a stage computed in windows (what an earlier try left is
        replaced)."""
        return self.root.require_group(f"{_WINDOWS}/{session_id}/{stage}").create_group(str(index), overwrite=True)

    def window_done(self, session_id: str, stage: str, window: dict[str, Any] | None) -> bool:
        """Whether the group of a window holds that ``window`` computed in full (its ``window`` attribute,
        written last, equals it: index, count, start, end and the stage's fingerprint)."""
        if window is None:
            return False
        try:
            group = self.root.get(f"{_WINDOWS}/{session_id}/{stage}/{window['index']}")
            return isinstance(group, zarr.Group) and group.attrs.get("window") == window
        except ValueError:  # metadata cut short by a kill while it was written: computed again
            return False

    def window_groups(self, session_id: str, stage: str, count: int) -> list[zarr.Group]:
        """The ``count`` window groups of a stage computed in windows, in window order."""
        try:
            return [self.root[f"{_WINDOWS}/{session_id}/{stage}/{k}"] for k in range(count)]
        except KeyError as exc:
            raise StoreError(f"{self.url}: session {session_id!r}, stage {stage!r}: window {exc} is missing; "
                             f"run again") from exc

    def drop_windows(self, session_id: str | None = None, stage: str | None = None,
                     keep: Collection[tuple[str, str]] = ()) -> None:
        """Remove the window groups of a stage (after its join); with no arguments, every one but those of the
        (session, stage) pairs in ``keep`` (at the end of a run: those of a stage whose window failed, whose
        other windows may have been writing until then, and those an earlier run left and this one did not
        reuse; an interrupted run keeps the windows of stages not yet joined, for the next run)."""
        if session_id is None or stage is None:
            windows = self.root.get(_WINDOWS)
            if not isinstance(windows, zarr.Group):
                return
            self.dirty = True
            if not keep:
                del self.root[_WINDOWS]
                return
            for sid, group in list(windows.groups()):
                for name, _ in list(group.groups()):
                    if (sid, name) not in keep:
                        del group[name]
            return
        group = self.root.get(f"{_WINDOWS}/{session_id}")
        if isinstance(group, zarr.Group) and stage in group:
            del group[stage]

    def consolidate(self) -> None:
        """Consolidate metadata once at the end of a run, for fast opening by readers."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
            # The Parquet manifests and the run's lock file beside the hierarchy are ours, not stray objects;
            # so are zarr's own ``*.partial`` temporaries left by a write that was killed.
            warnings.filterwarnings("ignore", message=r".*(\.parquet|\.ether-prep\.lock|\.partial|\.tmp) is not "
                                    r"recognized as a component.*")
            zarr.consolidate_metadata(self.root.store)

    def manifest_path(self, name: str) -> Path | str:
        """Where a Parquet manifest (``utterances``, ``dialogue_pairs``) lives beside the Zarr hierarchy: a path,
        or a URL for a store behind one."""
        return self.manifest_path_of(self.url, name)

    @staticmethod
    def manifest_path_of(location: Path | str, name: str) -> Path | str:
        """:meth:`manifest_path` of the store at ``location``, without opening it."""
        folder = local_path(location)
        return f"{str(location).rstrip('/')}/{name}.parquet" if folder is None else folder / f"{name}.parquet"


# ------------------------------------------------------------------------------------------ ragged rows
# Ragged arrays (per-utterance tensors of different lengths) are stored as a group holding one
# ``offsets`` array (N + 1,) and value arrays that share their first (row) axis: item i is
# ``values[offsets[i]:offsets[i + 1]]``. All value arrays use the same row chunking, so one item's rows
# fall in the same chunk index of every array; chunks are grouped into shards so a long session is a
# handful of files, and reading one item reads one inner chunk (via the shard index) per array.
# Inner chunks are small (64 KiB: about 5-10 utterances of speaker + listener faces) because training
# reads are random and each read decompresses a whole chunk (measured for one utterance's face + mask:
# 1 MiB chunks 2.8-3.1 ms, 256 KiB 1.9-2.1 ms, 64 KiB 1.7-1.8 ms, 16 KiB 2.1 ms); shards are large
# (16 MiB) so a 1-hour session's tensors are one or two files.
RAGGED_CHUNK_BYTES = 64 * 1024
RAGGED_SHARD_BYTES = 16 * 1024 * 1024


def ragged_chunk_rows(row_bytes: int, n_rows: int, chunk_bytes: int = RAGGED_CHUNK_BYTES) -> int:
    """Rows per chunk: ~``chunk_bytes`` of the widest array, a multiple of 64, at most the data."""
    rows = max(64, (chunk_bytes // max(row_bytes, 1)) // 64 * 64)
    return max(1, min(rows, max(n_rows, 1)))


def write_ragged(group: zarr.Group, name: str, columns: Mapping[str, np.ndarray], offsets: np.ndarray,
                 chunk_rows: int | None = None, chunks_per_shard: int | None = None,
                 attrs: Mapping[str, Any] | None = None, dims: Mapping[str, Sequence[str]] | None = None
                 ) -> zarr.Group:
    """Write ragged rows: ``columns`` share their first axis, split into items by ``offsets`` (N + 1,).
    ``dims`` names each column's dimensions (the first is the shared row axis, ``row`` by default)."""
    offsets = np.asarray(offsets, dtype=np.int64)
    n_rows = int(offsets[-1]) if offsets.size else 0
    for col, arr in columns.items():
        if np.asarray(arr).shape[0] != n_rows:
            raise StoreError(f"ragged {name!r}: column {col!r} has {np.asarray(arr).shape[0]} rows, "
                             f"offsets end at {n_rows}")
    widest = max((int(np.prod(np.asarray(a).shape[1:], dtype=np.int64)) * np.asarray(a).dtype.itemsize
                  for a in columns.values()), default=1)
    rows = chunk_rows or ragged_chunk_rows(widest, n_rows)
    per_shard = chunks_per_shard or max(1, RAGGED_SHARD_BYTES // max(rows * widest, 1))
    out = group.create_group(name, overwrite=True)
    for col, arr in columns.items():
        arr = np.asarray(arr)
        chunks = (rows, *arr.shape[1:])
        # Shards only pay off once there are several chunks; a small session stays one plain chunk.
        shards = (rows * per_shard, *arr.shape[1:]) if n_rows > rows else None
        fill = np.nan if arr.dtype.kind == "f" else (False if arr.dtype.kind == "b" else 0)
        col_dims = (dims or {}).get(col) or ("row", *(f"{col}_{i}" for i in range(1, arr.ndim)))
        z = out.create_array(col, shape=arr.shape, chunks=chunks, shards=shards, dtype=arr.dtype,
                             fill_value=fill, overwrite=True, dimension_names=_dims(col, arr.shape, col_dims),
                             compressors=_COMPRESSORS)
        if arr.size:
            z[...] = arr
    write_array(out, "offsets", offsets, dims=("item_edge",))
    out.attrs.update({"columns": list(columns), "n_items": int(max(offsets.size - 1, 0)),
                      "chunk_rows": rows, "shard_rows": rows * per_shard if n_rows > rows else rows,
                      **(attrs or {})})
    return out


def read_ragged(group: zarr.Group | CheckedGroup, name: str, index: int,
                columns: list[str] | None = None) -> dict[str, np.ndarray]:
    """Read item ``index`` of a ragged group written by :func:`write_ragged` (one slice per column)."""
    with _translated(group, name):
        rag = group[name]
        n_items = int(rag.attrs["n_items"])
        if not 0 <= index < n_items:
            raise StoreError(f"ragged {name!r}: item {index} out of range (0..{n_items - 1})")
        lo, hi = (int(x) for x in rag["offsets"][index:index + 2])
        return {col: rag[col][lo:hi] for col in (columns or rag.attrs["columns"])}
