"""Lazy registries: names mapped to ``"module:attribute"`` strings, imported only when used."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .errors import ConfigError

__all__ = ["resolve"]


def resolve(registry: dict[str, str], name: str, what: str) -> Any:
    """Import and return the attribute registered as ``name``; an unknown name is a ConfigError listing them."""
    try:
        module, attr = registry[name].split(":")
    except KeyError:
        raise ConfigError(f"unknown {what} {name!r}; known: {', '.join(registry)}") from None
    return getattr(import_module(module), attr)
