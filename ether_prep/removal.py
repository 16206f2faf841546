"""``ether-prep remove``: delete sessions from a store (a recording withdrawn from the study, say).

Everything of a session goes: its group (every stage's arrays and markers, its stored path and metadata), its
time windows under ``parts/``, its rows in the Parquet manifests (rebuilt from the sessions left) and its entry
in the consolidated metadata (consolidated again). The store lock is held throughout, as a run holds it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from .errors import StoreError
from .lock import store_lock
from .store import Store, local_path

__all__ = ["MANIFESTS", "remove_sessions"]

MANIFESTS = ("utterances", "dialogue_pairs", "sessions")


def remove_sessions(store_path: Path | str, session_ids: Sequence[str], wait: float = 0.0) -> list[str]:
    """Delete ``session_ids`` from the store; returns what was removed, a line each, and how the manifests were
    rebuilt. Every id is checked before anything is deleted: an unknown one is a :class:`StoreError` naming it
    (and the id of a session whose recording has that relative path, when one has)."""
    store = Store(store_path, mode="r")  # an error when there is no store at all
    folder = local_path(store_path)
    with store_lock(folder, wait=wait) if folder is not None else contextlib.nullcontext():
        store = Store(store_path)
        stored = store.session_ids()
        infos = {sid: store.session(sid).info for sid in stored}
        unknown = [sid for sid in dict.fromkeys(session_ids) if sid not in infos]
        if unknown:
            by_path = {info.get("relpath"): sid for sid, info in infos.items()}
            hints = [f"{sid!r} (the id of that recording is {by_path[sid]!r})" if sid in by_path else repr(sid)
                     for sid in unknown]
            raise StoreError(f"{store.url}: no session {', '.join(hints)}; nothing removed; "
                             f"`ether-prep status --out {store.url}` lists the session ids")
        manifests = [name for name in MANIFESTS if store.has_manifest(name)]
        lines = []
        for sid in dict.fromkeys(session_ids):
            store.remove_session(sid)
            lines.append(f"removed {sid} ({infos[sid].get('relpath', '')}): its results, stored path and metadata")
        if manifests:
            from .manifest import write_manifests

            n_utt, n_pairs = write_manifests(store)
            lines.append(f"manifests rebuilt without them: {n_utt} utterance(s), {n_pairs} dialogue pair(s) left")
        try:
            store.consolidate()
        except OSError as exc:
            raise StoreError(f"{store.url}: sessions removed, but the metadata could not be consolidated "
                             f"({exc.strerror}), so readers may still list them; free space and run "
                             f"`ether-prep align --out {store.url}`, which consolidates it") from exc
    return lines
