"""WebDataset adapter: tar shards of training samples. The only module that imports ``webdataset``.

A shard is a plain tar file whose members are named ``<key>.<ext>``; the files of one key form one sample
(here ``<key>.mp4``, the clip, and ``<key>.json``, its JSONL line), which ``webdataset.WebDataset(urls)``
yields as ``{"__key__": key, "mp4": bytes, "json": bytes}``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import StoreError

__all__ = ["ShardSample", "sample_key", "write_shards"]


@dataclass(frozen=True)
class ShardSample:
    """One sample: its key, its clip file and its JSON metadata (already serialised)."""

    key: str
    video: Path
    meta: bytes


def sample_key(sample_id: str) -> str:
    """A WebDataset key for a sample id: no ``.`` (WebDataset splits a member name at its first dot into key
    and extension) and no ``/`` (a folder in the tar)."""
    return re.sub(r"[./\\]", "_", sample_id)


def write_shards(samples: Sequence[ShardSample], folder: Path, prefix: str, n_shards: int) -> list[Path]:
    """Write ``samples`` in order into ``min(n_shards, len(samples))`` tar shards of about equal size,
    ``folder/<prefix>-000000.tar`` ...; returns their paths (none for no samples)."""
    import webdataset

    n = min(n_shards, len(samples))
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        path = folder / f"{prefix}-{k:06d}.tar"
        part = samples[k * len(samples) // n:(k + 1) * len(samples) // n]
        try:
            with open(path, "wb") as fh:
                writer = webdataset.TarWriter(fh, encoder=False)
                for s in part:
                    writer.write({"__key__": s.key, "mp4": s.video.read_bytes(), "json": s.meta})
                writer.close()
        except OSError as exc:
            raise StoreError(f"{path}: cannot write the shard ({exc.strerror or exc}); free space or choose a "
                             f"writable DEST") from exc
        paths.append(path)
    return paths
