"""Lazy registries: names mapped to ``"module:attribute"`` strings, imported only when used."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import import_module
from pathlib import Path
from typing import Any

from .errors import ConfigError, ModelError

__all__ = ["PACKAGE_PREFIX", "packaged_model_dir", "resolve"]

PACKAGE_PREFIX = "package:"  # a model spec naming an installed package that ships the weights


def resolve(registry: dict[str, str], name: str, what: str) -> Any:
    """Import and return the attribute registered as ``name``; an unknown name is a ConfigError listing them."""
    try:
        module, attr = registry[name].split(":")
    except KeyError:
        raise ConfigError(f"unknown {what} {name!r}; known: {', '.join(registry)}") from None
    return getattr(import_module(module), attr)


def packaged_model_dir(model: str, what: str, files: Sequence[str], alternative: str) -> Path:
    """The folder an installed package ships its model in, for a ``package:NAME`` spec (``NAME.get_model_path()``);
    a ModelError saying how to fix it when the package is missing or the folder holds none of ``files``."""
    package = model[len(PACKAGE_PREFIX):]
    try:
        path = Path(import_module(package).get_model_path())
    except (ImportError, AttributeError) as exc:
        raise ModelError(f"{what} {model!r}: package {package!r} is not installed or has no get_model_path() "
                         f"({exc}); install it (`uv add {package.replace('_', '-')}`) or give {alternative}") from exc
    if not any((path / f).exists() for f in files):
        raise ModelError(f"{what} {model!r}: {path} holds no {' or '.join(files)}; reinstall {package}")
    return path
