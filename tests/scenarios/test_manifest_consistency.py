"""Manifests never disagree with the tensors a reader gets, and a cached rerun writes nothing.

On the ``aligned`` store (the real ``cpu`` pipeline over four shared clips, conftest): a reader opened before a
re-align (``rate_hz`` 10 -> 5: every utterance's tensor rows change) raises a StoreError saying so for every
item, never rows of the other layout; readers opened before, during and after a re-align running in another
process get items equal to the tensors of the align run their rows name, or that error; a manifest write that
fails half way leaves the old manifest whole at its path; a fully cached rerun leaves the manifests and the root
``zarr.json`` untouched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import zarr

import ether_prep
from ether_prep.errors import StoreError

from ..conftest import pipeline, pipeline_file

MANIFESTS = ("utterances.parquet", "dialogue_pairs.parquet", "sessions.parquet")


def _copy(aligned: dict[str, Any], name: str) -> Path:
    store = aligned["tmp"] / name
    shutil.copytree(aligned["store"], store)
    return store


def _tensors(store: Path) -> dict[tuple[str, str], dict[str, np.ndarray]]:
    """(session, align fingerprint) -> that session's stored tensors (face, mask) and rate."""
    root = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=False)
    out = {}
    for sid in root["sessions"].group_keys():
        align = root["sessions"][sid]["align"]
        marker = dict(align.attrs["stage"])
        out[(sid, marker["fingerprint"])] = {"face": align["tensors/face"][...], "mask": align["tensors/mask"][...],
                                             "rate_hz": float(align.attrs["rate_hz"])}
    return out


def _consistent(item: dict[str, Any], row: dict[str, Any], ref: dict[str, np.ndarray]) -> None:
    """The item holds exactly the tensor rows of the align run its manifest row names."""
    lo, n = int(row["row_start"]), int(row["n_steps"])
    assert len(item["time"]) == n
    assert np.allclose(np.diff(item["time"]), 1.0 / ref["rate_hz"])
    assert np.array_equal(item["speaker_face"], ref["face"][lo:lo + n, 0])
    assert np.array_equal(item["listener_mask"], ref["mask"][lo:lo + n, 1])


def _row(ds: Any, i: int) -> dict[str, Any]:
    return {k: ds.rows[k][i] for k in ("session_id", "align_fingerprint", "row_start", "n_steps")}


def _realign(store: Path, raw: Path, rate: float) -> Any:
    from ether_prep.runner import run_pipeline

    summary = run_pipeline(pipeline("cpu", align={"rate_hz": rate}), raw, store, family=None)
    assert summary.ok, summary.report()
    assert {o.stage for o in summary.outcomes if o.state == "done"} == {"align", "voice", "qc"}, summary.report()
    return summary


@pytest.mark.slow  # reads the `aligned` store, made with the cpu pipeline\'s models
def test_rows_carry_their_align_fingerprint(aligned: dict[str, Any]) -> None:
    store = aligned["store"]
    markers = {sid: fp for (sid, fp) in _tensors(store)}
    for name in MANIFESTS:
        table = pq.read_table(store / name).to_pydict()
        for sid, fp in zip(table["session_id"], table["align_fingerprint"], strict=True):
            assert fp == markers[sid], name
        assert all(table["align_finished_at"]), name


def test_reader_opened_before_a_realign_raises_then_a_reopened_one_reads_the_new_layout(
        aligned: dict[str, Any]) -> None:
    store = _copy(aligned, "realign.zarr")
    before = ether_prep.open_store(store)
    ds, pairs = before.utterances(with_words=True), before.pairs()
    assert len(ds) >= 4 and len(pairs) >= 1
    old = _tensors(store)
    for i in range(len(ds)):  # consistent before
        row = _row(ds, i)
        _consistent(ds[i], row, old[(row["session_id"], row["align_fingerprint"])])
    pairs[0]

    _realign(store, aligned["raw"], rate=5.0)
    new = _tensors(store)
    assert not set(new) & set(old)  # every session has a new align fingerprint
    for i in range(len(ds)):  # never the new rows read through the old manifest's offsets
        with pytest.raises(StoreError, match=r"changed since it was opened .*re-aligned.*open_store"):
            ds[i]
    with pytest.raises(StoreError, match="re-aligned"):
        pairs[0]
    # the DataFrame view reads the manifest as it is now: the rebuilt one, rows of the new layout
    frame = before.to_pandas()
    assert set(frame["rate_hz"]) == {5.0}
    assert {(s, f) for s, f in zip(frame["session_id"], frame["align_fingerprint"], strict=True)} <= set(new)

    after = ether_prep.open_store(store)
    ds2 = after.utterances(with_words=True)
    assert len(ds2) == len(ds)
    for i in range(len(ds2)):
        row = _row(ds2, i)
        _consistent(ds2[i], row, new[(row["session_id"], row["align_fingerprint"])])
    assert len(after.pairs()[0]["client"]["time"]) > 0


@pytest.mark.slow  # reads the `aligned` store, made with the cpu pipeline\'s models
def test_an_interrupted_realign_leaves_a_manifest_that_says_so(aligned: dict[str, Any]) -> None:
    """Tensors re-aligned but the run never got to rebuild the manifests (killed): reading says which session
    and to run align; `ether-prep align` then rebuilds them without recomputing anything."""
    store = _copy(aligned, "interrupted.zarr")
    kept = {n: (store / n).read_bytes() for n in MANIFESTS}
    _realign(store, aligned["raw"], rate=5.0)
    for name, data in kept.items():  # as if the run had been killed before its end
        (store / name).write_bytes(data)
    ds = ether_prep.open_store(store).utterances()
    with pytest.raises(StoreError, match=r"re-aligned after the manifests were written.*ether-prep align --out"):
        ds[0]
    with pytest.raises(StoreError, match="re-aligned after the manifests were written"):
        ether_prep.open_store(store).to_pandas("pairs")
    summary = _realign_cached(store, aligned["raw"], rate=5.0)
    assert summary.manifests_written and not summary.wrote
    ds = ether_prep.open_store(store).utterances()
    new = _tensors(store)
    row = _row(ds, 0)
    _consistent(ds[0], row, new[(row["session_id"], row["align_fingerprint"])])


def _realign_cached(store: Path, raw: Path, rate: float) -> Any:
    from ether_prep.runner import run_pipeline

    summary = run_pipeline(pipeline("cpu", align={"rate_hz": rate}), raw, store, family=None)
    assert summary.ok and set(summary.counts()) <= {"cached", "skipped"}, summary.report()
    return summary


@pytest.mark.slow  # reads the `aligned` store, made with the cpu pipeline\'s models
def test_readers_during_a_realign_get_consistent_items_or_a_clear_error(aligned: dict[str, Any]) -> None:
    """A re-align runs in another process (the CLI) while readers opened before and during it read items."""
    store = _copy(aligned, "during.zarr")
    old = _tensors(store)
    config = pipeline_file(aligned["tmp"], "cpu", align={"rate_hz": 5.0})
    first = ether_prep.open_store(store).utterances()
    run = subprocess.Popen([sys.executable, "-m", "ether_prep.cli", "align", "--out", str(store), "-c", str(config),
                            "-p", "cpu", "-x", "inline", "-q"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []
    errors: list[str] = []
    readers = [first]
    try:
        k = 0
        while run.poll() is None:
            ds = readers[k % len(readers)]
            i = k % len(ds)
            k += 1
            try:
                item = ds[i]
            except StoreError as exc:
                errors.append(str(exc))
                assert "open_store" in str(exc) and "session" in str(exc), exc
                readers.append(ether_prep.open_store(store).utterances())  # opened during the run
                continue
            if len(seen) < 400:
                seen.append((_row(ds, i), {k2: item[k2] for k2 in ("time", "speaker_face", "listener_mask")}))
            if k % 50 == 0 and len(readers) < 20:
                readers.append(ether_prep.open_store(store).utterances())
    finally:
        out = run.communicate(timeout=300)[0]
    assert run.returncode == 0, out
    new = _tensors(store)
    refs = {**old, **new}
    assert seen and errors, (len(seen), errors[:3])  # items before the re-align, errors once it began
    for row, item in seen:  # every item equals the tensors of the run its row names, whichever that was
        _consistent(item, row, refs[(row["session_id"], row["align_fingerprint"])])
    after = ether_prep.open_store(store).utterances()
    for i in range(len(after)):
        row = _row(after, i)
        _consistent(after[i], row, new[(row["session_id"], row["align_fingerprint"])])


@pytest.mark.slow  # reads the `aligned` store, made with the cpu pipeline\'s models
def test_a_failed_manifest_write_leaves_the_old_manifest_whole(aligned: dict[str, Any],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    from ether_prep.manifest import write_manifests
    from ether_prep.store import Store

    store = _copy(aligned, "torn.zarr")
    path = store / "utterances.parquet"
    kept = path.read_bytes()
    real = pq.write_table

    def half_then_fail(table: Any, where: Any, **kw: Any) -> None:
        real(table.slice(0, max(1, table.num_rows // 2)), where, **kw)  # some bytes reach the file ...
        raise OSError(28, "No space left on device")  # ... then the disk fills up

    monkeypatch.setattr(pq, "write_table", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        write_manifests(Store(store))
    monkeypatch.undo()
    assert path.read_bytes() == kept  # never a part at the final path
    assert not list(store.glob(".*.tmp"))  # nor a temporary file left beside it
    assert len(ether_prep.open_store(store)) == pq.read_metadata(path).num_rows

    # Readers polling while the manifests are rewritten again and again only ever read whole files.
    stop, reads, bad = threading.Event(), [0], []

    def poll() -> None:
        while not stop.is_set():
            try:
                n = pq.read_table(path).num_rows
                reads[0] += 1
                if n != len(kept_rows):
                    bad.append(n)
            except Exception as exc:  # any failure to read is what this looks for
                bad.append(repr(exc))

    kept_rows = pq.read_table(path).column("utterance_id").to_pylist()
    poller = threading.Thread(target=poll)
    poller.start()
    try:
        st = Store(store)
        for _ in range(5):
            write_manifests(st)
    finally:
        stop.set()
        poller.join()
    assert reads[0] > 0 and not bad, bad[:3]


@pytest.mark.slow  # reads the `aligned` store, made with the cpu pipeline\'s models
def test_a_fully_cached_rerun_writes_nothing(aligned: dict[str, Any]) -> None:
    from ether_prep.runner import run_pipeline

    store = _copy(aligned, "cached.zarr")
    cpu = pipeline("cpu")
    first = run_pipeline(cpu, aligned["raw"], store, family=None)  # the copy's first run: nothing computes
    assert first.ok and not first.wrote, first.report()
    watched = [store / "zarr.json", *(store / n for n in MANIFESTS)]

    def stamps() -> list[tuple[int, int]]:
        return [(p.stat().st_ino, p.stat().st_mtime_ns) for p in watched]

    before = stamps()
    for family in (None, "align", "extract"):
        summary = run_pipeline(cpu, aligned["raw"] if family != "align" else None, store, family=family)
        assert summary.ok and not summary.wrote and not summary.manifests_written, summary.report()
        assert stamps() == before, family  # manifests and the root zarr.json (consolidated metadata) untouched

    # A manifest gone: the next rerun rebuilds the manifests, and still leaves the Zarr metadata alone.
    (store / "sessions.parquet").unlink()
    summary = run_pipeline(cpu, aligned["raw"], store, family=None)
    assert summary.manifests_written and not summary.wrote
    assert (store / "sessions.parquet").exists() and stamps()[0] == before[0]
    # A stage that reran (qc, forced): rebuilt and consolidated again.
    summary = run_pipeline(cpu, aligned["raw"], store, family=None, only=["qc"], force=True)
    assert summary.wrote and summary.manifests_written
    assert stamps()[0] != before[0]
    root = zarr.open_group(str(store), mode="r", zarr_format=3, use_consolidated=True)
    assert root.metadata.consolidated_metadata is not None


@pytest.mark.parametrize("layout", ["as_zarr_writes_it", "keys_reordered", "compact"])
def test_the_store_opens_from_the_head_of_a_large_root_zarr_json(tmp_path: Path, layout: str) -> None:
    """The root group is opened from its attributes at the head of ``zarr.json`` (not the consolidated
    metadata after them); any other layout of the file is opened by zarr as before, with the same result."""
    import json

    from ether_prep.store import Store, write_array

    store = Store(tmp_path / "s.zarr")
    group = store.session("s1", info={"id": "s1"})
    out = group.begin_stage("audio", {"stage": "audio"})
    write_array(out, "waveform", np.arange(10, dtype=np.float32))
    group.finish_stage("audio", "done", "fp1")
    store.record_pipeline("cpu", "pipelines.yaml", "abc")
    store.consolidate()
    path = tmp_path / "s.zarr" / "zarr.json"
    doc = json.loads(path.read_text())
    assert "consolidated_metadata" in doc and list(doc)[:2] == ["attributes", "zarr_format"]
    if layout == "keys_reordered":
        path.write_text(json.dumps(dict(reversed(list(doc.items()))), indent=2))
    elif layout == "compact":
        path.write_text(json.dumps(doc, separators=(",", ":")))
    reopened = Store(tmp_path / "s.zarr", mode="r")
    assert reopened.attrs == store.attrs and reopened.attrs["pipeline"] == "cpu"
    assert reopened.session_ids() == ["s1"]
    state = reopened.session("s1").stage_state("audio")
    assert (state.state, state.fingerprint) == ("done", "fp1")
    assert np.array_equal(reopened.session("s1").array("audio", "waveform")[...], np.arange(10))
    # written through it, the root keeps its attributes (the run consolidates again: the store is dirty)
    writer = Store(tmp_path / "s.zarr")
    writer.record_pipeline("cpu", "other.yaml", "abd")
    assert writer.dirty and Store(tmp_path / "s.zarr", mode="r").attrs["config"] == "other.yaml"


@pytest.mark.slow  # reads the `aligned` store, made with the cpu pipeline's models
def test_a_manifest_without_its_align_identity_is_refused(aligned: dict[str, Any]) -> None:
    """Rows that cannot be checked against the store (no align_fingerprint column: an older ether-prep's manifest,
    or one edited by hand) are refused with the file's name, not read as current."""
    store = _copy(aligned, "no_identity")
    path = store / "utterances.parquet"
    table = pq.read_table(path)
    pq.write_table(table.drop_columns(["align_fingerprint"]), path)
    with pytest.raises(StoreError, match=r"utterances\.parquet has no align_fingerprint"):
        ether_prep.open_store(store)
