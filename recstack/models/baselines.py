"""Non-neural baselines: most popular items and item-based KNN.

Both follow one API: ``fit(split)`` then ``score_all(user_indices, stage) -> [B, n_items + 1]``
(column 0 is padding), so ``evaluate_scores(lambda u: m.score_all(u, "test"), split, "test")``
evaluates them; ``m.scorer(stage)`` returns that lambda.

The user's history at stage "valid" is the training sequence; at "test" it also contains the
validation target (``recstack.evaluation.user_histories``). ``score_history`` scores arbitrary
histories (item-index arrays), which is what serving needs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from recstack.evaluation.protocol import user_histories
from recstack.evaluation.split import Split, check_stage


class NotFittedError(RuntimeError):
    """A baseline was used before ``fit(split)``."""


class Popularity:
    """Scores every item by its number of training rows (the same list for every user)."""

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None

    def fit(self, split: Split) -> Popularity:
        self.counts = split.train_item_counts().astype(np.float64)
        self.counts[0] = -np.inf
        return self

    def score_all(self, user_indices: np.ndarray, stage: str = "valid") -> np.ndarray:
        """[B] user indices -> [B, n_items + 1] float64 scores (the stage does not matter)."""
        check_stage(stage)
        if self.counts is None:
            raise NotFittedError("Popularity.score_all called before fit(split)")
        return np.broadcast_to(self.counts, (len(user_indices), len(self.counts))).copy()

    def scorer(self, stage: str) -> Callable[[np.ndarray], np.ndarray]:
        return lambda users: self.score_all(users, stage)


@dataclass
class ItemKNNConfig:
    k: int = 100  # neighbours kept per item
    shrink: float = 0.0  # cosine shrinkage: sim = dot / (|a| |b| + shrink)
    block_size: int = 1024  # items per block when computing similarities (memory: n_items * block)


class ItemKNN:
    """Cosine item-item KNN on the binary user x item training matrix.

    For each item j only its ``k`` most similar items i keep a weight W[i, j]; a user with the
    binary history vector h scores item j as (h @ W)[j] (the sum of similarities from the history
    items that are among j's neighbours). Self-similarity is 0.
    """

    def __init__(self, cfg: ItemKNNConfig | None = None) -> None:
        self.cfg = cfg or ItemKNNConfig()
        if self.cfg.k < 1:
            raise ValueError(f"ItemKNN k must be >= 1, got {self.cfg.k}")
        if self.cfg.shrink < 0:
            raise ValueError(f"ItemKNN shrink must be >= 0, got {self.cfg.shrink}")
        self.weights: sp.csr_matrix | None = None
        self.split: Split | None = None

    @staticmethod
    def _binary(histories: list[np.ndarray], n_cols: int) -> sp.csr_matrix:
        lens = [len(h) for h in histories]
        rows = np.repeat(np.arange(len(histories)), lens)
        cols = np.concatenate(histories).astype(np.int64) if histories else np.zeros(0, np.int64)
        m = sp.csr_matrix(
            (np.ones(len(cols), dtype=np.float32), (rows, cols)), shape=(len(histories), n_cols)
        )
        m.data[:] = 1.0  # duplicates summed by the constructor -> binary
        return m

    def fit(self, split: Split) -> ItemKNN:
        n = split.n_items + 1
        x = self._binary(split.train_seqs, n).tocsc()
        xt = x.T.tocsr()
        norms = np.sqrt(np.asarray(x.sum(axis=0)).ravel())
        k = min(self.cfg.k, n - 1)
        rows_all, cols_all, vals_all = [], [], []
        for start in range(0, n, self.cfg.block_size):
            stop = min(start + self.cfg.block_size, n)
            block = (xt @ x[:, start:stop]).toarray()  # co-occurrence counts [n, b]
            denom = (norms[:, None] * norms[None, start:stop] + self.cfg.shrink + 1e-6).astype(np.float32)
            sim = block / denom
            cols = np.arange(start, stop)
            sim[cols, cols - start] = 0.0
            sim[0, :] = 0.0
            top = np.argpartition(-sim, k - 1, axis=0)[:k]  # [k, b] neighbour rows per column
            vals = np.take_along_axis(sim, top, axis=0)
            keep = vals > 0
            rows_all.append(top[keep])
            cols_all.append(np.broadcast_to(cols, top.shape)[keep])
            vals_all.append(vals[keep])
        self.weights = sp.csr_matrix(
            (np.concatenate(vals_all), (np.concatenate(rows_all), np.concatenate(cols_all))), shape=(n, n)
        )
        self.split = split
        return self

    def score_history(self, histories: list[np.ndarray]) -> np.ndarray:
        """Histories (item indices, any order, 0 = padding ignored) -> [B, n_items + 1] scores."""
        if self.weights is None:
            raise NotFittedError("ItemKNN used before fit(split)")
        n = self.weights.shape[0]
        clean = [np.asarray(h, dtype=np.int64) for h in histories]
        for h in clean:
            if len(h) and (h.min() < 0 or h.max() >= n):
                raise ValueError(f"history item indices must lie in 0..{n - 1}")
        x = self._binary([h[h > 0] for h in clean], n)
        return np.asarray((x @ self.weights).todense(), dtype=np.float64)

    def score_all(self, user_indices: np.ndarray, stage: str = "valid") -> np.ndarray:
        """[B] user indices -> [B, n_items + 1] scores from each user's history at ``stage``."""
        if self.split is None:
            raise NotFittedError("ItemKNN.score_all called before fit(split)")
        hist = user_histories(self.split, stage)
        return self.score_history([hist[u] for u in np.asarray(user_indices)])

    def scorer(self, stage: str) -> Callable[[np.ndarray], np.ndarray]:
        return lambda users: self.score_all(users, stage)
