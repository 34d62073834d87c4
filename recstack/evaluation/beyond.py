"""Beyond-accuracy metrics of top-K lists: catalogue coverage, genre diversity, novelty.

Lists come from :func:`top_k` which masks the user's whole history at that stage (unlike the
accuracy protocol it does not know the target, so nothing is unmasked).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from recstack.evaluation.protocol import EvaluationError, ScoreFn, user_histories
from recstack.evaluation.split import Split


def top_k(
    score_fn: ScoreFn,
    split: Split,
    stage: str = "test",
    k: int = 10,
    users: Sequence[int] | None = None,
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """(users [N], items [N, k]): each user's k best unseen items, best first (ties: lower index)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    hist = user_histories(split, stage)
    cand = np.arange(1, split.n_users + 1) if users is None else np.asarray(users, dtype=np.int64)
    n_cols = split.n_items + 1
    k = min(k, split.n_items)
    out = np.zeros((len(cand), k), dtype=np.int64)
    for start in range(0, len(cand), batch_size):
        batch = cand[start : start + batch_size]
        scores = np.array(score_fn(batch), dtype=np.float64, copy=True)
        if scores.shape != (len(batch), n_cols):
            raise EvaluationError(
                f"score_fn returned shape {scores.shape}, expected ({len(batch)}, {n_cols})"
            )
        scores[np.isnan(scores)] = -np.inf
        scores[:, 0] = -np.inf
        for r, u in enumerate(batch):
            scores[r, hist[u]] = -np.inf
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        out[start : start + len(batch)] = np.take_along_axis(part, order, axis=1)
    return cand, out


def beyond_accuracy(lists: np.ndarray, split: Split) -> dict:
    """Metrics of top-K lists ``[N, K]`` (item indices):

    coverage@K: share of the split's items that appear in at least one list;
    diversity@K: mean over lists of the mean pairwise genre Jaccard distance (items without
        genres count as distance 1 from everything);
    novelty@K: mean self-information -log2(p_i), p_i = share of users who have item i in training.
    """
    lists = np.asarray(lists, dtype=np.int64)
    if lists.ndim != 2:
        raise ValueError(f"lists must be [N, K], got shape {lists.shape}")
    n, k = lists.shape
    out: dict = {}
    if n == 0:
        return {f"coverage@{k}": 0.0, f"diversity@{k}": 0.0, f"novelty@{k}": 0.0}
    out[f"coverage@{k}"] = len(np.setdiff1d(np.unique(lists), [0])) / max(split.n_items, 1)

    vocab = {g: j for j, g in enumerate(split.genre_vocab)}
    genres = np.zeros((split.n_items + 1, max(len(vocab), 1)), dtype=np.float64)
    for i, gs in enumerate(split.item_genres):
        for g in gs:
            genres[i, vocab[g]] = 1.0
    if k > 1:
        g = genres[lists]  # [N, K, G]
        inter = np.einsum("nkg,nlg->nkl", g, g)
        sizes = g.sum(axis=2)
        union = sizes[:, :, None] + sizes[:, None, :] - inter
        jaccard = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        off = ~np.eye(k, dtype=bool)
        out[f"diversity@{k}"] = float((1.0 - jaccard)[:, off].mean())
    else:
        out[f"diversity@{k}"] = 0.0

    users_with = np.zeros(split.n_items + 1, dtype=np.float64)
    for seq in split.train_seqs:
        users_with[np.unique(seq)] += 1
    p = (users_with + 1.0) / (split.n_users + 1.0)  # add-one so unseen items stay finite
    out[f"novelty@{k}"] = float(-np.log2(p[lists]).mean())
    return out
