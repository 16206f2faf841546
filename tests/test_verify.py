"""Verified stores: damage to a stored stage (a chunk deleted, truncated or with flipped bytes, an
array's metadata deleted) is never read as data. ``status`` reports it naming the array, every reader raises a
StoreDamageError naming session, stage and array, ``verify`` exits 1 naming it, and ``verify --repair`` (or a
plain rerun) recomputes the damaged stage and those downstream, back to a store equal to the undamaged run,
array for array; the next rerun is all cached.

One cpu pipeline run on the 6 s side-by-side GRID clip (two faces, speech), copied per case."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from ether_prep.cli import app
from ether_prep.errors import StoreDamageError
from ether_prep.store import Store

from .conftest import GRID2, pipeline
from .ray_helpers import store_digest

pytestmark = pytest.mark.slow  # every test reads the store the real cpu pipeline wrote (`pristine`)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The whole cpu pipeline, once, on the two-faces clip."""
    from ether_prep.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("verify")
    raw = tmp / "raw"
    raw.mkdir()
    shutil.copy(GRID2, raw / GRID2.name)
    store = tmp / "store.zarr"
    summary = run_pipeline(pipeline("cpu"), raw, store, family=None)
    assert summary.ok, summary.report()
    sid = Store(store, mode="r").session_ids()[0]
    return {"raw": raw, "store": store, "sid": sid, "digest": store_digest(store)}


def _copy(pristine: dict[str, object], tmp_path: Path) -> Path:
    dest = tmp_path / "store.zarr"
    shutil.copytree(pristine["store"], dest)  # keeps file times, as `cp -a` and `rsync -a` do
    return dest


def _array_dir(store: Path, sid: str, stage: str, array: str) -> Path:
    return store / "sessions" / sid / stage / array


def _first_chunk(folder: Path) -> Path:
    chunks = sorted(p for p in (folder / "c").rglob("*") if p.is_file())
    assert chunks, f"no chunk stored under {folder}"
    return chunks[0]


def _delete_chunk(folder: Path) -> None:
    _first_chunk(folder).unlink()


def _delete_metadata(folder: Path) -> None:
    (folder / "zarr.json").unlink()


def _truncate(folder: Path) -> None:
    chunk = _first_chunk(folder)
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])


def _flip(folder: Path) -> None:
    chunk = _first_chunk(folder)
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))


DAMAGE: dict[str, Callable[[Path], None]] = {"delete-chunk": _delete_chunk, "delete-metadata": _delete_metadata,
                                              "truncate": _truncate, "flip": _flip}
CASES = [("face", "au", "delete-chunk"), ("audio", "waveform", "delete-chunk"), ("face", "au", "delete-metadata"),
         ("face", "au", "truncate"), ("face", "au", "flip"), ("align", "tensors/face", "flip")]


def _named(message: str, sid: str, stage: str, array: str) -> bool:
    return (f"session {sid!r}" in message and f"stage {stage!r}" in message and f"array {array!r}" in message
            and "verify --repair" in message)


def _read(store: Path, sid: str, stage: str, array: str) -> object:
    """Read a damaged array the way its stage's own reader does."""
    session = Store(store, mode="r").session(sid)
    if stage == "face":
        from ether_prep.stages.face import read_faces

        return read_faces(session)
    if stage == "align":
        import ether_prep

        return ether_prep.open_store(store).utterances()[0]
    return np.asarray(session.array(stage, array)[...])


@pytest.mark.parametrize(("stage", "array", "how"), CASES, ids=[f"{s}-{a}-{h}" for s, a, h in CASES])
def test_damage_is_reported_never_read_and_repaired(pristine: dict[str, object], tmp_path: Path, stage: str,
                                                     array: str, how: str) -> None:
    sid = str(pristine["sid"])
    store = _copy(pristine, tmp_path)
    DAMAGE[how](_array_dir(store, sid, stage, array))

    # status, as text and as JSON: the stage is damaged, naming the array; downstream stages are stale
    text = CliRunner().invoke(app, ["status", "--out", str(store)])
    assert text.exit_code == 0, text.output
    row = next(ln for ln in text.output.splitlines() if ln.startswith(sid) and ln.split()[1] == stage)
    assert row.split()[2] == "damaged" and f"array {array!r}" in row, row
    doc = json.loads(CliRunner().invoke(app, ["status", "--out", str(store), "--json"]).output)
    states = {r["stage"]: r for r in doc["rows"] if r["session"] == sid}
    assert states[stage]["state"] == "damaged" and f"array {array!r}" in states[stage]["message"]
    assert doc["counts"]["damaged"] == 1
    if stage != "align":
        assert states["align"]["state"] == "stale" and "damaged" in states["align"]["message"]

    # readers raise, naming session, stage and array: no fill values, no bare RuntimeError
    with pytest.raises(StoreDamageError) as caught:
        _read(store, sid, stage, array)
    assert _named(str(caught.value), sid, stage, array), caught.value
    if stage == "face":
        exported = CliRunner().invoke(app, ["export", str(tmp_path / "csv"), "--out", str(store), "-f", "faces"])
        assert exported.exit_code == 1 and f"array {array!r}" in exported.output, exported.output

    # verify: exit 1, naming it; --repair: back to the undamaged store; then a rerun is all cached
    checked = CliRunner().invoke(app, ["verify", "--out", str(store)])
    assert checked.exit_code == 1 and f"[{stage}] {array}:" in checked.output, checked.output
    repaired = CliRunner().invoke(app, ["verify", "--repair", "--out", str(store), "--quiet"])
    assert repaired.exit_code == 0, repaired.output
    assert "no damage" in repaired.output.splitlines()[-1]
    assert store_digest(store) == pristine["digest"]
    from ether_prep.runner import run_pipeline

    rerun = run_pipeline(pipeline("cpu"), pristine["raw"], store, family=None)
    assert set(rerun.counts()) == {"cached"}, rerun.report()


def test_undamaged_store_verifies(pristine: dict[str, object]) -> None:
    result = CliRunner().invoke(app, ["verify", "--out", str(pristine["store"])])
    assert result.exit_code == 0 and "no damage" in result.output, result.output
    doc = json.loads(CliRunner().invoke(app, ["status", "--out", str(pristine["store"]), "--json"]).output)
    assert "damaged" not in doc["counts"] and "stale" not in doc["counts"], doc["counts"]


def test_flip_with_its_time_put_back_fails_at_decode_and_in_verify(pristine: dict[str, object],
                                                                   tmp_path: Path) -> None:
    """Bytes changed with the file's time put back pass the fast check (sizes, times); zstd's own checksum stops
    the read, as a StoreDamageError naming the array, and `verify` (every digest) finds it."""
    sid = str(pristine["sid"])
    store = _copy(pristine, tmp_path)
    chunk = _first_chunk(_array_dir(store, sid, "audio", "waveform"))
    st = chunk.stat()
    _flip(chunk.parent.parent)
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(StoreDamageError) as caught:
        np.asarray(Store(store, mode="r").session(sid).array("audio", "waveform")[...])
    assert _named(str(caught.value), sid, "audio", "waveform") and "checksum" in str(caught.value), caught.value
    checked = CliRunner().invoke(app, ["verify", "--out", str(store), "--session", sid])
    assert checked.exit_code == 1 and "[audio] waveform:" in checked.output, checked.output


def test_a_rerun_recomputes_a_damaged_stage_and_what_reads_it(pristine: dict[str, object], tmp_path: Path) -> None:
    """No verify needed: the rerun's fast check finds a deleted face chunk, recomputes face and align (as for a
    stale stage), and the store ends equal to the undamaged run."""
    from ether_prep.runner import run_pipeline

    store = _copy(pristine, tmp_path)
    _delete_chunk(_array_dir(store, str(pristine["sid"]), "face", "au"))
    summary = run_pipeline(pipeline("cpu"), pristine["raw"], store, family=None)
    assert summary.ok, summary.report()
    assert summary.ran("face") and summary.ran("align") and not summary.ran("audio"), summary.report()
    assert any("array 'au'" in note for note in summary.notes), summary.notes
    assert store_digest(store) == pristine["digest"]


def test_new_arrays_carry_zstd_checksums(pristine: dict[str, object]) -> None:
    meta = json.loads((Path(str(pristine["store"])) / "sessions" / str(pristine["sid"]) / "face" / "au"
                       / "zarr.json").read_text())
    zstd = [c for c in meta["codecs"] if c["name"] == "zstd"]
    assert zstd and zstd[0]["configuration"]["checksum"] is True

