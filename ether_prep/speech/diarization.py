"""Diarization from voice embeddings, as pure functions: speech regions from a per-frame voiced flag, windows
over them, clustering of the windows' embeddings (through the scikit-learn adapter) and turns from the labels."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence

import numpy as np

from ..records import Turn

__all__ = ["cluster_embeddings", "merge_turns", "speech_regions", "speech_windows", "turns_from_windows"]


def speech_regions(voiced: np.ndarray, hop: float, min_speech: float = 0.2, min_silence: float = 0.3
                   ) -> list[tuple[float, float]]:
    """Turn a per-frame voiced flag into (start, end) regions: fill short silences, drop short blips."""
    voiced = np.asarray(voiced, dtype=bool)
    regions: list[list[float]] = []
    idx = np.flatnonzero(np.diff(np.concatenate([[0], voiced.astype(np.int8), [0]])))
    for s, e in zip(idx[::2], idx[1::2], strict=True):
        start, end = s * hop, e * hop
        if regions and start - regions[-1][1] < min_silence:
            regions[-1][1] = end
        else:
            regions.append([start, end])
    return [(s, e) for s, e in regions if e - s >= min_speech]


def speech_windows(regions: Sequence[tuple[float, float]], window: float, hop: float,
                   duration: float) -> list[tuple[float, float]]:
    """Fixed-length windows sliding over each speech region (short regions get one centred window)."""
    out = []
    for s, e in regions:
        if e - s <= window:
            c = (s + e) / 2
            a = min(max(c - window / 2, 0.0), max(duration - window, 0.0))
            out.append((a, a + window))
            continue
        t = s
        while t + window < e:
            out.append((t, t + window))
            t += hop
        out.append((e - window, e))
    return out


def cluster_embeddings(embeddings: np.ndarray, num_speakers: int | None = None, min_speakers: int = 1,
                       max_speakers: int = 8, method: str = "spectral", seed: int = 0) -> np.ndarray:
    """Cluster L2-normalised speaker embeddings into speakers; returns labels 0..k-1 by first appearance.

    With ``num_speakers`` the count is fixed; otherwise it is estimated within ``[min_speakers,
    max_speakers]`` by the eigengap of the cosine affinity (spectral) or by silhouette (agglomerative).
    """
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=int)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    hi = max(1, min(max_speakers, n))
    if num_speakers is not None:
        k = min(num_speakers, n)
    else:
        k = _estimate_speakers(x, max(1, min(min_speakers, hi)), hi, method)
    if k <= 1:
        return np.zeros(n, dtype=int)
    affinity = np.clip(x @ x.T, 0.0, 1.0)
    from ..adapters.sklearn_cluster import agglomerative_labels, spectral_labels

    if method == "spectral":
        labels = spectral_labels(affinity, k, seed)
    elif method == "agglomerative":
        labels = agglomerative_labels(x, k)
    elif method == "complete":
        labels = _agglomerative_large(x, k, linkage="complete")
    else:
        raise ValueError(f"unknown clustering method {method!r}; use 'spectral', 'agglomerative' or 'complete'")
    # Relabel by first appearance so SPEAKER_00 is whoever speaks first.
    order = {old: new for new, old in enumerate(dict.fromkeys(labels.tolist()))}
    return np.array([order[v] for v in labels], dtype=int)


def _agglomerative_large(x: np.ndarray, k: int, min_size: int = 2, linkage: str = "complete") -> np.ndarray:
    """Agglomerative clusters (cosine, ``linkage``) into ``k`` speakers that each hold at least ``min_size``
    embeddings: the tree is cut finer until ``k`` clusters are that large (one odd embedding, a cough or a laugh,
    would otherwise take a speaker of its own), and the embeddings of the small clusters join the nearest large
    centroid."""
    from ..adapters.sklearn_cluster import agglomerative_labels

    labels = agglomerative_labels(x, k, linkage)
    for finer in range(k, min(len(x), 4 * k + 8) + 1):
        labels = agglomerative_labels(x, finer, linkage)
        sizes = np.bincount(labels)
        large = np.flatnonzero(sizes >= min(min_size, len(x) // k))
        if len(large) >= k:
            break
    else:
        return agglomerative_labels(x, k, linkage)
    large = large[np.argsort(-sizes[large])][:k]
    centroids = np.stack([x[labels == j].mean(axis=0) for j in large])
    out = (x @ centroids.T).argmax(axis=1)
    for new, old in enumerate(large):  # members of the large clusters keep their cluster
        out[labels == old] = new
    return out


def _estimate_speakers(x: np.ndarray, lo: int, hi: int, method: str) -> int:
    if hi <= 1 or len(x) < 3:
        return lo
    affinity = np.clip(x @ x.T, 0.0, 1.0)
    if method == "spectral":
        # Window embeddings of one voice are all fairly alike (cosine 0.5-0.99), so the dense affinity hides
        # the clusters; keep each window's nearest 30% (p-pruning, as in NME-SC) before the eigengap.
        keep = max(2, int(0.3 * len(x)))
        pruned = np.zeros_like(affinity)
        nearest = np.argsort(-affinity, axis=1)[:, :keep]
        np.put_along_axis(pruned, nearest, np.take_along_axis(affinity, nearest, axis=1), axis=1)
        pruned = (pruned + pruned.T) / 2
        lap = np.diag(pruned.sum(axis=1)) - pruned
        eig = np.sort(np.linalg.eigvalsh(lap))[: hi + 1]
        eig = eig / max(eig[-1], 1e-12)
        gaps = np.diff(eig)
        # One speaker: all windows alike, no eigengap stands out (small second eigenvalue).
        k = int(np.argmax(gaps[lo - 1: hi])) + lo
        return max(lo, min(k, hi))
    from ..adapters.sklearn_cluster import agglomerative_labels, silhouette

    best, best_k = -1.0, lo
    for k in range(max(lo, 2), hi + 1):
        labels = agglomerative_labels(x, k, "complete" if method == "complete" else "average")
        if len(set(labels)) < 2:
            continue
        score = silhouette(x, labels)
        if score > best:
            best, best_k = score, k
    return 1 if lo == 1 and best < 0.1 else best_k


def turns_from_windows(windows: Sequence[tuple[float, float]], labels: Sequence[int],
                       regions: Sequence[tuple[float, float]], hop: float = 0.05,
                       prefix: str = "SPEAKER_") -> list[Turn]:
    """Speaker turns from labelled overlapping windows, restricted to speech regions.

    Each time step inside a speech region takes the majority label of the windows covering it (the
    nearest window when none does), so overlapping speech is labelled with a speaker, never as silence.
    """
    if not windows or not regions:
        return []
    w = np.asarray(windows, dtype=np.float64)
    lab = np.asarray(labels, dtype=int)
    k = int(lab.max()) + 1
    centres = w.mean(axis=1)
    turns: list[Turn] = []
    for s, e in regions:
        n = max(int(np.ceil((e - s) / hop)), 1)
        t = s + (np.arange(n) + 0.5) * hop
        votes = np.zeros((n, k))
        cover = (w[None, :, 0] <= t[:, None]) & (w[None, :, 1] > t[:, None])
        for j in range(k):
            # Weight windows by closeness of their centre: the middle of a window is its surest part.
            weight = 1.0 / (1e-3 + np.abs(centres[None, lab == j] - t[:, None]))
            votes[:, j] = (cover[:, lab == j] * weight).sum(axis=1)
        empty = votes.sum(axis=1) == 0
        if empty.any():
            nearest = np.abs(centres[None, :] - t[empty, None]).argmin(axis=1)
            votes[np.flatnonzero(empty), lab[nearest]] = 1.0
        best = votes.argmax(axis=1)
        edges = np.flatnonzero(np.diff(best)) + 1
        bounds = [0, *edges.tolist(), n]
        for a, b in itertools.pairwise(bounds):
            turns.append(Turn(start=float(s + a * hop), end=float(min(s + b * hop, e)),
                              speaker=f"{prefix}{int(best[a]):02d}"))
    return merge_turns(turns)


def merge_turns(turns: Iterable[Turn], gap: float = 0.0) -> list[Turn]:
    """Sort turns and merge consecutive ones of the same speaker separated by at most ``gap`` s."""
    out: list[Turn] = []
    for t in sorted(turns, key=lambda t: (t.start, t.end)):
        if out and out[-1].speaker == t.speaker and t.start - out[-1].end <= gap + 1e-9:
            out[-1] = Turn(out[-1].start, max(out[-1].end, t.end), t.speaker)
        else:
            out.append(t)
    return out
