"""ether-prep: turn recorded counselling sessions into time-aligned speech and face features in Zarr."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("ether-prep")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__"]
