"""Thompson sampling over a ranked slate.

The top ``k - explore_slots`` positions keep the ranker's order (deterministic, propensity 1.0).
The last ``explore_slots`` positions are filled by one Thompson draw: every remaining candidate
draws theta ~ Beta(alpha, beta) from its arm statistics (the prior when it has none) and the
highest draws take the exploration slots, best draw first.

Propensity of an explored item: the probability that the policy puts that item into the
exploration slots (set membership, not a particular position), estimated by Monte Carlo with
``n_draws`` vectorised Thompson draws over the same pool. Over the whole pool these inclusion
probabilities sum to ``explore_slots``; the estimate of a served item is floored at
``1 / n_draws`` because the item was in fact drawn.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


class PolicyError(ValueError):
    """Invalid input to an exploration policy; the message names the argument."""


class ThompsonSlatePolicy:
    """Beta-Bernoulli Thompson sampling for the tail slots of a slate.

    explore_slots: positions at the end of the slate open to exploration (>= 0).
    prior_alpha, prior_beta: Beta prior of an item without statistics (> 0).
    seed: seed of the policy's random generator (None: fresh entropy).
    n_draws: Monte Carlo draws for the propensity estimate.
    """

    name = "thompson"

    def __init__(
        self,
        explore_slots: int = 2,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        seed: int | None = None,
        n_draws: int = 200,
    ):
        if explore_slots < 0:
            raise PolicyError(f"explore_slots must be >= 0, got {explore_slots}")
        if prior_alpha <= 0 or prior_beta <= 0:
            raise PolicyError(f"prior_alpha and prior_beta must be > 0, got {prior_alpha}, {prior_beta}")
        if n_draws < 1:
            raise PolicyError(f"n_draws must be >= 1, got {n_draws}")
        self.explore_slots = explore_slots
        self.prior_alpha = prior_alpha
        self.prior_beta = prior_beta
        self.n_draws = n_draws
        self._rng = np.random.default_rng(seed)

    def _beta_params(
        self, items: Sequence[str], arms: Mapping[str, tuple[float, float]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """alpha [P], beta [P] per item; missing or non-positive stats fall back to the prior."""
        a = np.full(len(items), self.prior_alpha, dtype=np.float64)
        b = np.full(len(items), self.prior_beta, dtype=np.float64)
        for i, item in enumerate(items):
            stats = arms.get(item)
            if stats is not None and stats[0] > 0 and stats[1] > 0:
                a[i], b[i] = stats
        return a, b

    def inclusion_probabilities(self, alpha: np.ndarray, beta: np.ndarray, slots: int) -> np.ndarray:
        """Monte Carlo P(item among the top ``slots`` Thompson draws), shape [P]; sums to ``slots``."""
        p = alpha.shape[0]
        if slots >= p:
            return np.ones(p)
        theta = self._rng.beta(alpha, beta, size=(self.n_draws, p))  # [n_draws, P]
        top = np.argpartition(-theta, slots - 1, axis=1)[:, :slots]  # [n_draws, slots]
        counts = np.bincount(top.ravel(), minlength=p)
        return counts / self.n_draws

    def select(
        self,
        candidates: Sequence[str],
        scores: np.ndarray | Sequence[float],
        k: int,
        arms: Mapping[str, tuple[float, float]],
        explore_slots: int | None = None,
    ) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Choose a slate of ``min(k, len(candidates))`` items.

        candidates: item ids ranked best first [C]; scores: their upstream scores [C].
        arms: item id -> (alpha, beta) of its Beta posterior (missing -> prior).
        explore_slots: overrides the policy's default for this call.
        Returns (items [S], upstream scores [S], propensities [S]) in slate order.
        """
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(candidates),):
            raise PolicyError(f"scores must have shape ({len(candidates)},), got {scores.shape}")
        if k < 1:
            raise PolicyError(f"k must be >= 1, got {k}")
        if len(set(candidates)) != len(candidates):
            raise PolicyError("candidates must be distinct item ids")
        slots = self.explore_slots if explore_slots is None else explore_slots
        if slots < 0:
            raise PolicyError(f"explore_slots must be >= 0, got {slots}")
        size = min(k, len(candidates))
        slots = min(slots, size)
        fixed = size - slots
        items = list(candidates[:fixed])
        out_scores = list(scores[:fixed])
        props = [1.0] * fixed
        if slots:
            pool = list(candidates[fixed:])
            a, b = self._beta_params(pool, arms)
            theta = self._rng.beta(a, b)  # [P]
            chosen = np.argsort(-theta, kind="stable")[:slots]
            inclusion = self.inclusion_probabilities(a, b, slots)
            floor = 1.0 / self.n_draws
            for j in chosen:
                items.append(pool[j])
                out_scores.append(scores[fixed + j])
                props.append(max(float(inclusion[j]), floor))
        return items, np.asarray(out_scores, dtype=np.float64), np.asarray(props, dtype=np.float64)
