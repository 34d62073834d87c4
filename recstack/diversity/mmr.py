"""Maximal Marginal Relevance (Carbonell & Goldstein 1998), vectorised.

Step t picks the unselected candidate maximising

    lam * rel_i - (1 - lam) * max_{j in selected} sim(i, j)

(the max over the empty set is 0, so the first pick is the most relevant item). ``rel`` is the
min-max normalised relevance (``normalize=True``) so that it lives on the similarity's scale.
The max-similarity-to-selected vector is updated incrementally with the newly selected item's
similarity row, so k steps cost O(kN). Ties go to the lower candidate index.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recstack.diversity.metrics import normalize_scores, resolve_similarity

DEFAULT_LAMBDA = 0.7
"""Relevance weight; 1 - lambda = 0.3 is the diversity weight."""


def mmr(
    scores: np.ndarray,
    sim: np.ndarray | None = None,
    k: int = 10,
    lam: float = DEFAULT_LAMBDA,
    *,
    features: np.ndarray | Sequence[Sequence[str]] | None = None,
    metric: str = "cosine",
    normalize: bool = True,
) -> np.ndarray:
    """Indices (into ``scores``) of the k re-ranked candidates, in selection order.

    scores: relevance [N]; sim: similarity [N, N], or ``features`` (embeddings [N, D] with
    ``metric="cosine"``, genre lists / binary genre matrix with ``metric="jaccard"``);
    lam in [0, 1]: 1 = pure relevance order, 0 = pure diversity.
    """
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"lam must be between 0 and 1, got {lam}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    rel = normalize_scores(scores) if normalize else np.asarray(scores, dtype=np.float64)
    n = len(rel)
    s = resolve_similarity(n, sim, features, metric)
    k = min(k, n)
    out = np.empty(k, dtype=np.int64)
    if k == 0:
        return out
    base = lam * rel
    max_sim = np.zeros(n)
    taken = np.zeros(n, dtype=bool)
    for t in range(k):
        obj = base - (1.0 - lam) * max_sim
        obj[taken] = -np.inf
        i = int(np.argmax(obj))
        out[t] = i
        taken[i] = True
        if t == 0:
            max_sim = s[i].copy()  # similarities may be negative (cosine): no clipping at 0
        else:
            np.maximum(max_sim, s[i], out=max_sim)
    return out
