"""Face identity: a sampled embedding per track, splits where a track's face changes, and persons.

- **Sampling** (:class:`TrackIdentities`). Embedding a face costs far more than detecting it (dlib's ResNet:
  75-160 ms on a CPU core, holding the GIL), so a track is embedded when it is confirmed (``min_hits``
  detections), then ``every_s`` later, and at intervals that double from there (ages 0, 2, 6, 14, 30 s for
  ``every_s`` 2), at most ``max_per_track`` times: short shots get a sample at once, long tracks a few
  spread over their first minute, and the cost per track grows with the log of its length. Embeddings are
  L2-normalised; a track's identity is the L2-normalised mean of its samples.
- **Face changes without a cut** (a dissolve, or the tracker following a box into another person): a sample
  farther than ``threshold`` from its track's mean starts a new track (the caller splits the tracker's
  track). The change lies between the previous sample and this one; the split is placed at this one, and
  :attr:`TrackIdentities.splits` records both times, so the uncertain span is in the store.
- **Persons** (:func:`cluster_persons`): average-linkage agglomerative clustering of the track identities
  by Euclidean distance (of L2-normalised vectors) up to ``threshold``, with cannot-link constraints: two
  tracks seen in the same frame are two people, whatever their embeddings say. A track without any
  embedding is a person of its own. Person ids count from 0 in order of first appearance.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["IdentitySplit", "TrackIdentities", "cannot_link_pairs", "cluster_persons", "normalise"]


def normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


@dataclass(frozen=True)
class IdentitySplit:
    """A track whose face changed: ``track`` ends and ``new_track`` starts at ``time``; the change happened
    after ``last_same_time`` (the previous sample that still matched)."""

    track: int
    new_track: int
    time: float
    last_same_time: float
    distance: float


@dataclass
class _State:
    seen: int = 0
    n: int = 0
    last_time: float = -np.inf
    total: np.ndarray | None = None

    def mean(self) -> np.ndarray | None:
        return None if self.total is None else normalise(self.total)


@dataclass
class TrackIdentities:
    """Per-track identity samples of one recording (track ids are the tracker's)."""

    every_s: float = 2.0
    max_per_track: int = 6
    min_hits: int = 1
    threshold: float = 0.42
    tracks: dict[int, _State] = field(default_factory=dict)
    splits: list[IdentitySplit] = field(default_factory=list)

    def due(self, t: float, ids: np.ndarray) -> np.ndarray:
        """Which of this frame's detections (their track ``ids``) to embed now; counts them as seen."""
        want = np.zeros(len(ids), dtype=bool)
        for c, track in enumerate(ids):
            s = self.tracks.setdefault(int(track), _State())
            s.seen += 1
            interval = self.every_s * 2.0 ** max(s.n - 1, 0)
            want[c] = s.seen >= self.min_hits and s.n < self.max_per_track and t - s.last_time >= interval - 1e-9
        return want

    def add(self, track: int, t: float, embedding: np.ndarray) -> float | None:
        """Add a sample to ``track``; returns its distance to the track's mean before it, or None when it
        is the track's first. A distance above ``threshold`` means the face changed: call :meth:`restart`
        instead of keeping it (the sample is not added then)."""
        s = self.tracks.setdefault(int(track), _State())
        e = normalise(embedding)
        mean = s.mean()
        distance = None if mean is None else float(np.linalg.norm(e - mean))
        if distance is not None and distance > self.threshold:
            return distance
        s.total = e if s.total is None else s.total + e
        s.n += 1
        s.last_time = t
        return distance

    def restart(self, track: int, new_track: int, t: float, embedding: np.ndarray, distance: float) -> None:
        """``track``'s face changed at ``t``: the sample starts ``new_track`` (already confirmed)."""
        old = self.tracks[int(track)]
        self.splits.append(IdentitySplit(int(track), int(new_track), float(t), float(old.last_time), distance))
        self.tracks[int(new_track)] = _State(seen=max(old.seen, self.min_hits), n=1, last_time=t,
                                             total=normalise(embedding))

    def means(self, tracks: list[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """(len(tracks), dim) float32 identities (NaN rows for tracks never embedded) and sample counts."""
        out = np.full((len(tracks), dim), np.nan, dtype=np.float32)
        counts = np.zeros(len(tracks), dtype=np.int64)
        for i, track in enumerate(tracks):
            s = self.tracks.get(int(track))
            if s is not None and s.total is not None:
                out[i] = s.mean()
                counts[i] = s.n
        return out, counts


def cannot_link_pairs(frame: np.ndarray, track: np.ndarray) -> np.ndarray:
    """(k, 2) distinct pairs of tracks seen in the same frame (``frame`` sorted; ``track < 0`` ignored)."""
    frame, track = np.asarray(frame), np.asarray(track)
    keep = track >= 0
    frame, track = frame[keep], track[keep]
    if not len(frame):
        return np.zeros((0, 2), dtype=np.int64)
    # Rows of one frame are consecutive: pair each row with the next k rows, for k up to the most faces
    # seen in one frame.
    most = int(np.unique(frame, return_counts=True)[1].max())
    pairs = [np.column_stack([track[:-k], track[k:]])[frame[:-k] == frame[k:]] for k in range(1, most)]
    if not pairs:
        return np.zeros((0, 2), dtype=np.int64)
    both = np.sort(np.concatenate(pairs), axis=1)
    both = both[both[:, 0] != both[:, 1]]
    return np.unique(both, axis=0).astype(np.int64)


def cluster_persons(identities: np.ndarray, cannot_link: np.ndarray, threshold: float) -> np.ndarray:
    """Person id per track: average-linkage clustering of ``identities`` ((T, E) L2-normalised, NaN rows
    for tracks without one) by Euclidean distance, merging while the closest pair of clusters is within
    ``threshold`` and no ``cannot_link`` pair ((k, 2) track indices) would end up in one cluster.

    Tracks are indexed in order of first appearance, and so are the returned person ids.
    """
    x = np.asarray(identities, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    has = ~np.isnan(x).any(axis=1) & (x.shape[1] > 0)
    d = np.full((n, n), np.inf)
    idx = np.flatnonzero(has)
    if len(idx):
        e = x[idx]
        sq = np.clip((e * e).sum(1)[:, None] + (e * e).sum(1)[None, :] - 2 * e @ e.T, 0, None)
        d[np.ix_(idx, idx)] = np.sqrt(sq)
    if len(cannot_link):
        # An infinite distance stays infinite through every average: the constraint holds for the clusters.
        a, b = np.asarray(cannot_link, dtype=np.int64).T
        d[a, b] = d[b, a] = np.inf
    np.fill_diagonal(d, np.inf)
    size = np.ones(n)
    alive = np.ones(n, dtype=bool)
    members = {i: [i] for i in range(n)}
    # Each cluster's nearest neighbour, kept up to date: a merge recomputes only the rows it touched.
    nn = d.argmin(axis=1)
    nnd = d[np.arange(n), nn]
    while True:
        i = int(np.argmin(nnd))
        if not nnd[i] <= threshold:
            break
        j = int(nn[i])
        i, j = min(i, j), max(i, j)
        d[i] = (size[i] * d[i] + size[j] * d[j]) / (size[i] + size[j])
        d[i, i] = np.inf
        d[:, i] = d[i]
        size[i] += size[j]
        alive[j] = False
        d[j] = np.inf
        d[:, j] = np.inf
        members[i] += members.pop(j)
        nnd[j] = np.inf
        stale = np.flatnonzero(alive & ((nn == i) | (nn == j)))
        for k in (i, *stale):
            nn[k] = int(d[k].argmin())
            nnd[k] = d[k, nn[k]]
        closer = alive & (d[:, i] < nnd)
        nn[closer], nnd[closer] = i, d[closer, i]
    labels = np.empty(n, dtype=np.int64)
    for person, first in enumerate(sorted(members)):  # a cluster's key is its first-seen track
        labels[members[first]] = person
    return labels
