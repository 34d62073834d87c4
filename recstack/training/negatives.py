"""Negative sampling: uniform or popularity-based item draws, optionally avoiding the user's positives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class NegativeSampler:
    """Draws item indices in 1..n_items.

    ``counts`` [n_items + 1] (training interactions per item) and ``power`` > 0 give popularity
    sampling with p(i) proportional to counts[i]**power; ``power = 0`` (default) is uniform.
    ``user_items`` (optional, per user index, item indices) lets :meth:`sample` reject the user's
    own positives: a few resampling rounds from the sampling distribution, then (for the rare
    leftovers) a uniform draw among the user's non-positive items. A user who has every item
    keeps positives as negatives.
    """

    n_items: int
    counts: np.ndarray | None = None
    power: float = 0.0
    user_items: list[np.ndarray] | None = None
    rounds: int = 3

    def __post_init__(self) -> None:
        if self.n_items < 1:
            raise ValueError(f"n_items must be >= 1, got {self.n_items}")
        self._cdf = None
        if self.power != 0.0:
            if self.counts is None or len(self.counts) != self.n_items + 1:
                raise ValueError("popularity sampling needs counts of length n_items + 1")
            p = np.asarray(self.counts[1:], dtype=np.float64) ** self.power
            p = p + 1e-12 if p.sum() == 0 else p
            self._cdf = np.cumsum(p / p.sum())
        self._keys = None
        if self.user_items is not None:
            keys = [
                u * (self.n_items + 1) + np.asarray(s, np.int64)
                for u, s in enumerate(self.user_items)
                if len(s)
            ]
            self._keys = np.unique(np.concatenate(keys)) if keys else np.zeros(0, np.int64)

    def draw(self, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
        """Item indices int64 of ``shape``, ignoring users."""
        if self._cdf is None:
            return rng.integers(1, self.n_items + 1, size=shape, dtype=np.int64)
        u = rng.random(shape)
        return np.minimum(np.searchsorted(self._cdf, u), self.n_items - 1).astype(np.int64) + 1

    def sample(self, users: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
        """``k`` negatives per user: int64 [len(users), k], avoiding the user's positives if known."""
        users = np.asarray(users, dtype=np.int64)
        neg = self.draw((len(users), k), rng)
        if self._keys is None or len(self._keys) == 0:
            return neg
        for _ in range(self.rounds):
            keys = users[:, None] * (self.n_items + 1) + neg
            pos = np.searchsorted(self._keys, keys)
            hit = self._keys[np.minimum(pos, len(self._keys) - 1)] == keys
            if not hit.any():
                break
            neg[hit] = self.draw((int(hit.sum()),), rng)
        else:
            keys = users[:, None] * (self.n_items + 1) + neg
            pos = np.searchsorted(self._keys, keys)
            hit = self._keys[np.minimum(pos, len(self._keys) - 1)] == keys
            for r, c in zip(*np.nonzero(hit), strict=True):
                allowed = np.setdiff1d(np.arange(1, self.n_items + 1), self.user_items[users[r]])
                if len(allowed):
                    neg[r, c] = rng.choice(allowed)
        return neg
