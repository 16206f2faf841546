"""The command line as scripts and people use it: version, results on stdout and logs on stderr, status as
JSON, the recorded pipeline, staleness that propagates, NO_COLOR."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ether_prep import __version__
from ether_prep.cli import app

from .conftest import DATA, ROOT


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"ether-prep {__version__}"


def test_help_shows_defaults_literally() -> None:
    out = CliRunner().invoke(app, ["run", "--help"], terminal_width=200).output
    assert "[default: ./pipelines.yaml if present" in out and "[default: what resources allow]" in out


def test_run_commands_share_one_option_set() -> None:
    """extract, align and run take the same options (names, defaults, help), declared once."""
    from typer.main import get_command

    commands = get_command(app).commands  # type: ignore[attr-defined]

    def options(name: str) -> list[tuple]:
        return [(tuple(p.opts), p.default, p.help) for p in commands[name].params if p.param_type_name == "option"]

    assert options("extract") == options("align") == options("run")
    assert [o[0] for o in options("run")][:3] == [("--out", "-o"), ("--pipeline", "-p"), ("--config", "-c")]
    assert len(options("run")) == 11


def _shape(stdout: str) -> list[str]:
    """The summary's lines without their timings: a line per stage (then throughput figures), then the total."""
    lines = stdout.splitlines()
    return [ln[:19] for ln in lines[:-1]] + [ln[:16] for ln in lines[-1:]]


@pytest.mark.slow
def test_stdout_carries_results_and_library_logs_go_to_stderr(tmp_path: Path) -> None:
    """whisperx logs to stdout by itself and lightning (loading whisperx's VAD) through a console handler of its
    own; through ether-prep their lines reach stderr in our format (INFO chatter at DEBUG only), and stdout
    holds the summary alone."""
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "jfk.flac").symlink_to(DATA / "speech" / "jfk.flac")
    cmd = [sys.executable, "-m", "ether_prep.cli", "--log-level", "DEBUG", "extract", str(raw),
           "--out", str(tmp_path / "s.zarr"), "-p", "cpu", "--executor", "inline", "--only", "audio",
           "--only", "transcribe", "--quiet"]
    env = {**os.environ, "PYANNOTE_METRICS_ENABLED": "0"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = ["audio        1 done", "transcribe   1 done", "1 session(s) in "]
    assert _shape(proc.stdout) == summary
    assert "whisperx" in proc.stderr and "voice activity detection" in proc.stderr.lower()
    upgraded = "Lightning automatically upgraded your loaded checkpoint"
    assert f"INFO lightning.pytorch.utilities.migration.utils: {upgraded}" in proc.stderr  # our handler
    assert proc.stderr.count(upgraded) == 1 and f"INFO: {upgraded}" not in proc.stderr  # not lightning's
    quiet = subprocess.run([*cmd[:3], *cmd[5:], "--force"], capture_output=True, text=True, env=env, cwd=ROOT,
                           timeout=600)
    assert quiet.returncode == 0 and _shape(quiet.stdout) == summary
    assert "voice activity detection" not in quiet.stderr.lower()  # library INFO lines need DEBUG
    assert upgraded not in quiet.stderr


@pytest.mark.slow
def test_status_json_uses_the_recorded_pipeline(aligned: dict[str, object]) -> None:
    result = CliRunner().invoke(app, ["status", "--out", str(aligned["store"]), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.output)
    assert doc["pipeline"] == "cpu" and doc["sessions"] == 4
    assert "stale" not in doc["counts"] and doc["counts"]["done"] >= 4 * 6
    assert {r["state"] for r in doc["rows"]} <= {"done", "skipped"}
    assert set(doc["needs_review"]) <= {r["session"] for r in doc["rows"]}


@pytest.mark.slow
def test_staleness_propagates_downstream(aligned: dict[str, object], tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "pipelines.yaml").read_text())
    for entry in raw["pipelines"]["cpu"]["stages"]:
        if entry["stage"] == "diarize":
            entry["params"]["window_s"] = 2.0
    config = tmp_path / "pipelines.yaml"
    config.write_text(yaml.safe_dump(raw))
    result = CliRunner().invoke(app, ["status", "--out", str(aligned["store"]), "-p", "cpu", "-c", str(config),
                                      "--json"])
    doc = json.loads(result.output)
    call = {r["stage"]: r["state"] for r in doc["rows"] if r["session"].startswith("sample")}
    assert call["audio"] == "done" and call["transcribe"] == "done" and call["face"] == "skipped"
    assert call["diarize"] == call["utterances"] == call["align"] == call["qc"] == "stale"


@pytest.mark.slow
def test_no_color_means_no_escape_codes(aligned: dict[str, object]) -> None:
    args = ["status", "--out", str(aligned["store"])]
    coloured = CliRunner().invoke(app, args, color=True).output
    assert "\x1b[" in coloured  # a terminal gets colours ...
    plain = CliRunner(env={"NO_COLOR": "1"}).invoke(app, args, color=True).output
    assert "\x1b[" not in plain  # ... unless NO_COLOR is set


def _run_on_terminal(cmd: list[str], env: dict[str, str]) -> tuple[int, str, str]:
    """Run ``cmd`` with stderr on a 120-column pseudo-terminal (as in an interactive shell); stdout piped."""
    import fcntl
    import pty
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=ROOT, text=True)
    os.close(slave)
    chunks = []
    while True:
        try:
            chunk = os.read(master, 1 << 16)
        except OSError:  # the terminal closes when the process exits
            break
        if not chunk:
            break
        chunks.append(chunk)
    out = proc.stdout.read() if proc.stdout else ""
    os.close(master)
    return proc.wait(timeout=600), out, b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_progress_bars_only_on_a_terminal_and_never_past_100(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("bbaf2n.mpg", "lwbsza.mpg"):
        (raw / name).symlink_to(DATA / "video" / name)
    cmd = [sys.executable, "-m", "ether_prep.cli", "extract", str(raw), "--out", str(tmp_path / "s.zarr"), "-p",
           "cpu", "--executor", "inline", "--only", "audio", "--only", "face"]  # face reports within a session
    env = {**os.environ, "PYANNOTE_METRICS_ENABLED": "0"}
    rc, out, terminal = _run_on_terminal(cmd, env)
    assert rc == 0, terminal[-2000:]
    percents = [int(p) for p in re.findall(r"(\d+)%\|", terminal)]
    assert percents and max(percents) == 100, terminal[-2000:]  # a bar, and it ends full, never beyond
    assert "TqdmWarning" not in terminal, terminal
    assert out.splitlines()[0].startswith("audio        2 done")
    piped = subprocess.run([*cmd, "--force"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert piped.returncode == 0 and "%|" not in piped.stderr and "\r" not in piped.stderr  # no bars in a log file


def test_help_imports_no_ml_library_store_or_ray() -> None:
    # What makes --help quick is what it does not import: no torch, no model library, no Ray, no zarr or NumPy
    # (measured, not timed: timings vary with the machine's load).
    heavy = ["torch", "ray", "whisperx", "feat", "mediapipe", "ctranslate2", "zarr", "numpy", "av", "pyarrow"]
    code = ("import sys\n"
            "from ether_prep.cli import app\n"
            "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
            f"import json; print(json.dumps([m for m in {heavy!r} if m in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "COLUMNS": "100"})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
    assert "extract" in out.stdout and "align" in out.stdout


def _complete(words: str) -> list[str]:
    """What bash's completion function gets from ``ether-prep`` for the line ``words`` (Click's protocol: the
    installed script calls the program with these variables), the cursor in the last word."""
    exe = Path(sys.executable).with_name("ether-prep")
    parts = words.split(" ")
    env = {**os.environ, "_ETHER_PREP_COMPLETE": "complete_bash", "COMP_WORDS": words,
           "COMP_CWORD": str(len(parts) - 1)}
    out = subprocess.run([str(exe)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_shell_completion_scripts_and_what_they_complete() -> None:
    """--show-completion prints the script --install-completion installs (bash, zsh, fish); with it the shell
    completes commands, options, stage names, export formats and pipeline names."""
    exe = Path(sys.executable).with_name("ether-prep")
    for shell, marker in (("bash", "complete -o default -F _ether_prep_completion ether-prep"),
                          ("zsh", "compdef _ether_prep_completion ether-prep"),
                          ("fish", "complete --command ether-prep")):
        # The shell is detected from the parent process (shellingham); typer's own switch names it instead.
        env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
        script = subprocess.run([str(exe), "--show-completion", shell], capture_output=True, text=True, env=env,
                                timeout=120)
        assert script.returncode == 0 and marker in script.stdout and "_ETHER_PREP_COMPLETE" in script.stdout, \
            (shell, script.stdout, script.stderr)
    assert _complete("ether-prep ex") == ["extract", "export"]
    assert "--format" in _complete("ether-prep export dest --for")
    assert _complete("ether-prep export dest --format r") == ["rttm"]
    assert _complete("ether-prep run raw --only fa") == ["face"]
    assert {"default", "cpu"} <= set(_complete("ether-prep run raw -p "))
