"""Per-detection spooling to temporary files, then dense (frame, track, ...) arrays block by block.

The number of tracks is known only at the end of a video, and a 60-minute session holds hundreds of MB of
landmarks, so the face stage appends each detection's values to flat temporary files as it goes and, at
the end, writes each dense output array one chunk of frames at a time (:meth:`DetectionSpool.dense_blocks`
gives the blocks; the stage writes them). Memory stays flat however long the video is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..scratch import ScratchDir, open_private

__all__ = ["DetectionSpool"]


class DetectionSpool:
    """Append-only columns of per-detection values (``fields``: name -> (row shape, dtype))."""

    def __init__(self, fields: dict[str, tuple[tuple[int, ...], Any]], directory: Path | None = None) -> None:
        """Spool into files of its own in ``directory`` (a private folder of the caller's, e.g. a
        :class:`~ether_prep.scratch.ScratchDir`; the files are removed on close), or in a private temporary
        folder of its own (removed on close)."""
        self._scratch = ScratchDir("spool") if directory is None else None
        self.dir = self._scratch.path if self._scratch is not None else Path(directory)  # type: ignore[arg-type]
        self.fields = {name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype) in fields.items()}
        self._files: dict[str, Any] = {}
        try:
            for name in self.fields:  # exclusive, 0600, never through a planted link
                self._files[name] = open_private(self.dir / f"{name}.bin")
        except BaseException:
            self.close()
            raise
        self.rows = 0

    def append(self, **values: np.ndarray) -> None:
        """Append ``n`` rows to every field (all fields at once, same ``n``)."""
        n = None
        for name, (shape, dtype) in self.fields.items():
            arr = np.ascontiguousarray(values[name], dtype=dtype).reshape(-1, *shape)
            n = arr.shape[0] if n is None else n
            if arr.shape[0] != n:
                raise ValueError(f"spool field {name!r}: {arr.shape[0]} rows, expected {n}")
            arr.tofile(self._files[name])
        self.rows += n or 0

    def _flush(self) -> None:
        for fh in self._files.values():
            fh.flush()

    def read(self, name: str, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Rows ``start:stop`` of one field, read from disk."""
        self._flush()
        shape, dtype = self.fields[name]
        stop = self.rows if stop is None else stop
        row = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        count = max(stop - start, 0) * int(np.prod(shape, dtype=np.int64))
        data = np.fromfile(self.dir / f"{name}.bin", dtype=dtype, count=count, offset=start * row)
        return data.reshape(-1, *shape)

    def dense_blocks(self, field: str, frame: np.ndarray, column: np.ndarray, n_frames: int, n_columns: int,
                     rows: int) -> Iterator[tuple[int, int, np.ndarray]]:
        """Detections (at ``frame[i]``, ``column[i]``; ``column < 0`` dropped) scattered into a NaN-filled
        ``(n_frames, n_columns, *row shape)`` array, as ``(a, b, block)``: frames ``a:b``, ``rows`` frames at
        a time (the array's chunk length); blocks without a detection are left out (all NaN, "no face").

        ``frame`` must be sorted (detections are spooled in frame order).
        """
        shape, dtype = self.fields[field]
        for a in range(0, n_frames, rows):
            b = min(a + rows, n_frames)
            lo, hi = np.searchsorted(frame, [a, b])
            if n_columns == 0 or lo == hi:
                continue  # the NaN fill value stands for "no face"
            block = np.full((b - a, n_columns, *shape), np.nan, dtype=dtype)
            values = self.read(field, int(lo), int(hi))
            col = column[lo:hi]
            ok = col >= 0
            block[frame[lo:hi][ok] - a, col[ok]] = values[ok]
            yield a, b, block

    def close(self) -> None:
        for name, fh in self._files.items():
            fh.close()
            (self.dir / f"{name}.bin").unlink(missing_ok=True)
        self._files = {}
        if self._scratch is not None:
            self._scratch.close()

    def __enter__(self) -> DetectionSpool:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
