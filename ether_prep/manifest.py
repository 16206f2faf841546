"""Root-level Parquet manifests written after ``align``: one row per utterance, one per dialogue pair.

``utterances.parquet`` columns: ``utterance_id``, ``session_id``, ``index`` (row in the session's
``align/utterances`` table), ``start``, ``end``, ``duration``, ``speaker``, ``role``, ``role_assumed``,
``listener``, ``listener_role``, ``speaker_track``, ``listener_track``, ``text``, ``n_words``,
``word_start``, ``word_end``, ``audio_start``, ``audio_end``, ``sample_rate``, ``speaker_coverage``,
``listener_coverage``, the cue scores (``text_valence``, ``text_arousal``, ``text_distress``,
``distress_word``, ``face_valence``, ``face_expressivity``, ``mismatch``), ``flags`` and ``flag_*``, and
where the tensors live: ``group`` (``sessions/<id>/align``), ``row_start``, ``n_steps`` (rows
``row_start:row_start + n_steps`` of ``<group>/tensors/{time,face,mask}``), ``grid_t0``, ``rate_hz``.

``dialogue_pairs.parquet``: ``pair_id``, ``session_id``, ``client_utterance``, ``counsellor_utterance``,
``client_utterances``, ``counsellor_utterances`` (";"-joined), ``start``, ``end``, ``gap``, ``client_text``,
``counsellor_text``, ``client_mismatch``, ``client_flags``, ``role_assumed``.

Both carry the session's quality check: ``needs_review`` (null when the ``qc`` stage has not run) and
``review_reasons`` (";"-joined). ``sessions.parquet`` has one row per session in the store: ``session_id``,
``relpath``, ``kind``, ``duration``, ``needs_review``, ``review_reasons`` and every ``qc`` metric.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .store import is_url, read_table

if TYPE_CHECKING:
    from .store import Store

__all__ = ["manifest_tables", "write_manifests"]


def manifest_tables(store: Store) -> tuple[dict[str, list[Any]], dict[str, list[Any]], dict[str, list[Any]]]:
    """Columns of the utterance and pair manifests over every session whose ``align`` is done, and of the
    session manifest over every session."""
    from .stages.qc import review_summary

    utt: dict[str, list[Any]] = {}
    pairs: dict[str, list[Any]] = {}
    session_rows: list[dict[str, Any]] = []

    def extend(target: dict[str, list[Any]], cols: dict[str, Any]) -> None:
        for k, v in cols.items():
            target.setdefault(k, []).extend(np.asarray(v).tolist())

    for sid in store.session_ids():
        group = store.session(sid)
        review, reasons = review_summary(group)
        info = group.info
        session_rows.append({"session_id": sid, "relpath": info.get("relpath", ""), "kind": info.get("kind", ""),
                             "duration": (info.get("probe") or {}).get("duration"), "needs_review": review,
                             "review_reasons": ";".join(reasons), **_qc_metrics(group)})
        state = group.stage_state("align")
        if state.state != "done":
            continue
        align = group.group["align"]
        attrs = dict(align.attrs)
        t = read_table(align, "utterances")
        n = len(t["id"])
        if n:
            cols: dict[str, Any] = {"utterance_id": t["id"], "session_id": [sid] * n}
            for k in ("index", "start", "end"):
                cols[k] = t[k]
            cols["duration"] = t["end"] - t["start"]
            cols.update({"speaker": t["speaker"], "role": t["role"],
                         "role_assumed": [bool(attrs.get("role_assumed", True))] * n})
            for k in ("listener", "listener_role", "speaker_track", "listener_track", "text"):
                cols[k] = t[k]
            cols["n_words"] = t["word_end"] - t["word_start"]
            for k in ("word_start", "word_end", "audio_start", "audio_end"):
                cols[k] = t[k]
            cols["sample_rate"] = [int(attrs.get("sample_rate", 16000))] * n
            for k in ("speaker_coverage", "listener_coverage", "text_valence", "text_arousal", "text_distress",
                      "distress_word", "face_valence", "face_expressivity", "mismatch", "flags"):
                cols[k] = t[k]
            cols.update({k: t[k] for k in t if k.startswith("flag_")})
            cols.update({"group": [f"sessions/{sid}/align"] * n, "row_start": t["row_start"],
                         "n_steps": t["n_steps"], "grid_t0": t["grid_t0"],
                         "rate_hz": [float(attrs.get("rate_hz", 0.0))] * n,
                         "needs_review": [review] * n, "review_reasons": [";".join(reasons)] * n})
            extend(utt, cols)
        p = read_table(align, "pairs")
        m = len(p["id"])
        if m:
            cols = {"pair_id": p["id"], "session_id": [sid] * m}
            cols.update({k: v for k, v in p.items() if k != "id"})
            cols["role_assumed"] = [bool(attrs.get("role_assumed", True))] * m
            cols.update({"needs_review": [review] * m, "review_reasons": [";".join(reasons)] * m})
            extend(pairs, cols)
    # Sessions measure different things (audio-only ones have no face metrics): null where absent.
    keys = list(dict.fromkeys(k for row in session_rows for k in row))
    sessions = {k: [row.get(k) for row in session_rows] for k in keys}
    return utt, pairs, sessions


def _qc_metrics(group: Any) -> dict[str, Any]:
    """The session's qc metrics as ``qc_<metric>`` (none when qc has not run)."""
    if group.stage_state("qc").state != "done":
        return {}
    return {f"qc_{k}": v for k, v in dict(group.stage_group("qc").attrs.get("metrics", {})).items()}


def _write(columns: dict[str, list[Any]], path: os.PathLike[str] | str, schema_hint: list[str]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(columns) if columns else pa.table({k: pa.array([], pa.string()) for k in schema_hint})
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
    """A manifest's columns as numpy arrays (strings as object arrays)."""
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}


def write_manifests(store: Store) -> tuple[int, int]:
    """Write ``utterances.parquet``, ``dialogue_pairs.parquet`` and ``sessions.parquet`` at the store root;
    returns the utterance and pair row counts."""
    utt, pairs, sessions = manifest_tables(store)
    _write(utt, store.manifest_path("utterances"), ["utterance_id", "session_id"])
    _write(pairs, store.manifest_path("dialogue_pairs"), ["pair_id", "session_id"])
    _write(sessions, store.manifest_path("sessions"), ["session_id"])
    return len(utt.get("utterance_id", [])), len(pairs.get("pair_id", []))
