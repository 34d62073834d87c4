"""Greedy MAP inference for a determinantal point process (Chen, Zhang & Zhou, NeurIPS 2018).

Kernel: L = diag(q) S diag(q), with S a PSD similarity (cosine of embeddings or genre Jaccard,
unit diagonal) and quality q_i = exp(alpha * r_i), where r is the min-max normalised relevance and

    alpha = theta / (2 * (1 - theta)),   theta in [0, 1)

so that log det(L_Y) = theta / (1 - theta) * sum_{i in Y} r_i + log det(S_Y): theta = 0 is pure
diversity, theta -> 1 pure relevance (Chen et al., section 5).

Greedy step: add the item with the largest log-det increment
    gain_i = log det(L_{Y+i}) - log det(L_Y) = 2 alpha r_i + log d_i^2,
where d_i^2 is the conditional variance of item i given Y under S. The fast algorithm keeps the
incremental Cholesky rows c (one per selected item) and d^2 for all candidates, so a step costs
O(|Y| N) and k steps O(k^2 N). Working on S in the log domain avoids overflow of exp(alpha r).

Stopping: when every remaining candidate has d_i^2 <= eps, adding any of them would make the
determinant (numerically) zero, i.e. the log-det gain is -inf; with ``min_gain`` set (e.g. 0.0,
the unconstrained-MAP rule of Chen et al.: stop when det(L_{Y+i}) <= det(L_Y)) the selection
also stops when the best gain is <= min_gain. The remaining slots are filled in relevance order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recstack.diversity.metrics import normalize_scores, resolve_similarity

DEFAULT_THETA = 0.7
"""Relevance/diversity trade-off (theta / (1 - theta) weighs total relevance against log det S)."""


def quality_alpha(theta: float) -> float:
    """alpha in q = exp(alpha * r) for the trade-off theta in [0, 1)."""
    if not 0.0 <= theta < 1.0:
        raise ValueError(f"theta must be in [0, 1), got {theta}")
    return theta / (2.0 * (1.0 - theta))


def dpp_kernel(scores: np.ndarray, sim: np.ndarray, theta: float, normalize: bool = True) -> np.ndarray:
    """The kernel L = diag(q) S diag(q) [N, N] (for inspection and reference implementations)."""
    rel = normalize_scores(scores) if normalize else np.asarray(scores, dtype=np.float64)
    q = np.exp(quality_alpha(theta) * rel)
    return q[:, None] * np.asarray(sim, dtype=np.float64) * q[None, :]


def dpp_greedy(
    scores: np.ndarray,
    sim: np.ndarray | None = None,
    k: int = 10,
    theta: float = DEFAULT_THETA,
    *,
    features: np.ndarray | Sequence[Sequence[str]] | None = None,
    metric: str = "cosine",
    normalize: bool = True,
    eps: float = 1e-10,
    min_gain: float | None = None,
) -> np.ndarray:
    """Indices (into ``scores``) of k candidates: the greedy DPP selection, then relevance fill.

    scores: relevance [N]; sim: PSD similarity [N, N] with unit diagonal, or ``features`` as in
    :func:`recstack.diversity.mmr.mmr`. Returns min(k, N) distinct indices.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    alpha = quality_alpha(theta)
    rel = normalize_scores(scores) if normalize else np.asarray(scores, dtype=np.float64)
    n = len(rel)
    s = resolve_similarity(n, sim, features, metric)
    k = min(k, n)
    selected = dpp_select(2.0 * alpha * rel, s, k, eps, min_gain)
    if len(selected) == k:
        return selected
    taken = np.zeros(n, dtype=bool)
    taken[selected] = True
    rest = np.flatnonzero(~taken)
    fill = rest[np.argsort(-rel[rest], kind="stable")][: k - len(selected)]
    return np.concatenate([selected, fill])


def dpp_select(
    log_quality2: np.ndarray, sim: np.ndarray, k: int, eps: float = 1e-10, min_gain: float | None = None
) -> np.ndarray:
    """Chen et al.'s fast greedy MAP on L = diag(q) S diag(q), given log(q^2) [N] and S [N, N].

    Returns up to k indices in selection order (fewer when the stopping rule fires).
    """
    n = len(log_quality2)
    d2 = np.array(np.diag(sim), dtype=np.float64)
    c = np.zeros((k, n))
    taken = np.zeros(n, dtype=bool)
    out: list[int] = []
    for t in range(k):
        valid = (d2 > eps) & ~taken
        if not valid.any():
            break
        gain = np.full(n, -np.inf)
        gain[valid] = log_quality2[valid] + np.log(d2[valid])
        j = int(np.argmax(gain))
        if min_gain is not None and gain[j] <= min_gain:
            break
        out.append(j)
        taken[j] = True
        dj = np.sqrt(d2[j])
        e = (sim[j] - c[:t, j] @ c[:t]) / dj
        c[t] = e
        d2 -= e * e
    return np.asarray(out, dtype=np.int64)
