"""ether-prep: turn recorded counselling sessions into time-aligned speech and face features in Zarr."""

from __future__ import annotations

from importlib import metadata

try:
    __version__ = metadata.version("ether-prep")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+local"

__all__ = ["__version__", "open_store"]


def __dir__() -> list[str]:  # the lazy names too (tab completion, help())
    return sorted({*globals(), *__all__})


def __getattr__(name: str) -> object:  # lazy: `import ether_prep` stays light (no zarr/pyarrow/torch)
    if name == "open_store":
        from .dataset import open_store

        return open_store
    raise AttributeError(f"module 'ether_prep' has no attribute {name!r}")
