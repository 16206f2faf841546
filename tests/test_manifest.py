"""The Parquet manifests of the shared aligned store: utterances, dialogue pairs, sessions."""

from __future__ import annotations

import numpy as np
import pytest
import zarr


def _table(group: zarr.Group, name: str) -> dict[str, np.ndarray]:
    from ether_prep.store import read_table

    return {k: np.array([str(x) for x in v]) if v.dtype.kind in "TUO" else v
            for k, v in read_table(group, name).items()}


@pytest.mark.slow
def test_manifests_and_pairs(aligned: dict[str, object]) -> None:
    import pyarrow.parquet as pq

    store = aligned["store"]
    manifest = pq.read_table(store / "utterances.parquet").to_pydict()
    root = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)
    n_total = sum(root["sessions"][s]["align"].attrs["n_utterances"] for s in root["sessions"].group_keys())
    assert len(manifest["utterance_id"]) == n_total and len(set(manifest["utterance_id"])) == n_total
    for k in ("session_id", "utterance_index", "start", "end", "speaker", "role", "text", "speaker_coverage",
              "mismatch", "text_valence", "group", "row_start", "n_steps", "flag_minimizing", "cue_flags",
              "speaker_person", "needs_review", "review_reasons"):
        assert k in manifest
    # no column shadows a pandas attribute, and every column says what it holds
    schema = pq.read_schema(store / "utterances.parquet")
    assert "index" not in schema.names and "flags" not in schema.names
    for field in schema:
        assert field.metadata and field.metadata[b"description"], field.name
    # absent values are nulls, not sentinels: the audio-only call has no faces, so no person or mismatch
    call = [i for i, s in enumerate(manifest["session_id"]) if s.startswith("sample")]
    assert call and all(manifest["speaker_person"][i] is None for i in call)
    assert all(manifest["mismatch"][i] is None for i in call)
    assert all(isinstance(manifest["cue_flags"][i], list) for i in call)
    assert all(manifest["needs_review"][i] is not None for i in range(len(manifest["utterance_id"])))
    sessions = pq.read_table(store / "sessions.parquet").to_pydict()
    assert len(sessions["session_id"]) == 4 and "qc_speaker_face_share" in sessions
    pairs = pq.read_table(store / "dialogue_pairs.parquet").to_pydict()
    assert len(pairs["pair_id"]) >= 1  # the two-party call has client turns followed by replies
    ids = set(manifest["utterance_id"])
    roles = dict(zip(manifest["utterance_id"], manifest["role"], strict=True))
    for c, r in zip(pairs["client_utterance"], pairs["counsellor_utterance"], strict=True):
        assert c in ids and r in ids and roles[c] == "client" and roles[r] == "counsellor"
