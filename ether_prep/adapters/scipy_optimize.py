"""scipy adapter: optimal one-to-one assignment (the Hungarian algorithm). The only module importing scipy."""

from __future__ import annotations

import numpy as np

__all__ = ["best_assignment"]


def best_assignment(score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the one-to-one matching that maximises the summed ``score``."""
    from scipy.optimize import linear_sum_assignment

    return linear_sum_assignment(-np.asarray(score, dtype=np.float64))
