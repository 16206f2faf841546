"""Stages own their outputs: a stage added in this file reaches the manifests and the dataset with no edit in
manifest, dataset or qc; no module opens another stage's group; no import circle, inside functions too."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml

from ether_prep.stages import STAGES
from ether_prep.stages.audio import read_audio
from ether_prep.stages.base import Stage
from ether_prep.stages.utterances import read_transcript
from ether_prep.store import write_array

from .conftest import GRID2, ROOT, pipeline_file

PACKAGE = ROOT / "ether_prep"


class LoudnessStage(Stage):
    """Each utterance's RMS level and peak (array ``loudness``, (N, 2)), and the level as a manifest column."""

    name = "loudness"
    family = "align"
    requires = ("utterances", "align")
    needs_stream = "audio"
    manifest_columns: ClassVar[dict[str, dict[str, tuple[str, ...]]]] = {
        "utterances": {"loudness_db": ("float64", "utterance RMS level, dB full scale")}}
    utterance_arrays = ("loudness",)

    def run(self, session: Any, store: Any, out: Any) -> str | None:
        audio, utts = read_audio(store), read_transcript(store).utterances
        rows = []
        for start, end in zip(utts.get("start", []), utts.get("end", []), strict=True):
            x = audio.samples(round(start * audio.sample_rate), round(end * audio.sample_rate))
            rows.append((10 * np.log10(np.mean(x ** 2) + 1e-12), np.abs(x).max(initial=0.0)))
        write_array(out, "loudness", np.asarray(rows, np.float64).reshape(-1, 2), dims=("utterance", "stat"))
        return None

    @classmethod
    def manifest_values(cls, store: Any) -> dict[str, dict[str, Any]]:
        values = cls.read_utterance_array(store, "loudness")
        return {} if values is None else {"utterances": {"loudness_db": values[:, 0]}}


@pytest.fixture(scope="module")
def with_loudness(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The cpu pipeline plus the loudness stage, over the 8 s side-by-side clip (registered for this run only)."""
    from ether_prep.config import load_pipeline
    from ether_prep.runner import run_pipeline

    tmp = tmp_path_factory.mktemp("ownership")
    (tmp / "raw").mkdir()
    (tmp / "raw" / GRID2.name).symlink_to(GRID2)
    shipped = yaml.safe_load((ROOT / "pipelines.yaml").read_text(encoding="utf-8"))["pipelines"]["cpu"]["stages"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(STAGES, "loudness", f"{__name__}:LoudnessStage")
        path = pipeline_file(tmp, "cpu", [*shipped, {"stage": "loudness"}])
        summary = run_pipeline(load_pipeline("cpu", path), tmp / "raw", tmp / "store.zarr", family=None)
        assert summary.ok, summary.report()
        yield {"store": tmp / "store.zarr"}  # the stage stays registered while the tests read its outputs


@pytest.mark.slow
def test_a_new_stage_reaches_manifests_and_dataset(with_loudness: dict[str, Any]) -> None:
    import pyarrow.parquet as pq

    import ether_prep
    from ether_prep.store import open_session

    root = with_loudness["store"]
    store = ether_prep.open_store(root)
    ds = store.utterances()
    assert len(ds) >= 2  # two people, one turn each
    session = open_session(root, str(ds.rows["session_id"][0]))
    stored = np.asarray(session.array("loudness", "loudness")[...])
    assert stored.shape == (len(ds), 2) and np.isfinite(stored).all() and (stored[:, 1] > 0).all()
    for i in range(len(ds)):
        item = ds[i]
        assert np.array_equal(item["loudness"], stored[int(ds.rows["utterance_index"][i])])
    assert ds.collate([ds[0], ds[1]])["loudness"].shape == (2, 2)
    frame = store.to_pandas("utterances")
    assert np.allclose(frame["loudness_db"].to_numpy(), stored[frame["utterance_index"].to_numpy(), 0])
    table = pq.read_table(root / "utterances.parquet")
    assert table.column("loudness_db").to_pylist() == frame["loudness_db"].tolist()
    field = table.schema.field("loudness_db")
    assert field.metadata[b"description"] == b"utterance RMS level, dB full scale"
    # The columns every other stage declares are all still there, the new one after them.
    assert table.column_names[-3:] == ["loudness_db", "align_fingerprint", "align_finished_at"]
    assert "needs_review" in table.column_names and "mismatch" in table.column_names


# ------------------------------------------------------------------------------------- static checks
_OPENERS = {"stage_group": 0, "array": 0, "read_table": 0, "stage_marker": 2}  # -> the argument naming the stage


def _owner_of(path: Path) -> str | None:
    """The stage a module belongs to: ``stages/<name>.py`` (None for every other module)."""
    rel = path.relative_to(PACKAGE)
    return rel.stem if rel.parts[0] == "stages" and rel.stem in STAGES else None


def _opened_stages(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, stage) of every place a stage's group is opened by name: ``x.stage_group("align")``,
    ``x.array("audio", ...)``, ``x.read_table("transcribe", ...)``, ``stage_marker(root, sid, "qc")``, and the
    session's raw group indexed by a stage (``x.group["align"]``)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            at = _OPENERS.get(name)
            arg = node.args[at] if at is not None and len(node.args) > at else None
            if isinstance(arg, ast.Constant) and arg.value in STAGES:
                found.append((node.lineno, arg.value))
        elif (isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant)
              and isinstance(node.value, ast.Attribute) and node.value.attr == "group"
              and node.slice.value in STAGES):
            found.append((node.lineno, node.slice.value))
    return found


# The training API and the status view check a session's align and utterances markers (not their outputs) to
# know whether rows are still current: markers are the store's, every stage has one.
_MARKER_READERS = {"dataset.py": {"align", "utterances"}}


def test_no_module_opens_another_stages_group() -> None:
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        owner = _owner_of(path)
        allowed = _MARKER_READERS.get(path.name, set())
        for line, stage in _opened_stages(ast.parse(path.read_text(encoding="utf-8"))):
            if stage != owner and stage not in allowed:
                wrong.append(f"{path.relative_to(ROOT)}:{line} opens stage {stage!r}'s outputs")
    assert not wrong, "read them through the stage's reader (stages/<stage>.py) instead:\n" + "\n".join(wrong)


def _imports(path: Path) -> set[str]:
    """Every ether_prep module ``path`` imports, at module level or inside a function."""
    rel = path.relative_to(ROOT).with_suffix("")
    package = list(rel.parts[:-1])  # the package a relative import starts from (an __init__'s own)
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            mod = ".".join([*base, *(node.module.split(".") if node.module else [])])
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("ether_prep")}


def test_manifest_and_dataset_import_no_stage_that_imports_them_back() -> None:
    """The collect step reads stages through the registry; no stage imports the manifest or the dataset."""
    for path in sorted((PACKAGE / "stages").glob("*.py")):
        back = {m for m in _imports(path) if m in ("ether_prep.manifest", "ether_prep.dataset")}
        assert not back, f"{path.relative_to(ROOT)} imports {sorted(back)}: an import circle with the collect step"
    assert not {m for m in _imports(PACKAGE / "manifest.py") if m.startswith("ether_prep.stages.qc")}


def test_collect_rules_broadcast_each_and_refuse_what_is_not_declared() -> None:
    from ether_prep.manifest import _rows
    from ether_prep.stages.base import Each

    columns = {"utterance_id": ("string", ""), "level": ("float64", ""), "gone": ("float64", "")}
    rows = _rows("utterances", "s1", {"utterance_id": ["s1/u0", "s1/u1"], "level": Each(0.5)}, columns)
    assert rows == {"utterance_id": ["s1/u0", "s1/u1"], "level": [0.5, 0.5], "gone": [None, None]}
    assert _rows("utterances", "s1", {"level": Each(0.5)}, columns) == {}  # no row-defining stage: no rows
    with pytest.raises(ValueError, match="'level' has 1 values for 2 rows"):
        _rows("utterances", "s1", {"utterance_id": ["a", "b"], "level": [1.0]}, columns)
    with pytest.raises(ValueError, match=r"\['extra'\] they do not declare"):
        _rows("utterances", "s1", {"utterance_id": ["a"], "extra": [1]}, columns)
