"""README's first command on a fresh clone: the repository's files alone in a new folder (no ./raw, no store,
no .venv), ../shared beside it as on a new machine, and the command exactly as README.md gives it."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from ..conftest import ROOT, SHARED

pytestmark = pytest.mark.slow


def _first_command() -> str:
    """The first line of README's first bash block, without its comment."""
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README.md must start with a bash block of commands"
    return block.group(1).splitlines()[0].split("#")[0].strip()


def _clone(dst: Path) -> Path:
    """The files a clone of this checkout would hold (tracked, and new files not ignored), copied to ``dst``."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           check=True, capture_output=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        if (ROOT / rel).is_file():  # a file deleted but not yet staged is listed too
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dst / rel)
    return dst


def test_a_fresh_clone_runs_the_readme_first_command_to_the_end(tmp_path: Path) -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to know which files a clone holds")
    command = _first_command()
    assert "setup.sh" in command and "ether-prep" in command, command
    repo = _clone(tmp_path / "ether-prep")
    (tmp_path / "shared").symlink_to(SHARED)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "UV_PROJECT", "ETHER_PREP"))}
    done = subprocess.run(["bash", "-c", command], cwd=repo, env=env, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (repo / ".venv").is_dir()  # setup made the clone its own environment

    status = subprocess.run(["uv", "run", "ether-prep", "status", "--out", "ether_prep_demo.zarr", "--json"],
                            cwd=repo, env=env, capture_output=True, text=True, check=True)
    report = json.loads(status.stdout)
    states = {(row["session"], row["stage"]): row["state"] for row in report["rows"]}
    assert len({s for s, _ in states}) == 3
    assert set(states.values()) <= {"done", "skipped"}, states
    # the telephone call: two people talking, each found and transcribed
    from ether_prep import open_store

    utts = open_store(repo / "ether_prep_demo.zarr").to_pandas("utterances")
    call = utts[utts["session_id"].str.startswith("call")]
    assert call["speaker"].nunique() >= 2 and call["n_words"].sum() > 40
    # ... and scored against the call's references (it is ../shared/data/diarization/sample.wav): the figures the
    # cpu pipeline gives in test_speech (WER 0.15 on crosstalk, DER 0.06 with a 0.25 s collar, 0.18 without).
    from ether_prep.records import Turn
    from ether_prep.store import Store

    from ..scoring import der, read_rttm, read_stm, wer

    store = Store(repo / "ether_prep_demo.zarr", mode="r")
    group = store.session(next(s for s in store.session_ids() if s.startswith("call")))
    words = " ".join(str(t) for t in group.read_table("utterances", "words")["text"])
    reference = " ".join(r[3] for r in sorted(read_stm(SHARED / "data" / "diarization" / "sample.stm"),
                                              key=lambda r: r[1]))
    t = group.read_table("diarize", "turns")
    turns = [Turn(float(a), float(b), str(s)) for a, b, s in zip(t["start"], t["end"], t["speaker"], strict=True)]
    rttm = read_rttm(SHARED / "data" / "diarization" / "sample.rttm")
    figures = (wer(reference, words), der(rttm, turns, collar=0.25, skip_overlap=True), der(rttm, turns))
    print(f"\ndemo call: WER {figures[0]:.3f}, DER {figures[1]:.3f} (collar 0.25 s), {figures[2]:.3f} (none)")
    assert figures[0] <= 0.25 and figures[1] <= 0.10 and figures[2] <= 0.25, figures


def _python_blocks() -> list[str]:
    """Every ```python block of README.md, in order."""
    return re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`ether-prep demo` run once; the folder holds its store as ./ether_prep.zarr and its recordings as ./raw,
    the names README's snippets use."""
    import sys

    work = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "ETHER_PREP_MODELS": str(SHARED / "models"), "PYANNOTE_METRICS_ENABLED": "0"}
    done = subprocess.run([sys.executable, "-m", "ether_prep", "demo", "-q"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (work / "ether_prep.zarr").symlink_to(work / "ether_prep_demo.zarr")
    (work / "raw").symlink_to(work / "ether_prep_demo_media" / "raw")
    return work


# Run after README's DataLoader block, in its namespace: what a training loop needs from the demo.
_CHECK_LOADER = """
import json, sys
seen = {"batches": 0, "speaker_face": False, "listener_face": False, "speech": False}
for batch in loader:
    seen["batches"] += 1
    seen["speaker_face"] |= bool(batch["speaker_mask"].any())
    seen["listener_face"] |= bool(batch["listener_mask"].any())
    seen["speech"] |= all(len(t.split()) > 0 for t in batch["text"])
print("SEEN " + json.dumps(seen))
"""


def test_every_python_snippet_of_the_readme_runs_on_the_demo_store(demo_dir: Path) -> None:
    import sys

    blocks = _python_blocks()
    assert len(blocks) >= 2 and "DataLoader" in blocks[0]
    env = {**os.environ, "PYANNOTE_METRICS_ENABLED": "0", "ETHER_PREP_MODELS": str(SHARED / "models")}
    for i, code in enumerate(blocks):
        if "DataLoader(" in code:
            code += _CHECK_LOADER
        run = subprocess.run([sys.executable, "-c", code], cwd=demo_dir, env=env, capture_output=True, text=True,
                             timeout=900)
        assert run.returncode == 0, f"README python block {i + 1}:\n{code}\n{run.stderr[-3000:]}"
        if "SEEN " in run.stdout:
            seen = json.loads(run.stdout.split("SEEN ", 1)[1].splitlines()[0])
            # batches with speech, the speaker's (client's) face and the listener's (counsellor's) face
            assert seen == {"batches": seen["batches"], "speaker_face": True, "listener_face": True,
                            "speech": True} and seen["batches"] >= 1, seen
