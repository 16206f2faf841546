"""Training API: open an aligned store and read per-utterance tensors lazily from Zarr.

``open_store(path)`` reads the ``utterances.parquet`` manifest (written by ``ether-prep align``) into
memory; an :class:`UtteranceDataset` selects rows of it and reads each utterance's face tensors from
``sessions/<id>/align/tensors`` on ``__getitem__`` (two slices of one chunk each). It is a PyTorch
``Dataset`` by protocol (``__len__`` / ``__getitem__``), so torch is imported only by :meth:`collate`.

Example::

    from torch.utils.data import DataLoader
    import ether_prep

    store = ether_prep.open_store("ether_prep.zarr")
    ds = store.utterances(role="client", min_coverage=0.5)      # or flag="minimizing", session=...
    loader = DataLoader(ds, batch_size=4, shuffle=True, num_workers=2, collate_fn=ds.collate)
    for batch in loader:
        x = batch["speaker_face"]        # (B, T, D) float32, 0 where no face
        m = batch["speaker_mask"]        # (B, T) bool: a face at that step (False past the utterance)
        listener = batch["listener_face"]  # (B, T, D): the other person's reaction, same time axis
        valid = batch["valid"]           # (B, T) bool: step inside the utterance's own length
        texts, ids = batch["text"], batch["utterance_id"]
        ...

Each item is a dict: ``utterance_id``, ``session_id``, ``speaker``, ``role``, ``listener_role``, ``text``,
``start``, ``end``, ``time`` (T,) seconds, ``speaker_face`` / ``listener_face`` (T, D) float32,
``speaker_mask`` / ``listener_mask`` (T,) bool, ``cues`` (6,) float32 in :data:`CUE_NAMES` order, every
per-utterance array a registered stage declares (``Stage.utterance_arrays``), by its name: ``pooled`` (2, 3, D)
[speaker|listener] x [mean, std, max] from ``align``, ``functionals`` (88,) eGeMAPS functionals from ``voice``,
``timing`` (7,) from ``timing``, ``text_embedding`` (D,) from ``text``; every per-step array a stage declares
(``Stage.step_arrays``) over the same T steps: ``voice`` (T, 25) eGeMAPS descriptors (0 where masked),
``voice_mask`` (T,) audio frames at that step, ``voice_voiced`` (T,) a voiced frame (None, and zeros in a batch,
where the session has no voice); plus ``words`` (list of (text, start, end)) with
``with_words=True`` and ``audio`` (float32 samples of the utterance) with ``with_audio=True``.

Consistency: every manifest row carries the fingerprint (and finish time) of its session's ``align`` run. Each
item is read between two looks at that session's ``align`` marker; when it is not the one the row was built
from (the session was re-aligned since the store was opened, or is being re-aligned now), the item raises a
:class:`~ether_prep.errors.StoreError` saying so (reopen the store with ``open_store``), never rows of another
layout. With ``with_words`` the ``utterances`` result must still be the one that align read.

``open_store(path, deidentify=True, names=[...])`` scrubs every text on read: e-mail addresses, phone numbers,
URLs and the listed names become ``[EMAIL]``, ``[PHONE]``, ``[URL]``, ``[NAME]`` in utterance texts, dialogue
pair texts and words (see :mod:`ether_prep.deidentify`); the face tensors hold no boxes or landmarks anyway.
Every id and path that carries a file name (``session_id``, ``utterance_id``, ``pair_id``, ``relpath``,
``group``, ...) holds the session's keyed alias instead, in items, manifests and :meth:`AlignedStore.to_pandas`
(``key=`` or ``$ETHER_PREP_DEID_KEY``, else the store's ``.ether-prep-key``); filters take real ids or aliases.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .align.cues import CUE_NAMES
from .errors import StoreDamageError, StoreError

__all__ = ["CUE_NAMES", "AlignedStore", "PairDataset", "UtteranceDataset", "collate_pairs", "collate_utterances",
           "open_store"]



def _item_columns() -> dict[str, str]:
    """Utterance manifest columns the items carry (declared ``"item"`` by their stages): name -> Arrow type."""
    from .manifest import flagged_columns

    return flagged_columns("utterances", "item")


def _text_columns() -> set[str]:
    """Manifest columns of free text (declared ``"text"``): what de-identification scrubs."""
    from .manifest import flagged_columns

    return {*flagged_columns("utterances", "text"), *flagged_columns("dialogue_pairs", "text")}
_BUILD_TRIES = 5


def _same_align(marker: dict[str, Any], fingerprint: Any, finished_at: Any) -> bool:
    """Whether a session's ``align`` marker is the one manifest rows with these values were built from."""
    return (marker.get("state") == "done" and marker.get("fingerprint") == fingerprint
            and marker.get("finished_at") == finished_at)


def _changed(root: Path, sid: str, marker: dict[str, Any], stale_manifest: bool) -> str:
    """What to say when rows no longer match their session's ``align`` results, and what to do about it."""
    reopen = f"reopen it with ether_prep.open_store({str(root)!r})"
    state = marker.get("state", "gone")
    if state == "running":
        return (f"{root}: the store changed since it was opened (session {sid!r} is being re-aligned: a run is "
                f"writing it); {reopen} when that run has finished")
    if state != "done":
        return (f"{root}: the store changed since it was opened (session {sid!r}: its align results are "
                f"{state}); run `ether-prep align --out {root}`, then {reopen}")
    if stale_manifest:  # reopening would read the same rows: the manifests themselves are behind
        return (f"{root}: session {sid!r} was re-aligned after the manifests were written (a run that did not "
                f"finish?); run `ether-prep align --out {root}` to rebuild them (nothing is recomputed), then "
                f"{reopen}")
    return f"{root}: the store changed since it was opened (session {sid!r} re-aligned); {reopen}"


def open_store(path: str | os.PathLike[str], deidentify: bool = False,
               names: Iterable[str] | str | os.PathLike[str] | None = None,
               key: str | bytes | None = None) -> AlignedStore:
    """Open a store written by ``ether-prep extract`` + ``ether-prep align`` for reading.

    ``deidentify=True`` scrubs texts on read and aliases ids and paths; ``names`` is a list of names or a names
    file (one per line); ``key`` the secret aliases are keyed with (default: ``$ETHER_PREP_DEID_KEY``, else the
    store's own key file, see :func:`ether_prep.deidentify.deid_key`).
    """
    return AlignedStore(path, deidentify=deidentify, names=names, key=key)


class AlignedStore:
    """An aligned store: the utterance and pair manifests in memory, tensors read on demand."""

    def __init__(self, path: str | os.PathLike[str], deidentify: bool = False,
                 names: Iterable[str] | str | os.PathLike[str] | None = None,
                 key: str | bytes | None = None) -> None:
        from .store import Store

        self.path = Path(path)
        store = Store(self.path, mode="r")  # a clear StoreError when there is no ether-prep store
        manifest = store.manifest_path("utterances")
        if not manifest.exists():
            raise StoreError(f"{self.path}: no utterances.parquet manifest; run `ether-prep align --out "
                             f"{self.path}` first")
        self._store = store
        self.manifest, self.pair_manifest, self.build = self._read_manifests()
        self.deid = None
        self._ids: Any = None  # IdAliases when de-identified
        if deidentify:
            self._deidentify(path, names, key)
        elif names is not None or key is not None:
            raise StoreError("names= and key= only apply with deidentify=True")

    def _deidentify(self, path: str | os.PathLike[str], names: Any, key: str | bytes | None) -> None:
        """Scrub the manifests' texts and alias every id and path in them (see the module docstring)."""
        from .deidentify import Deidentifier, deid_key, read_names

        listed = read_names(names) if isinstance(names, str | os.PathLike) else list(names or ())
        self.deid = Deidentifier(listed, key=deid_key(path, key))
        self._ids = _id_aliases(self.deid, self._store, self.manifest.get("session_id", ()))
        texts = _text_columns()
        for table in (self.manifest, self.pair_manifest):
            for col in list(table):
                if col in texts:
                    table[col] = np.array([self.deid.text(str(t)) for t in table[col]], dtype=object)
                else:
                    table[col] = self._ids(table[col])

    def _alias(self, values: str | Sequence[str]) -> list[str]:
        """Filter values as the (aliased) manifests hold them: a real id or path becomes its alias."""
        values = [values] if isinstance(values, str) else list(values)
        return [self._ids(str(v)) for v in values] if self._ids is not None else values

    def _read_manifests(self) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], str | None]:
        """The utterance and pair manifests of one build. A run writes them one after the other, each whole: a
        reader that met two builds reads again (a moment later, both are the new build)."""
        from .manifest import read_manifest_build

        pairs = self._store.manifest_path("dialogue_pairs")
        for attempt in range(_BUILD_TRIES):
            utt, meta = read_manifest_build(self._store.manifest_path("utterances"))
            pair, pair_meta = read_manifest_build(pairs) if pairs.exists() else ({}, meta)
            if meta.get("build") == pair_meta.get("build"):
                break
            time.sleep(0.1 * (attempt + 1))
        else:
            raise StoreError(f"{self.path}: utterances.parquet and dialogue_pairs.parquet are from different "
                             f"builds; run `ether-prep align --out {self.path}` to rebuild them")
        for name, table in (("utterances.parquet", utt), ("dialogue_pairs.parquet", pair)):
            self._require_identity(name, table)
        return utt, pair, meta.get("build")

    def _require_identity(self, name: str, columns: Any) -> None:
        """Rows without the align identity they were built from cannot be checked against the store, so they are
        refused rather than read as current (a manifest written by an older ether-prep, or edited by hand)."""
        if len(columns) and "align_fingerprint" not in columns:
            raise StoreError(f"{self.path}: {name} has no align_fingerprint column, so its rows cannot be checked "
                             f"against the store; run `ether-prep align --out {self.path}` to rebuild it")

    def to_pandas(self, which: str = "utterances") -> Any:
        """A manifest as a pandas DataFrame: ``utterances``, ``pairs`` or ``sessions``, as it is now; a
        StoreError when any of its sessions was re-aligned after it was written."""
        import pyarrow as pa

        from .manifest import read_parquet
        from .store import stage_marker

        names = {"utterances": "utterances", "pairs": "dialogue_pairs", "sessions": "sessions"}
        if which not in names:
            raise StoreError(f"unknown manifest {which!r}; use one of {', '.join(names)}")
        path = self._store.manifest_path(names[which])
        if not path.exists():
            raise StoreError(f"{self.path}: no {path.name}; run `ether-prep align --out {self.path}` first")
        table = read_parquet(path)
        frame = table.to_pandas()
        for field in table.schema:  # nullable integer ids stay integers (plain pandas makes them float64)
            if pa.types.is_integer(field.type) and (table.column(field.name).null_count
                                                    or b"null" in (field.metadata or {}).get(b"description", b"")):
                frame[field.name] = frame[field.name].astype("Int64")
        self._require_identity(path.name, frame)
        if "align_fingerprint" in frame:  # checked on the real ids, before any aliasing
            rows = frame[["session_id", "align_fingerprint", "align_finished_at"]].drop_duplicates()
            for sid, fp, finished in rows.itertuples(index=False):
                if fp is None:  # a session not aligned (sessions.parquet)
                    continue
                marker = stage_marker(self.path, sid, "align")
                if not _same_align(marker, fp, finished):
                    raise StoreError(_changed(self.path, sid, marker, stale_manifest=True))
        if self.deid is not None:
            texts = _text_columns()
            for col in frame.columns:
                if col in texts:
                    frame[col] = frame[col].map(lambda t: self.deid.text(str(t)) if t is not None else t)
                elif frame[col].dtype.kind not in "biufcmM":  # strings and lists (any dtype): ids, paths
                    frame[col] = frame[col].map(self._ids)
        return frame

    def pairs(self, session: str | Sequence[str] | None = None, flag: str | Sequence[str] | None = None,
              min_mismatch: float | None = None, with_words: bool = False) -> PairDataset:
        """A dataset of dialogue pairs (a client turn and the counsellor's reply), both people's faces over
        each turn; ``flag`` keeps pairs whose client turn raised any of the named cue flags."""
        m = self.pair_manifest
        n = len(m.get("pair_id", []))
        keep = np.ones(n, dtype=bool)
        if session is not None:
            keep &= np.isin(m["session_id"].astype(str), self._alias(session))
        if flag is not None:
            wanted = {flag} if isinstance(flag, str) else set(flag)
            keep &= np.array([bool(wanted & set(f)) for f in m["client_flags"]], dtype=bool)
        if min_mismatch is not None:
            keep &= np.nan_to_num(m["client_mismatch"].astype(float), nan=-1.0) >= min_mismatch
        return PairDataset(self.utterances(with_words=with_words), {k: v[keep] for k, v in m.items()})

    def __len__(self) -> int:
        return len(self.manifest.get("utterance_id", []))

    def sessions(self) -> list[str]:
        return sorted(set(self.manifest.get("session_id", np.array([])).tolist()))

    def utterances(self, session: str | Sequence[str] | None = None, role: str | Sequence[str] | None = None,
                   flag: str | Sequence[str] | None = None, min_mismatch: float | None = None,
                   min_coverage: float | None = None, ids: Iterable[str] | None = None,
                   where: Callable[[dict[str, np.ndarray]], np.ndarray] | None = None,
                   with_words: bool = False, with_audio: bool = False) -> UtteranceDataset:
        """A dataset of the utterances matching every filter given.

        ``flag`` keeps utterances carrying any of the named cue flags (``minimizing``, ...);
        ``min_coverage`` applies to the speaker's face; ``where`` gets the manifest columns and returns a
        bool mask.
        """
        m = self.manifest
        keep = np.ones(len(self), dtype=bool)

        def isin(col: str, values: str | Sequence[str]) -> np.ndarray:
            return np.isin(m[col].astype(str), [values] if isinstance(values, str) else list(values))

        if session is not None:
            keep &= isin("session_id", self._alias(session))
        if role is not None:
            keep &= isin("role", role)
        if flag is not None:
            any_flag = np.zeros(len(self), dtype=bool)
            for f in [flag] if isinstance(flag, str) else flag:
                if f"flag_{f}" not in m:
                    known = [k.removeprefix("flag_") for k in m if k.startswith("flag_")]
                    raise StoreError(f"{self.path}: unknown cue flag {f!r}; known: {', '.join(known)}")
                any_flag |= m[f"flag_{f}"].astype(bool)
            keep &= any_flag
        if min_mismatch is not None:
            keep &= np.nan_to_num(m["mismatch"].astype(float), nan=-1.0) >= min_mismatch
        if min_coverage is not None:
            keep &= m["speaker_coverage"].astype(float) >= min_coverage
        if ids is not None:
            keep &= isin("utterance_id", self._alias(list(ids)))
        if where is not None:
            keep &= np.asarray(where(m), dtype=bool)
        return UtteranceDataset(self.path, {k: v[keep] for k, v in m.items()}, with_words, with_audio, self.deid,
                                self._ids.real if self._ids is not None else None, self.build)


def _id_aliases(deid: Any, store: Any, listed: Iterable[str] = ()) -> Any:
    """:class:`~ether_prep.deidentify.IdAliases` of every session in ``store`` (and ``listed`` in a manifest),
    with the recording paths their file names come from."""
    from .deidentify import IdAliases

    sessions: dict[str, str] = {str(s): "" for s in listed}
    for sid in store.session_ids():
        try:
            sessions[sid] = str(store.session(sid).info.get("relpath") or "")
        except StoreError:
            sessions.setdefault(sid, "")
    return IdAliases(deid, sessions.items())


def _utterance_arrays() -> list[tuple[Any, str]]:
    """(stage class, array name) of every per-utterance array the registered stages declare, in pipeline order:
    items carry each by its name (``pooled``, ...)."""
    from .stages import stage_classes

    return [(cls, name) for cls in stage_classes() for name in cls.utterance_arrays]


def _step_arrays() -> list[tuple[Any, str]]:
    """(stage class, item key) of every per-step array the registered stages declare (``voice``, ...): items carry
    each over their steps, collate pads it along time."""
    from .stages import stage_classes

    return [(cls, key) for cls in stage_classes() for key in cls.step_arrays]


class _SessionArrays:
    """One session's open arrays and small per-session tables, read once per process (through the readers of
    the stages that own them)."""

    def __init__(self, root: Path, session_id: str) -> None:
        from .stages.align import read_align_tensors
        from .store import open_session

        self.session = open_session(root, session_id)
        try:
            tensors = read_align_tensors(self.session)
            self.face, self.mask, self.feature_names = tensors.face, tensors.mask, tensors.feature_names
            # Small per-utterance arrays (pooled features, ...), read whole: one row per item.
            self.per_utterance = {name: cls.read_utterance_array(self.session, name)
                                  for cls, name in _utterance_arrays()}
            # Per-step arrays on the same rows as the face tensors (voice, ...), opened: sliced per item.
            self.per_step = {key: arr for cls in {c for c, _ in _step_arrays()}
                             for key, arr in cls.open_step_arrays(self.session).items()}
        except StoreDamageError:  # says which array is damaged and how to fix it
            raise
        except (KeyError, StoreError) as exc:
            raise StoreError(f"{root}: session {session_id!r} has no align tensors ({exc}); re-run "
                             f"`ether-prep align --out {root}`") from exc
        self._words: dict[str, np.ndarray] | None = None
        self._wave: Any = None

    def words(self) -> dict[str, np.ndarray]:
        from .stages.utterances import read_transcript

        if self._words is None:
            try:
                self._words = read_transcript(self.session).words
            except StoreDamageError:
                raise
            except StoreError:  # the stage has not run: no words
                self._words = {}
        return self._words

    def waveform(self) -> Any:
        from .stages.audio import read_audio

        if self._wave is None:
            self._wave = read_audio(self.session).waveform
        return self._wave


class UtteranceDataset:
    """Per-utterance tensors, read lazily; ``Dataset``-compatible (``len``, ``[i]``) with a padding collate."""

    def __init__(self, root: Path, rows: dict[str, np.ndarray], with_words: bool = False,
                 with_audio: bool = False, deid: Any = None, real_ids: dict[str, str] | None = None,
                 build: str | None = None) -> None:
        self.root = Path(root)
        self.rows = rows
        self.build = build  # of the manifests the rows came from
        self.with_words = with_words
        self.with_audio = with_audio
        self.deid = deid  # a Deidentifier: words are scrubbed as they are read
        self._real_ids = real_ids or {}  # de-identified: alias -> session id, to find the session's arrays
        self._cache: dict[str, _SessionArrays] = {}
        self._words_seen: dict[str, Any] = {}  # session -> finish time of the utterances result first checked
        self._pid = os.getpid()
        self._columns = _item_columns()
        self._cues = np.stack([rows[c].astype(np.float32) for c in CUE_NAMES], axis=1) if len(self) else \
            np.zeros((0, len(CUE_NAMES)), np.float32)

    def __len__(self) -> int:
        return len(self.rows.get("utterance_id", []))

    def __getstate__(self) -> dict[str, Any]:
        # DataLoader workers get the selection, not open arrays; each opens its own.
        state = dict(self.__dict__)
        state["_cache"] = {}
        return state

    @property
    def feature_names(self) -> list[str]:
        """Names of the face feature columns (the last axis of ``speaker_face`` / ``listener_face``)."""
        if not len(self):
            return []
        return self._session(str(self.rows["session_id"][0])).feature_names

    def _session(self, session_id: str) -> _SessionArrays:
        if os.getpid() != self._pid:  # forked worker: never reuse the parent's handles
            self._cache, self._pid = {}, os.getpid()
        arrays = self._cache.get(session_id)
        if arrays is None:
            real = self._real_ids.get(session_id, session_id)
            arrays = self._cache[session_id] = _SessionArrays(self.root, real)
        return arrays

    def check(self, sid: str, fingerprint: Any, finished_at: Any) -> None:
        """Raise a StoreError unless session ``sid``'s results are still those rows with this align
        ``fingerprint`` and ``finished_at`` were built from (two small metadata reads with words, else one)."""
        from .store import stage_marker

        real = self._real_ids.get(sid, sid)  # de-identified rows carry aliases; the store has the real ids
        marker = stage_marker(self.root, real, "align")
        if _same_align(marker, fingerprint, finished_at):
            if not self.with_words:
                return
            words = stage_marker(self.root, real, "utterances")
            if words.get("state") == "done" and words.get("fingerprint") == (marker.get("upstream") or {}).get(
                    "utterances") and words.get("finished_at") == self._words_seen.setdefault(
                    sid, words.get("finished_at")):
                return
            raise StoreError(f"{self.root}: the store changed since it was opened (session {sid!r}: its "
                             f"utterances were recomputed after align read them); run `ether-prep align --out "
                             f"{self.root}`, then reopen it with ether_prep.open_store({str(self.root)!r})")
        raise StoreError(_changed(self.root, sid, marker, stale_manifest=self._manifest_unchanged()))

    def _manifest_unchanged(self) -> bool:
        """Whether the manifest on disk is still the build these rows came from."""
        from .manifest import manifest_meta
        from .store import Store

        path = Store.manifest_path_of(self.root, "utterances")
        return self.build is not None and manifest_meta(path).get("build") == self.build

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"utterance index {i} out of range for {len(self)} utterances")
        i = int(i) % len(self)
        sid = str(self.rows["session_id"][i])
        identity = (sid, self.rows["align_fingerprint"][i], self.rows["align_finished_at"][i])
        # Read between two looks at the session's align marker: a re-align before or during the read is seen.
        self.check(*identity)
        try:
            item = self._read(i, sid)
        except Exception as exc:
            try:
                self.check(*identity)  # a read torn by a re-align says so; any other error is itself
            except StoreError as changed:
                raise changed from exc
            raise
        self.check(*identity)
        return item

    def _read(self, i: int, sid: str) -> dict[str, Any]:
        r = self.rows
        arrays = self._session(sid)
        lo = int(r["row_start"][i])
        n = int(r["n_steps"][i])
        face = arrays.face[lo:lo + n]
        mask = arrays.mask[lo:lo + n]
        # The grid is t0 + k / rate, exactly as the stage built it, so it need not be read from disk.
        time = float(r["grid_t0"][i]) + np.arange(n, dtype=np.float64) / float(r["rate_hz"][i])
        item: dict[str, Any] = {k: _scalar(r[k][i], kind) for k, kind in self._columns.items()}
        item.update({
            "time": time,
            "speaker_face": face[:, 0], "speaker_mask": mask[:, 0],
            "listener_face": face[:, 1], "listener_mask": mask[:, 1],
            "cues": self._cues[i],
        })
        index = int(r["utterance_index"][i])
        item.update({name: None if values is None else values[index] for name, values in arrays.per_utterance.items()})
        # Per-step arrays of stages not done in this session are None; collate fills them with zeros and False.
        item.update({key: None for _, key in _step_arrays()})
        item.update({key: np.asarray(arr[lo:lo + n]) for key, arr in arrays.per_step.items()})
        if self.with_words:
            w = arrays.words()
            a, b = int(r["word_start"][i]), int(r["word_end"][i])
            item["words"] = [(str(w["text"][k]), float(w["start"][k]), float(w["end"][k])) for k in range(a, b)] \
                if w else []
            if self.deid is not None and item["words"]:
                texts = self.deid.words([t for t, _, _ in item["words"]])
                item["words"] = [(t, s, e) for t, (_, s, e) in zip(texts, item["words"], strict=True)]
        if self.with_audio:
            item["audio"] = np.asarray(arrays.waveform()[int(r["audio_start"][i]):int(r["audio_end"][i])])
        return item

    def collate(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad a list of items to the longest (see :func:`collate_utterances`); torch tensors out."""
        return collate_utterances(batch, as_torch=True)


_NUMPY = {"float64": np.float64, "int64": np.int64, "bool": np.bool_}


def _scalar(value: Any, kind: str) -> Any:
    """A manifest cell as an item field: a str (None stays None) or a Python number."""
    if value is None:
        return None
    return str(value) if kind == "string" else _NUMPY[kind](value).item()


def collate_utterances(batch: list[dict[str, Any]], as_torch: bool = True) -> dict[str, Any]:
    """Stack items, padding time axes to the longest with zeros and masks with False.

    Adds ``lengths`` (B,) and ``valid`` (B, T) (step within the item's own length); strings and words stay
    lists; ``audio`` is zero-padded with ``audio_lengths``.
    """
    n = len(batch)
    out: dict[str, Any] = {}
    for k, kind in _item_columns().items():  # strings stay lists; numbers become arrays
        values = [b[k] for b in batch]
        out[k] = values if kind == "string" else np.asarray(values, dtype=_NUMPY[kind])
    out.update(_pad_turns(batch, as_torch=False))
    for _, name in _utterance_arrays():  # declared per-utterance arrays (pooled, functionals, ...)
        out.update(_stack_rows(name, [b.get(name) for b in batch]))
    out["cues"] = np.stack([b["cues"] for b in batch]) if n else np.zeros((0, len(CUE_NAMES)))
    if n and "words" in batch[0]:
        out["words"] = [b["words"] for b in batch]
    if n and "audio" in batch[0]:
        alen = np.array([len(b["audio"]) for b in batch], dtype=np.int64)
        audio = np.zeros((n, int(alen.max())), dtype=np.float32)
        for j, b in enumerate(batch):
            audio[j, :alen[j]] = b["audio"]
        out["audio"], out["audio_lengths"] = audio, alen
    return _to_torch(out) if as_torch else out


def _stack_rows(name: str, values: list[Any]) -> dict[str, Any]:
    """One declared per-utterance array over a batch: stacked when every item has it; when some items' sessions
    lack it (a stage not done there: a video without audio has no voice), float rows are NaN there, otherwise
    (none has it, or they differ) the list as it is; either way ``<name>_present`` (B,) says which items have it."""
    given = [v for v in values if v is not None]
    if values and len(given) == len(values):
        return {name: np.stack(values)}
    present = {f"{name}_present": np.array([v is not None for v in values], dtype=bool)} if values else {}
    shapes = {np.shape(v) for v in given}
    if given and len(shapes) == 1 and np.asarray(given[0]).dtype.kind == "f":
        rows = np.full((len(values), *shapes.pop()), np.nan, dtype=np.asarray(given[0]).dtype)
        for j, v in enumerate(values):
            if v is not None:
                rows[j] = v
        return {name: rows, **present}
    return {name: values or np.zeros((0,)), **present}


_STEP_KEYS = ("time", "speaker_face", "listener_face", "speaker_mask", "listener_mask")


def _pad_turns(items: list[dict[str, Any]], as_torch: bool) -> dict[str, Any]:
    """The per-step arrays of ``items`` padded to the longest: ``lengths``, ``valid`` and :data:`_STEP_KEYS`."""
    n = len(items)
    lengths = np.array([len(b["time"]) for b in items], dtype=np.int64)
    t_max = int(lengths.max()) if n else 0
    dims = {b["speaker_face"].shape[-1] for b in items}
    if len(dims) > 1:  # one store has one width: sessions aligned with other face backends may mix them
        raise StoreError(f"utterances with different face feature widths {sorted(dims)} in one batch; "
                         f"re-run `ether-prep align --force` so every session has the same feature columns")
    dim = dims.pop() if n else 0
    out: dict[str, Any] = {"lengths": lengths, "valid": np.arange(t_max)[None, :] < lengths[:, None],
                           "time": np.zeros((n, t_max), dtype=np.float64)}
    for key in ("speaker_face", "listener_face"):
        out[key] = np.zeros((n, t_max, dim), dtype=np.float32)
    for key in ("speaker_mask", "listener_mask"):
        out[key] = np.zeros((n, t_max), dtype=bool)
    for j, b in enumerate(items):
        for key in _STEP_KEYS:
            out[key][j, :lengths[j]] = b[key]
    out.update(_pad_declared(items, lengths, t_max))
    return _to_torch(out) if as_torch else out


def _pad_declared(items: list[dict[str, Any]], lengths: np.ndarray, t_max: int) -> dict[str, np.ndarray]:
    """The declared per-step arrays (``voice``, ``voice_mask``, ...) padded to ``t_max`` steps: zeros (False)
    past each item's length and for items whose session lacks them (its stage not done: no audio, say)."""
    out = {}
    for _, key in _step_arrays():
        given = [b.get(key) for b in items if b.get(key) is not None]
        if not any(key in b for b in items):
            continue
        shapes = {v.shape[1:] for v in given}
        if len(shapes) > 1:  # e.g. sessions computed with different feature sets
            raise StoreError(f"utterances with different {key!r} widths {sorted(shapes)} in one batch; re-run "
                             f"that stage with --force so every session has the same columns")
        shape = shapes.pop() if shapes else ()
        dtype = given[0].dtype if given else np.float32
        padded = np.zeros((len(items), t_max, *shape), dtype=dtype)
        for j, b in enumerate(items):
            if b.get(key) is not None:
                padded[j, :lengths[j]] = b[key]
        out[key] = padded
    return out


def _to_torch(out: dict[str, Any]) -> dict[str, Any]:
    import torch

    return {k: torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v for k, v in out.items()}


class PairDataset:
    """Dialogue pairs read lazily: each item holds the client's turn and the counsellor's reply, each as the
    concatenated tensors of its utterances (``speaker_face`` is the one talking, ``listener_face`` the other
    person over the same steps) and every declared per-utterance array stacked over its U utterances
    (``text_embedding`` (U, D), ``timing`` (U, 7), ...), plus the pair's texts and cues."""

    def __init__(self, utterances: UtteranceDataset, rows: dict[str, np.ndarray]) -> None:
        self.utterances = utterances
        self.rows = rows
        self._row_of = {str(u): k for k, u in enumerate(utterances.rows.get("utterance_id", []))}

    def __len__(self) -> int:
        return len(self.rows.get("pair_id", []))

    def _turn(self, ids: Sequence[str]) -> dict[str, Any]:
        missing = [str(u) for u in ids if str(u) not in self._row_of]
        if missing:
            raise StoreError(f"{self.utterances.root}: pair names utterance(s) {missing} that the utterance "
                             f"manifest does not hold; run `ether-prep align --out {self.utterances.root}`, then "
                             f"reopen it with ether_prep.open_store({str(self.utterances.root)!r})")
        parts = [self.utterances[self._row_of[str(u)]] for u in ids]
        turn = {k: np.concatenate([p[k] for p in parts]) for k in
                ("time", "speaker_face", "speaker_mask", "listener_face", "listener_mask")}
        for _, key in _step_arrays():  # voice, ...: over the same steps (None where the session lacks it)
            values = [p[key] for p in parts]
            turn[key] = np.concatenate(values) if values and all(v is not None for v in values) else None
        turn["utterance_ids"] = [str(u) for u in ids]
        turn["text"] = " ".join(p["text"] for p in parts)
        for _, name in _utterance_arrays():  # declared per-utterance arrays: (U, ...), one row per utterance
            values = [p.get(name) for p in parts]
            turn[name] = np.stack(values) if values and all(v is not None for v in values) else None
        return turn

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not -len(self) <= i < len(self):
            raise IndexError(f"pair index {i} out of range for {len(self)} pairs")
        i = int(i) % len(self)
        r = self.rows
        # The pair's own rows against the marker too (its utterances are checked as they are read).
        self.utterances.check(str(r["session_id"][i]), r["align_fingerprint"][i], r["align_finished_at"][i])
        return {"pair_id": str(r["pair_id"][i]), "session_id": str(r["session_id"][i]),
                "start": float(r["start"][i]), "end": float(r["end"][i]),
                "client_mismatch": float("nan") if r["client_mismatch"][i] is None else float(r["client_mismatch"][i]),
                "client_flags": list(r["client_flags"][i]),
                "client": self._turn(r["client_utterances"][i]),
                "counsellor": self._turn(r["counsellor_utterances"][i])}

    def collate(self, batch: list[dict[str, Any]]) -> dict[str, Any]:
        """Pad each turn to the longest in the batch (see :func:`collate_pairs`); torch tensors out."""
        return collate_pairs(batch, as_torch=True)


def collate_pairs(batch: list[dict[str, Any]], as_torch: bool = True) -> dict[str, Any]:
    """Stack pairs: ``client`` and ``counsellor`` are each padded like :func:`collate_utterances` batches."""
    out: dict[str, Any] = {k: [b[k] for b in batch] for k in ("pair_id", "session_id", "client_flags")}
    out["start"] = np.array([b["start"] for b in batch], dtype=np.float64)
    out["end"] = np.array([b["end"] for b in batch], dtype=np.float64)
    out["client_mismatch"] = np.array([b["client_mismatch"] for b in batch], dtype=np.float64)
    for side in ("client", "counsellor"):
        turns = [b[side] for b in batch]
        out[side] = _pad_turns(turns, as_torch)
        out[side]["utterance_ids"] = [t["utterance_ids"] for t in turns]
        out[side]["text"] = [t["text"] for t in turns]
        out[side].update(_pad_utterance_arrays(turns, as_torch))
    return _to_torch(out) if as_torch else out


def _pad_utterance_arrays(turns: list[dict[str, Any]], as_torch: bool) -> dict[str, Any]:
    """Each declared per-utterance array of the turns, (U_i, ...) padded with zeros to (B, U, ...) when every
    turn has it (else a list), and ``n_utterances`` (B,): how many rows of each turn are its own."""
    counts = np.array([len(t["utterance_ids"]) for t in turns], dtype=np.int64)
    out: dict[str, Any] = {"n_utterances": counts}
    for _, name in _utterance_arrays():
        values = [t.get(name) for t in turns]
        if not values or any(v is None for v in values):
            out[name] = values
            continue
        padded = np.zeros((len(values), int(counts.max()), *values[0].shape[1:]), dtype=values[0].dtype)
        for j, v in enumerate(values):
            padded[j, :len(v)] = v
        out[name] = padded
    return _to_torch(out) if as_torch else out
