"""scikit-learn adapter: clustering of speaker embeddings. The only module importing scikit-learn."""

from __future__ import annotations

import numpy as np

__all__ = ["agglomerative_labels", "silhouette", "spectral_labels"]


def spectral_labels(affinity: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Spectral clustering of a precomputed affinity matrix into ``k`` clusters (deterministic for a seed)."""
    from sklearn.cluster import SpectralClustering

    return SpectralClustering(n_clusters=k, affinity="precomputed", random_state=seed,
                              assign_labels="cluster_qr").fit_predict(affinity)


def agglomerative_labels(x: np.ndarray, k: int, linkage: str = "average") -> np.ndarray:
    """Agglomerative clustering of vectors by cosine distance into ``k`` clusters (``average`` or ``complete``
    linkage)."""
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=k, metric="cosine", linkage=linkage).fit_predict(x)


def silhouette(x: np.ndarray, labels: np.ndarray) -> float:
    """Mean cosine silhouette of a clustering."""
    from sklearn.metrics import silhouette_score

    return float(silhouette_score(x, labels, metric="cosine"))
