"""Diarization built like pyannote's, as pure NumPy functions over a segmentation model's output.

1. A segmentation network gives, per 5 s chunk sliding over the recording, the frame-level activity of up to 3
   *local* speakers (who is local speaker 1 differs from chunk to chunk).
2. Each active local speaker of each chunk gets a voice embedding from the frames where it speaks alone
   (:func:`embedding_frames`; all its frames when it never does).
3. The embeddings are clustered into global speakers; within a chunk two local speakers never go to the same
   speaker (:func:`assign_local_speakers`, a one-to-one matching against the cluster centroids).
4. The chunks are stitched back together (:func:`reconstruct`): every frame keeps as many speakers as the
   segmentation counts there (averaged over the overlapping chunks), the most active ones. Two speakers at
   once is overlap, and becomes two overlapping turns (:func:`binary_to_turns`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..records import Turn

__all__ = ["aggregate", "assign_local_speakers", "binary_to_turns", "embedding_frames", "reconstruct",
           "speaker_count"]


def embedding_frames(binary: np.ndarray, min_clean: int) -> tuple[list[tuple[int, int]], list[np.ndarray]]:
    """The (chunk, local speaker) pairs that speak in a chunk and, for each, the frame flags its embedding is
    taken from: the frames where it speaks alone when there are at least ``min_clean`` of them, else all its
    frames (a local speaker heard only in overlap still needs a voice)."""
    alone = binary & (binary.sum(axis=2, keepdims=True) == 1)
    pairs, masks = [], []
    for c, s in zip(*np.nonzero(binary.any(axis=1)), strict=True):
        clean = alone[c, :, s]
        pairs.append((int(c), int(s)))
        masks.append(clean if clean.sum() >= min_clean else binary[c, :, s])
    return pairs, masks


def assign_local_speakers(pairs: Sequence[tuple[int, int]], embeddings: np.ndarray, labels: np.ndarray,
                          fit: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(chunks, local speakers) global speaker of each local one (-1: silent there). The clusters' centroids
    come from the embeddings flagged in ``fit``; every local speaker of a chunk is then matched one-to-one to
    a centroid by cosine similarity, so one chunk never gives two local speakers the same voice."""
    from ..adapters.scipy_optimize import best_assignment

    k = int(labels[fit].max()) + 1 if fit.any() else 1
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)
    centroids = np.stack([x[fit & (labels == j)].mean(axis=0) if (fit & (labels == j)).any()
                          else np.zeros(x.shape[1]) for j in range(k)])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    out = np.full(shape, -1, dtype=int)
    by_chunk: dict[int, list[int]] = {}
    for i, (c, _) in enumerate(pairs):
        by_chunk.setdefault(c, []).append(i)
    for c, rows in by_chunk.items():
        sim = x[rows] @ centroids.T
        if len(rows) > k:  # more local voices than speakers: extra ones take their nearest speaker
            for i, j in zip(rows, sim.argmax(axis=1), strict=True):
                out[c, pairs[i][1]] = int(j)
            continue
        r, j = best_assignment(sim)
        for a, b in zip(r, j, strict=True):
            out[c, pairs[rows[a]][1]] = int(b)
    return out


def aggregate(chunks: np.ndarray, offsets: np.ndarray, average: bool = True) -> np.ndarray:
    """Overlap-add ``(chunks, frames, n)`` values into ``(total frames, n)``; chunk ``c`` starts at global frame
    ``offsets[c]``. Averaged over the chunks covering each frame unless ``average`` is False."""
    c, f, n = chunks.shape
    total = int(offsets[-1]) + f if c else 0
    acc = np.zeros((total, n))
    cover = np.zeros((total, 1))
    for i in range(c):
        acc[offsets[i]:offsets[i] + f] += chunks[i]
        cover[offsets[i]:offsets[i] + f] += 1
    return acc / np.maximum(cover, 1) if average else acc


def speaker_count(binary: np.ndarray, offsets: np.ndarray, max_count: int) -> np.ndarray:
    """Per global frame, how many speakers talk: the local speaker count averaged over chunks, rounded."""
    count = aggregate(binary.sum(axis=2, keepdims=True).astype(float), offsets)[:, 0]
    return np.minimum(np.rint(count).astype(int), max_count)


def reconstruct(activations: np.ndarray, binary: np.ndarray, local_to_global: np.ndarray, k: int,
                offsets: np.ndarray) -> np.ndarray:
    """(total frames, k) speaker activity: each chunk's local activations moved to their global speakers,
    averaged over chunks, then at every frame the ``count`` most active speakers are kept."""
    c, f, _ = activations.shape
    clustered = np.zeros((c, f, k))
    for s in range(activations.shape[2]):
        g = local_to_global[:, s]
        rows = np.flatnonzero(g >= 0)
        clustered[rows, :, g[rows]] = np.maximum(clustered[rows, :, g[rows]], activations[rows, :, s])
    score = aggregate(clustered, offsets)
    count = speaker_count(binary, offsets, k)
    order = np.argsort(-score, axis=1)
    keep = np.arange(k)[None, :] < count[:, None]
    out = np.zeros_like(score, dtype=bool)
    np.put_along_axis(out, order, keep, axis=1)
    return out


def binary_to_turns(active: np.ndarray, frame_step: float, min_off: float = 0.0, min_on: float = 0.0,
                    prefix: str = "SPEAKER_") -> list[Turn]:
    """Turns of each speaker's activity (frames ``frame_step`` s long), gaps under ``min_off`` s filled and
    blips under ``min_on`` s dropped; speakers numbered by first appearance. Turns of different speakers may
    overlap (speech at once)."""
    spans: list[tuple[float, float, int]] = []
    for j in range(active.shape[1]):
        idx = np.flatnonzero(np.diff(np.concatenate([[0], active[:, j].astype(np.int8), [0]])))
        runs: list[list[float]] = []
        for a, b in zip(idx[::2], idx[1::2], strict=True):
            if runs and a * frame_step - runs[-1][1] < min_off:
                runs[-1][1] = b * frame_step
            else:
                runs.append([a * frame_step, b * frame_step])
        spans += [(s, e, j) for s, e in runs if e - s >= min_on]
    spans.sort()
    names = {j: f"{prefix}{n:02d}" for n, j in enumerate(dict.fromkeys(j for _, _, j in spans))}
    return [Turn(float(s), float(e), names[j]) for s, e, j in spans]
