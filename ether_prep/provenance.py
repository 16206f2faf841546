"""Provenance: library versions and fingerprints recorded with every output."""

from __future__ import annotations

import hashlib
import json
from functools import cache
from importlib import metadata
from typing import Any

__all__ = ["fingerprint", "library_versions"]


@cache
def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def library_versions(*dists: str) -> dict[str, str]:
    """Installed versions of the named distributions (absent ones are left out)."""
    names = ("ether-prep", "numpy", "zarr", *dists)
    return {name: v for name in names if (v := _version(name)) is not None}


def fingerprint(payload: Any) -> str:
    """A stable short hash of a JSON-serialisable payload (sorted keys)."""
    blob = json.dumps(payload, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
