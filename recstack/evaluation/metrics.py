"""Per-user ranking metrics from 1-based ranks."""

from __future__ import annotations

import numpy as np


def hit_ratio(ranks: np.ndarray, k: int) -> np.ndarray:
    """HR@k per user: 1.0 when rank <= k. ranks: int [N], 1-based."""
    return (np.asarray(ranks) <= k).astype(np.float64)


def ndcg(ranks: np.ndarray, k: int) -> np.ndarray:
    """NDCG@k per user with one relevant item: 1 / log2(rank + 1) when rank <= k, else 0."""
    r = np.asarray(ranks, dtype=np.float64)
    return np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)
