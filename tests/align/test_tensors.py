"""Per-utterance tensors (:mod:`ether_prep.align.tensors`): the time grid, resampling, pooling, ragged storage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from ether_prep.align.tensors import offsets_from_lengths, pool, resample_track, utterance_grid
from ether_prep.store import read_ragged, write_ragged

FPS = 25.0


def test_utterance_grid_covers_the_span_at_the_rate() -> None:
    for start, end, pad, rate in [(0.46, 2.51, 0.5, 10.0), (3.68, 5.51, 0.25, 25.0), (0.1, 0.2, 0.5, 5.0)]:
        g = utterance_grid(start, end, pad, rate)
        assert g[0] == pytest.approx(max(0.0, start - pad))
        assert np.allclose(np.diff(g), 1 / rate)
        assert g[-1] <= end + pad + 1e-9 and g[-1] > end + pad - 1 / rate
        assert g[0] <= start and g[-1] >= end


def test_resample_track_interpolates_and_masks_missing_frames() -> None:
    times = np.arange(150) / FPS
    feats = np.stack([times, 2 * times], axis=1)
    present = np.ones(150, bool)
    present[50:75] = False  # no face from 2.0 s to 2.96 s
    grid = utterance_grid(1.0, 4.0, 0.5, 10.0)
    values, mask = resample_track(times, feats, present, grid)
    gap = (grid > 2.0 - 0.02) & (grid < 2.96 + 0.02)
    assert not mask[gap].any() and np.all(values[gap] == 0)
    ok = (grid < 1.95) | (grid > 3.0)
    assert mask[ok].all()
    # linear ramps are reproduced exactly between frames
    assert np.allclose(values[mask, 0], grid[mask], atol=1e-6)
    assert np.allclose(values[mask, 1], 2 * grid[mask], atol=1e-5)
    # past the last frame the face is missing, not extrapolated
    _, tail_mask = resample_track(times, feats, np.ones(150, bool), np.array([5.9, 6.5, 7.0]))
    assert tail_mask.tolist() == [True, False, False]


def test_pool_uses_only_core_steps_with_a_face() -> None:
    values = np.array([[1.0], [100.0], [3.0], [5.0]], dtype=np.float32)
    mask = np.array([True, False, True, True])
    core = np.array([True, True, True, False])
    stats, coverage = pool(values, mask, core)
    assert stats[:, 0].tolist() == pytest.approx([2.0, 1.0, 3.0])
    assert coverage == pytest.approx(2 / 3)
    empty, cov0 = pool(values, np.zeros(4, bool), core)
    assert np.isnan(empty).all() and cov0 == 0.0


def test_ragged_round_trip_reads_one_chunk_per_item(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 120, size=3000)
    offsets = offsets_from_lengths(lengths)
    face = rng.random((int(offsets[-1]), 2, 31), dtype=np.float32)
    mask = face[..., 0] > 0.3
    group = zarr.open_group(str(tmp_path / "r.zarr"), mode="w", zarr_format=3)
    write_ragged(group, "t", {"face": face, "mask": mask}, offsets)
    arr = group["t/face"]
    assert arr.shards is not None and arr.chunks[0] * 2 * 31 * 4 <= 64 * 1024
    for i in (0, 1234, 2999):
        item = read_ragged(group, "t", i)
        assert np.array_equal(item["face"], face[offsets[i]:offsets[i + 1]])
        assert np.array_equal(item["mask"], mask[offsets[i]:offsets[i + 1]])
    shards = [p for p in (tmp_path / "r.zarr" / "t" / "face" / "c").rglob("*") if p.is_file()]
    # ~49 MB of rows (16 MB shards of 64 KB chunks) in 4 files, not hundreds of chunk files
    assert len(shards) == -(-face.shape[0] // arr.shards[0]) <= 4
