"""Config: the shipped pipelines validate and ``validate`` checks inputs without computing; every field of
pipelines.yaml, when wrong, gives a message naming the file, the line, the pipeline, the stage, the key and the
fix; every problem of a file is reported at once."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from ether_prep.cli import app
from ether_prep.config import load_config, load_pipeline
from ether_prep.errors import ConfigError
from ether_prep.spec import Resources
from ether_prep.stages import STAGES, stage_class

from .conftest import ROOT, audio_config, pipeline_file

ORDER = list(STAGES)  # audio, transcribe, diarize, utterances, face, align, timing, text, qc: requirements first


def _yaml(stages: dict[str, dict], name: str = "p", top: str = "version: 1\n") -> str:
    """A pipelines.yaml with one pipeline of ``stages`` (stage -> extra keys), one key per line (block style)."""
    body = yaml.safe_dump({"pipelines": {name: {"stages": [{"stage": s, **extra} for s, extra in stages.items()]}}},
                          sort_keys=False, default_flow_style=False)
    return top + body


def _all_stages(**extra: dict) -> dict[str, dict]:
    return {s: extra.get(s, {}) for s in ORDER}


def _error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "pipelines.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def _line_of(text: str, needle: str) -> int:
    """1-based line of the first line containing ``needle``."""
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


def _wrong_value(hint: typing.Any) -> object:
    """A value of the wrong type for a field of type ``hint`` (its non-None part)."""
    base = next((a for a in typing.get_args(hint) if a is not type(None)), hint)
    return {str: 3, float: "fast", int: 2.5, bool: "yes"}[base]


def _type_name(hint: typing.Any) -> str:
    names = [getattr(a, "__name__", str(a)) for a in (typing.get_args(hint) or (hint,))]
    return " or ".join("null" if n == "NoneType" else n for n in names)


PARAM_FIELDS = [(stage, f.name) for stage in ORDER for f in dataclasses.fields(stage_class(stage).Params)]


@pytest.mark.parametrize(("stage", "key"), PARAM_FIELDS, ids=[f"{s}.{k}" for s, k in PARAM_FIELDS])
def test_every_parameter_of_every_stage_has_a_located_error(tmp_path: Path, stage: str, key: str) -> None:
    params_cls = stage_class(stage).Params
    hint = typing.get_type_hints(params_cls)[key]
    value = _wrong_value(hint)
    text = _yaml(_all_stages(**{stage: {"params": {key: value}}}))
    message = _error(tmp_path, text)
    line = _line_of(text, f"{key}:")
    default = next(f.default for f in dataclasses.fields(params_cls) if f.name == key)
    assert message.startswith(f"{tmp_path / 'pipelines.yaml'}:{line}: pipeline 'p': stage '{stage}': "), message
    assert f"parameter {key!r} = {value!r} is not a valid" in message
    assert message.endswith(f"; expected {_type_name(hint)} (default: {default!r})")  # the fix


# A value of the right type that each stage's own checks reject, and the key its message names.
OUT_OF_RANGE = {"audio": ("sample_rate", 4000), "transcribe": ("channels", "both"),
                "diarize": ("max_speakers", 0), "utterances": ("max_word_s", -1.0), "face": ("num_faces", 0),
                "align": ("rate_hz", -1.0), "voice": ("block_s", 0.0), "timing": ("min_pause_s", 0.0),
                "text": ("batch_size", 0), "qc": ("max_corrupt_share", -1.0)}


@pytest.mark.parametrize("stage", ORDER)
def test_every_stage_checks_its_values(tmp_path: Path, stage: str) -> None:
    key, value = OUT_OF_RANGE[stage]
    text = _yaml(_all_stages(**{stage: {"params": {key: value}}}))
    message = _error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'pipelines.yaml'}:{_line_of(text, f'{key}:')}: pipeline 'p': "
                              f"stage '{stage}': parameters: "), message
    assert key in message


def test_a_parameter_its_backend_cannot_use(tmp_path: Path) -> None:
    text = _yaml(_all_stages(face={"backend": "mediapipe", "params": {"identity": "pyfeat"}}))
    message = _error(tmp_path, text)
    assert message.startswith(f"{tmp_path / 'pipelines.yaml'}:{_line_of(text, 'identity:')}: pipeline 'p': "
                              "stage 'face': parameters: identity 'pyfeat' needs the pyfeat backend"), message
    assert "use identity: dlib" in message


def test_unknown_parameter_says_the_closest_name(tmp_path: Path) -> None:
    text = _yaml(_all_stages(audio={"params": {"sample_rat": 16000}}))
    message = _error(tmp_path, text)
    assert f":{_line_of(text, 'sample_rat:')}: pipeline 'p': stage 'audio': unknown parameter 'sample_rat'; " \
           "did you mean 'sample_rate'? allowed: block_s, channel, sample_rate" in message


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("num_cpus", "two", "resource 'num_cpus' = 'two' is not a valid float; expected float (default: 1.0)"),
    ("num_gpus", [1], "resource 'num_gpus' = [1] is not a valid float; expected float (default: 0.0)"),
    ("num_cpus", -1, "resources must be non-negative, got num_cpus -1.0, num_gpus 0.0"),
    ("gpus", 1, "unknown resource 'gpus'; did you mean 'num_gpus'? allowed: num_cpus, num_gpus, window_s"),
    ("window_s", "long", "resource 'window_s' = 'long' is not a valid float or null; expected float or null "
                         "(default: None)"),
    ("window_s", 0.5, "resources.window_s must be >= 1 (seconds) or null (whole recordings), got 0.5"),
    ("batch_size", 8, "resource 'batch_size' moved to the stage's params (resources only schedule work and never "
                      "change results); move it there: params: {batch_size: 8}"),
])
def test_resources(tmp_path: Path, key: str, value: object, expected: str) -> None:
    assert {f.name for f in dataclasses.fields(Resources)} == {"num_cpus", "num_gpus", "window_s"}
    text = _yaml(_all_stages(face={"resources": {key: value}}))
    message = _error(tmp_path, text)
    line = _line_of(text, "resources:") if "non-negative" in expected else _line_of(text, f"{key}:")
    assert message == f"{tmp_path / 'pipelines.yaml'}:{line}: pipeline 'p': stage 'face': {expected}"


def test_window_s_only_for_stages_that_compute_windows(tmp_path: Path) -> None:
    text = _yaml(_all_stages(diarize={"resources": {"window_s": 600}}))
    assert _error(tmp_path, text) == (
        f"{tmp_path / 'pipelines.yaml'}:{_line_of(text, 'window_s:')}: pipeline 'p': stage 'diarize': stage "
        "'diarize' cannot compute a recording in time windows; remove resources.window_s")


def test_a_batch_size_under_resources_says_where_it_went(tmp_path: Path) -> None:
    """Stages that batch (transcribe, face) take it as a parameter; others have none to take."""
    text = _yaml(_all_stages(transcribe={"resources": {"num_cpus": 2, "batch_size": 16}},
                             audio={"resources": {"batch_size": 4}}))
    message = _error(tmp_path, text)
    assert "stage 'transcribe': resource 'batch_size' moved to the stage's params" in message
    assert "move it there: params: {batch_size: 16}" in message
    assert "stage 'audio': resource 'batch_size' moved to the stage's params" in message
    assert "stage 'audio' has no batch_size parameter; remove it" in message
    assert "unknown resource" not in message  # said once, as a move


@pytest.mark.parametrize(("extra", "expected", "needle"), [
    ({"backend": "whisper"}, "unknown backend 'whisper'; stage 'transcribe' supports: whisperx", "backend:"),
    ({"model": 3}, "'model' must be a string (a model name or a path), got 3", "model:"),
    ({"enabled": "no"}, "'enabled' must be true or false, got 'no'", "enabled:"),
    ({"params": [1, 2]}, "parameters must be a mapping of name: value, got [1, 2]", "params:"),
    ({"resources": 2}, "resources must be a mapping of name: value, got 2", "resources:"),
    ({"parms": {}}, "unknown key 'parms'; did you mean 'params'? allowed: backend, enabled, model, params, "
                    "resources, stage", "parms:"),
])
def test_stage_keys(tmp_path: Path, extra: dict, expected: str, needle: str) -> None:
    text = _yaml(_all_stages(transcribe=extra))
    message = _error(tmp_path, text)
    assert message == f"{tmp_path / 'pipelines.yaml'}:{_line_of(text, needle)}: pipeline 'p': stage 'transcribe': " \
                      f"{expected}"


def test_stage_names_entries_and_order(tmp_path: Path) -> None:
    text = _yaml({"audio": {}, "transcrib": {}})
    assert _error(tmp_path, text) == (
        f"{tmp_path / 'pipelines.yaml'}:{_line_of(text, 'transcrib')}: pipeline 'p': unknown stage 'transcrib' "
        f"(stage #2); did you mean 'transcribe'? known stages: {', '.join(STAGES)}")
    text = "version: 1\npipelines:\n  p:\n    stages:\n      - audio\n"
    assert _error(tmp_path, text).endswith(":5: pipeline 'p': stage #1 must be a mapping with a 'stage' key, "
                                           "e.g. '- stage: audio'")
    text = _yaml({"audio": {}, "utterances": {}})
    message = _error(tmp_path, text)
    for dep in ("transcribe", "diarize"):
        assert (f":{_line_of(text, 'utterances')}: pipeline 'p': stage 'utterances': stage 'utterances' requires "
                f"stage {dep!r} before it; add it earlier in the list") in message
    text = "version: 1\npipelines:\n  p:\n    stages:\n      - stage: audio\n      - stage: audio\n"
    assert "pipeline 'p': stage 'audio' appears twice; keep one entry per stage" in _error(tmp_path, text)


def test_pipeline_keys(tmp_path: Path) -> None:
    text = "version: 1\npipelines:\n  p:\n    descripton: x\n    stages:\n      - stage: audio\n"
    assert _error(tmp_path, text).endswith(":4: pipeline 'p': unknown key 'descripton'; did you mean "
                                           "'description'? allowed: description, extends, stages")
    text = "version: 1\npipelines:\n  p:\n    description: [a]\n    stages:\n      - stage: audio\n"
    assert _error(tmp_path, text).endswith(":4: pipeline 'p': 'description' must be text, got ['a']")
    text = "version: 1\npipelines:\n  p:\n    stages: audio\n"
    assert _error(tmp_path, text).endswith(":3: pipeline 'p': expected a mapping with a 'stages' list "
                                           "(stages: [- stage: NAME])")


def test_a_local_file_extends_a_shipped_pipeline(tmp_path: Path) -> None:
    """``extends`` takes a pipeline's stages (the same file's first, else the shipped file's, so ``cpu`` may extend
    the shipped ``cpu``) and overrides them by stage name: params merge key by key, enabled replaces, a new stage is
    added; doctor says which pipeline it extends; the runner would record the local file."""
    text = ("version: 1\npipelines:\n  cpu:\n    extends: cpu\n    stages:\n      - stage: face\n"
            "        params: {analysis_fps: 5.0}\n      - stage: qc\n        enabled: false\n"
            "  slower:\n    extends: cpu\n    description: mine\n    stages:\n      - stage: align\n"
            "        params: {rate_hz: 5.0}\n        resources: {num_cpus: 2}\n")
    path = tmp_path / "pipelines.yaml"
    path.write_text(text)
    shipped = load_pipeline("cpu")
    mine = load_config(path)
    cpu, slower = mine["cpu"], mine["slower"]
    assert cpu.extends == "cpu (shipped)" and slower.extends == "cpu" and cpu.source == path
    assert cpu.description == shipped.description and slower.description == "mine"
    assert [s.name for s in cpu.stages] == [s.name for s in shipped.stages]
    face, shipped_face = cpu.stage("face"), shipped.stage("face")
    assert face.params.analysis_fps == 5.0 and shipped_face.params.analysis_fps != 5.0
    assert dataclasses.replace(face.params, analysis_fps=shipped_face.params.analysis_fps) == shipped_face.params
    assert face.model == shipped_face.model and face.resources == shipped_face.resources
    assert not cpu.stage("qc").enabled and cpu.stage("transcribe") == shipped.stage("transcribe")
    # A chain within the file: slower extends the local cpu.
    align = slower.stage("align")
    assert align.params.rate_hz == 5.0 and align.resources.num_cpus == 2 and slower.stage("face") == face
    assert align.params.pad_s == shipped.stage("align").params.pad_s
    result = CliRunner().invoke(app, ["doctor", "--config", str(path), "--pipeline", "slower", "--out",
                                      str(tmp_path / "none.zarr")])
    assert f"'slower' of {path}, extending cpu" in result.output, result.output


def test_extends_errors_name_the_file_the_line_and_the_key(tmp_path: Path) -> None:
    text = ("version: 1\npipelines:\n  a:\n    extends: cpx\n  b:\n    extends: cpu\n    stages:\n"
            "      - stage: face\n        params: {analysis_fpz: 5.0}\n  c:\n    extends: d\n  d:\n    extends: c\n"
            "  e:\n    extends: [cpu]\n")
    message = _error(tmp_path, text)
    path = tmp_path / "pipelines.yaml"
    assert message.startswith(f"{path}: 5 problems:")
    assert f"{path}:4: pipeline 'a': 'extends: cpx': no pipeline of that name in this file or in the shipped " \
           f"pipelines.yaml; known: b, c, cpu, d, default, e" in message
    assert f"{path}:9: pipeline 'b': stage 'face': unknown parameter 'analysis_fpz'; did you mean 'analysis_fps'?" \
        in message
    assert f"{path}:11: pipeline 'c': 'extends: d' loops back to itself" in message
    assert f"{path}:13: pipeline 'd': 'extends: c' loops back to itself" in message
    assert f"{path}:15: pipeline 'e': 'extends' must name a pipeline, got ['cpu']" in message


def test_top_level(tmp_path: Path) -> None:
    text = "version: 2\npipelines:\n  p:\n    stages:\n      - stage: audio\n"
    assert _error(tmp_path, text).endswith(":1: unsupported config version 2; this ether-prep reads version 1 "
                                           "(write 'version: 1')")
    text = "version: 1\npipeline: {}\npipelines:\n  p:\n    stages:\n      - stage: audio\n"
    assert _error(tmp_path, text).endswith(":2: unknown top-level key 'pipeline'; did you mean 'pipelines'? "
                                           "allowed: pipelines, version")
    assert "expected a mapping with a 'pipelines' mapping at the top" in _error(tmp_path, "version: 1\n")
    text = "version: 1\npipelines:\n  p:\n    stages:\n      - stage: audio\n    stages: []\n"
    assert _error(tmp_path, text).endswith(":6: key 'stages' appears twice in one mapping (the second would "
                                           "silently win); keep one")
    text = "version: 1\npipelines:\n  p:\n    stages:\n     - stage: audio\n    - stage: face\n"
    assert re.search(r"pipelines.yaml:\d+: not valid YAML \(.*\); check the indentation and quoting there",
                     _error(tmp_path, text))


def test_every_problem_of_a_file_at_once_in_line_order(tmp_path: Path) -> None:
    text = """version: 2
pipelnes: {}
pipelines:
  p:
    descripton: x
    stages:
      - stage: audio
        params: {sample_rate: 4000, blok_seconds: 3}
        resources: {batch_size: many}
      - stage: transcribe
        backend: whisper
        params:
          beam_size: 1.5
        enabled: "yes"
      - stage: fase
  q: [1, 2]
"""
    message = _error(tmp_path, text)
    path = tmp_path / "pipelines.yaml"
    lines = message.splitlines()
    assert lines[0] == f"{path}: 11 problems:"
    located = [int(re.match(rf"  {re.escape(str(path))}:(\d+): ", ln).group(1)) for ln in lines[1:]]
    assert located == [1, 2, 5, 8, 8, 9, 11, 13, 14, 15, 16]
    assert "stage 'audio': parameters: sample_rate must be within 8000..48000 Hz, got 4000" in message
    assert "pipeline 'q': expected a mapping with a 'stages' list" in message


def test_hubs_are_switched_off_only_when_every_model_is_local() -> None:
    from ether_prep.config import load_pipeline
    from ether_prep.runner import models_are_local

    def planners(name: str) -> list:
        return [stage_class(s.name)(s) for s in load_pipeline(name).stages]

    assert models_are_local(planners("cpu"))  # packages and a local .task file
    assert not models_are_local(planners("default"))  # large-v3, pyannote and py-feat come from hubs


def test_validate_rejects_a_misspelt_key(tmp_path: Path) -> None:
    bad = pipeline_file(tmp_path, "mine", [{"stage": "audio", "parmas": {}}])
    result = CliRunner().invoke(app, ["validate", "--config", str(bad)])
    assert result.exit_code == 2
    assert "'parmas'" in result.output and "mine" in result.output and str(bad) in result.output
    with pytest.raises(ConfigError, match="unknown parameter"):
        load_pipeline("audio", audio_config(tmp_path, block=1, blok_seconds=1))
    with pytest.raises(ConfigError, match="unknown stage 'audoi'"):
        load_config(pipeline_file(tmp_path, "audio", [{"stage": "audoi"}]))
    with pytest.raises(ConfigError, match="block_s"):
        load_config(audio_config(tmp_path, block="fast"))


def test_shipped_pipelines_validate() -> None:
    pipelines = load_config(ROOT / "pipelines.yaml")
    assert {"default", "cpu"} <= set(pipelines)
    result = CliRunner().invoke(app, ["validate", "--config", str(ROOT / "pipelines.yaml")])
    assert result.exit_code == 0, result.output


def test_validate_checks_inputs_without_computing(raw_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(raw_dir), "--config", str(audio_config(tmp_path))])
    assert result.exit_code == 1
    assert "6 recording(s), 2 unreadable" in result.output


# ------------------------------------------------------------------ never read damage as data
def _bomb(levels: int = 9) -> list[str]:
    """The lines of a "billion laughs" chain: 9 ** ``levels`` strings once every alias is expanded."""
    rows = [f"&l0 [{', '.join(['lol'] * 9)}]"]
    rows += [f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return rows


@pytest.mark.parametrize("where", ["description", "parameter"])
def test_an_alias_bomb_is_refused_at_once(tmp_path: Path, where: str) -> None:
    """Nested aliases expand a few lines into gigabytes; the file is refused at its first anchor, naming the
    line, with little memory (no timing: the bound is on memory)."""
    import tracemalloc

    bomb = _bomb()
    if where == "description":
        text = ("version: 1\npipelines:\n  p:\n    description:\n" + "".join(f"      - {r}\n" for r in bomb)
                + "    stages:\n      - stage: audio\n")
    else:
        text = ("version: 1\npipelines:\n  p:\n    stages:\n      - stage: audio\n        params:\n"
                "          channel:\n" + "".join(f"            - {r}\n" for r in bomb))
    tracemalloc.start()
    try:
        message = _error(tmp_path, text)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 100 * 2 ** 20, peak
    assert message.startswith(f"{tmp_path / 'pipelines.yaml'}:{_line_of(text, '&l0')}: YAML anchor '&l0' is not "
                              "allowed"), message
    assert "write the value out in full" in message and len(message) < 400


def test_an_alias_without_its_anchor_is_refused_too(tmp_path: Path) -> None:
    text = "version: 1\npipelines:\n  p:\n    description: *nowhere\n    stages:\n      - stage: audio\n"
    assert _error(tmp_path, text).startswith(f"{tmp_path / 'pipelines.yaml'}:4: YAML alias '*nowhere' is not allowed")


def _float_fields() -> list[tuple[str, str]]:
    out = []
    for stage in ORDER:
        hints = typing.get_type_hints(stage_class(stage).Params)
        out += [(stage, k) for k, h in hints.items() if h is float or float in typing.get_args(h)]
    return out


FLOAT_FIELDS = _float_fields()


def test_several_stages_have_float_parameters() -> None:
    assert len({s for s, _ in FLOAT_FIELDS}) >= 5, FLOAT_FIELDS  # the parametrized test below covers them


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
@pytest.mark.parametrize(("stage", "key"), FLOAT_FIELDS, ids=[f"{s}.{k}" for s, k in FLOAT_FIELDS])
def test_nan_and_infinity_fail_for_every_float_parameter(tmp_path: Path, stage: str, key: str, value: str) -> None:
    """`x <= 0` in a stage's checks is false for NaN: the check before every stage's own refuses them."""
    text = _yaml(_all_stages(**{stage: {"params": {key: 12345.5}}})).replace("12345.5", value)
    message = _error(tmp_path, text)
    shown = {".nan": "nan", ".inf": "inf", "-.inf": "-inf"}[value]
    assert message.startswith(f"{tmp_path / 'pipelines.yaml'}:{_line_of(text, f'{key}:')}: pipeline 'p': stage "
                              f"'{stage}': parameter {key!r} = {shown} is not a finite number"), message
    assert "; expected float" in message and "\n" not in message  # one problem, with the fix


def test_nan_in_resources_and_through_the_cli(tmp_path: Path) -> None:
    text = _yaml(_all_stages(transcribe={"resources": {"window_s": 12345.5}})).replace("12345.5", ".nan")
    assert "stage 'transcribe': resource 'window_s' = nan is not a finite number" in _error(tmp_path, text)
    path = tmp_path / "pipelines.yaml"
    path.write_text(_yaml(_all_stages(align={"params": {"rate_hz": 12345.5}})).replace("12345.5", ".nan"))
    result = CliRunner().invoke(app, ["validate", "--config", str(path)])
    assert result.exit_code == 2 and "parameter 'rate_hz' = nan is not a finite number" in result.output


def test_every_bad_parameter_of_a_stage_at_once(tmp_path: Path) -> None:
    """A stage's own checks stop at their first problem; each is reported, at its own line, in one pass - and
    next to a value of the wrong type."""
    text = _yaml(_all_stages(face={"params": {"num_faces": 0, "detector": "v3", "still_tiles": 9,
                                              "cut_threshold": -1.0, "prefetch": "many"}},
                             audio={"params": {"sample_rate": 4000, "block_s": -2.0}}))
    message = _error(tmp_path, text)
    path = tmp_path / "pipelines.yaml"
    lines = message.splitlines()
    assert lines[0] == f"{path}: 7 problems:", message
    for key, says in [("num_faces", "num_faces must be >= 1"), ("detector", "detector must be 'v1' or 'v2'"),
                      ("still_tiles", "still_tiles must be within 1..4"),
                      ("cut_threshold", "cut_threshold must be positive or null"),
                      ("prefetch", "parameter 'prefetch' = 'many' is not a valid int"),
                      ("sample_rate", "sample_rate must be within 8000..48000 Hz"),
                      ("block_s", "block_s must be positive")]:
        stage = "audio" if key in ("sample_rate", "block_s") else "face"
        assert any(ln.startswith(f"  {path}:{_line_of(text, f'{key}:')}: pipeline 'p': stage '{stage}': ")
                   and says in ln for ln in lines[1:]), (key, message)


def test_messages_never_carry_a_huge_value(tmp_path: Path) -> None:
    def huge() -> list[str]:  # a new list each time: a repeated one would be written as an alias
        return ["x" * 1000 for _ in range(300)]

    text = _yaml(_all_stages(transcribe={"params": {"device": huge()}, "model": huge()}, audio={"bogus": huge()}))
    text = text.replace("pipelines:\n  p:\n", f"pipelines:\n  p:\n    description: {huge()!r}\n", 1)
    message = _error(tmp_path, text)
    assert len(text) > 1_000_000 and len(message) < 3000, len(message)
    assert "'description' must be text, got ['xxx" in message and "...]" in message
    assert "'model' must be a string" in message and "parameter 'device' = ['xxx" in message


def test_renamed_parameters_still_work_and_say_the_new_name(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """Old parameter names (before seconds ended in ``_s`` and ``model_dir`` became ``cache_dir``) give the same
    pipeline as the new ones, each with a warning at its line naming the new name."""
    from ether_prep.config import _RENAMED_PARAMS

    old = {stage: {"params": {o: v for o, v in values.items()}} for stage, values in {
        "audio": {"block_seconds": 5.0}, "transcribe": {"chunk_size": 20, "model_dir": "/tmp/m",
                                                        "coverage_slack": 0.1},
        "diarize": {"window": 2.0, "hop": 0.5, "min_speech": 0.25, "min_silence": 0.4},
        "utterances": {"max_gap": 0.8, "max_duration": 12.0, "max_word": 0.9}}.items()}
    assert {s: set(e["params"]) for s, e in old.items()} == {s: set(r) for s, r in _RENAMED_PARAMS.items()}
    new = {s: {"params": {_RENAMED_PARAMS[s][k]: v for k, v in e["params"].items()}} for s, e in old.items()}
    text = _yaml(_all_stages(**old))
    (tmp_path / "old.yaml").write_text(text)
    (tmp_path / "new.yaml").write_text(_yaml(_all_stages(**new)))
    with caplog.at_level("WARNING", logger="ether_prep.config"):
        got = load_pipeline("p", tmp_path / "old.yaml")
    assert got.stages == load_pipeline("p", tmp_path / "new.yaml").stages
    assert got.stage("utterances").params.max_gap_s == 0.8 and got.stage("transcribe").params.cache_dir == "/tmp/m"
    warned = [r.getMessage() for r in caplog.records]
    for stage, renames in _RENAMED_PARAMS.items():
        for o, n in renames.items():
            assert any(f":{_line_of(text, f'{o}:')}: pipeline 'p': stage '{stage}': parameter '{o}' was renamed "
                       f"'{n}': write {n}:" in m for m in warned), (o, warned)


def test_old_and_new_name_together_is_an_error(tmp_path: Path) -> None:
    text = _yaml(_all_stages(utterances={"params": {"max_gap": 1.0, "max_gap_s": 2.0}}))
    message = _error(tmp_path, text)
    assert f":{_line_of(text, 'max_gap:')}: pipeline 'p': stage 'utterances': parameter 'max_gap' was renamed " \
           "'max_gap_s' and both are given; keep 'max_gap_s' only" in message


def test_every_device_parameter_is_checked_by_one_rule(tmp_path: Path) -> None:
    """transcribe, diarize and face all refuse an unknown device, with the same message naming what is allowed."""
    text = _yaml(_all_stages(transcribe={"params": {"device": "gpu"}}, diarize={"params": {"device": "gpu"}},
                             face={"params": {"device": "gpu"}}))
    message = _error(tmp_path, text)
    for stage in ("transcribe", "diarize", "face"):
        assert re.search(rf"stage '{stage}': parameters: device must be '.*' or '.*', got 'gpu'", message), message
    ok = _yaml(_all_stages(diarize={"params": {"device": "cuda:1"}}, face={"params": {"device": "cuda:1"}}))
    (tmp_path / "ok.yaml").write_text(ok)
    assert load_pipeline("p", tmp_path / "ok.yaml").stage("face").params.device == "cuda:1"
