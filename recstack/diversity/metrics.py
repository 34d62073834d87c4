"""Item-item similarity kernels and beyond-accuracy metrics of recommendation lists.

Similarities lie in [0, 1] for genre Jaccard and in [-1, 1] for cosine; both are positive
semi-definite (a Gram matrix, resp. the Tanimoto kernel on binary vectors), so they can serve as
the diversity part of a DPP kernel. The diagonal is 1, also for an item without genres or with a
zero embedding (such an item is similar to nothing else).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def genre_matrix(genre_lists: Sequence[Sequence[str]], vocab: Sequence[str] | None = None) -> np.ndarray:
    """Binary item x genre matrix [N, G] (columns in ``vocab`` order, default: sorted genres)."""
    if vocab is None:
        vocab = sorted({g for gs in genre_lists for g in gs})
    col = {g: j for j, g in enumerate(vocab)}
    out = np.zeros((len(genre_lists), max(len(col), 1)), dtype=np.float64)
    for i, gs in enumerate(genre_lists):
        for g in gs:
            if g not in col:
                raise ValueError(f"genre {g!r} of item {i} is not in the vocabulary {list(vocab)}")
            out[i, col[g]] = 1.0
    return out


def jaccard_similarity(genre_lists: Sequence[Sequence[str]] | np.ndarray) -> np.ndarray:
    """Pairwise Jaccard similarity [N, N] of genre sets.

    ``genre_lists``: one list of genres per item, or a binary matrix [N, G]. Items without genres
    have similarity 0 to every other item and 1 to themselves.
    """
    g = np.asarray(genre_lists, dtype=np.float64) if isinstance(genre_lists, np.ndarray) else None
    if g is None:
        g = genre_matrix(genre_lists)
    if g.ndim != 2:
        raise ValueError(f"a binary genre matrix must be [N, G], got shape {g.shape}")
    g = (g > 0).astype(np.float64)
    inter = g @ g.T
    sizes = g.sum(axis=1)
    union = sizes[:, None] + sizes[None, :] - inter
    sim = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    np.fill_diagonal(sim, 1.0)
    return sim


def cosine_similarity(emb: np.ndarray) -> np.ndarray:
    """Pairwise cosine similarity [N, N] of item embeddings [N, D]; zero rows are similar to nothing."""
    x = np.asarray(emb, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    unit = np.divide(x, norms[:, None], out=np.zeros_like(x), where=norms[:, None] > 0)
    sim = np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(sim, 1.0)
    return sim


def intra_list_diversity(items: np.ndarray, sim: np.ndarray) -> float:
    """Mean pairwise distance (1 - similarity) within one list; 0.0 for lists shorter than 2.

    ``items`` index rows/columns of ``sim`` (a similarity over the candidate set or the catalogue).
    """
    idx = np.asarray(items, dtype=np.int64)
    k = len(idx)
    if k < 2:
        return 0.0
    sub = np.asarray(sim)[np.ix_(idx, idx)]
    off = ~np.eye(k, dtype=bool)
    return float((1.0 - sub[off]).mean())


def mean_intra_list_diversity(lists: np.ndarray, item_genres: np.ndarray) -> float:
    """Mean genre-Jaccard intra-list diversity of lists [U, K] of catalogue indices, vectorised.

    ``item_genres``: binary matrix [n_items, G] indexed by the same item indices. Items without
    genres count as distance 1 from everything.
    """
    lists = np.asarray(lists, dtype=np.int64)
    if lists.ndim != 2:
        raise ValueError(f"lists must be [U, K], got shape {lists.shape}")
    u, k = lists.shape
    if u == 0 or k < 2:
        return 0.0
    g = (np.asarray(item_genres) > 0).astype(np.float64)[lists]  # [U, K, G]
    inter = np.einsum("ukg,ulg->ukl", g, g)
    sizes = g.sum(axis=2)
    union = sizes[:, :, None] + sizes[:, None, :] - inter
    jac = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
    off = ~np.eye(k, dtype=bool)
    return float((1.0 - jac)[:, off].mean())


def catalogue_coverage(lists: np.ndarray | Sequence[Sequence[int]], n_items: int) -> float:
    """Share of the ``n_items`` catalogue items that appear in at least one list."""
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    flat = np.concatenate([np.asarray(x, dtype=np.int64).ravel() for x in lists]) if len(lists) else []
    return len(np.unique(flat)) / n_items


def novelty(lists: np.ndarray, item_users: np.ndarray, n_users: int) -> float:
    """Mean self-information -log2(p_i) of the listed items, p_i = (users with item i + 1) / (n_users + 1).

    ``item_users[i]``: number of users who interacted with item i (add-one keeps unseen items finite).
    """
    if n_users < 0:
        raise ValueError(f"n_users must be >= 0, got {n_users}")
    lists = np.asarray(lists, dtype=np.int64)
    if lists.size == 0:
        return 0.0
    p = (np.asarray(item_users, dtype=np.float64) + 1.0) / (n_users + 1.0)
    return float(-np.log2(p[lists]).mean())


def normalize_scores(scores: np.ndarray) -> np.ndarray:
    """Min-max scale relevance scores to [0, 1] (all equal -> all 1), so that they are on the scale
    of the similarities. Non-finite scores are rejected."""
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1:
        raise ValueError(f"scores must be a 1-D array [N], got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite; drop or replace -inf/NaN candidates before re-ranking")
    if len(s) == 0:
        return s
    lo, hi = s.min(), s.max()
    return np.ones_like(s) if hi - lo <= 0 else (s - lo) / (hi - lo)


def resolve_similarity(
    n: int, sim: np.ndarray | None, features: np.ndarray | Sequence[Sequence[str]] | None, metric: str
) -> np.ndarray:
    """The [n, n] similarity: ``sim`` as given, or computed from ``features`` with ``metric``
    ("cosine": embeddings [n, D]; "jaccard": genre lists or a binary genre matrix [n, G])."""
    if (sim is None) == (features is None):
        raise ValueError("pass exactly one of sim ([N, N] similarity) or features (embeddings / genres)")
    if sim is None:
        if metric == "cosine":
            sim = cosine_similarity(np.asarray(features))
        elif metric == "jaccard":
            sim = jaccard_similarity(features)  # type: ignore[arg-type]
        else:
            raise ValueError(f"metric must be 'cosine' or 'jaccard', got {metric!r}")
    sim = np.asarray(sim, dtype=np.float64)
    if sim.shape != (n, n):
        raise ValueError(f"similarity must be [N, N] = [{n}, {n}] for {n} scores, got shape {sim.shape}")
    return sim
