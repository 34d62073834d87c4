"""Thompson sampling over a ranked slate.

The top ``k - explore_slots`` positions keep the ranker's order (deterministic, propensity 1.0).
The last ``explore_slots`` positions are filled by one Thompson draw: every remaining candidate
draws theta ~ Beta(alpha, beta) from its arm statistics (the prior when it has none) and the
highest draws take the exploration slots, best draw first.

Propensity of an explored item: the probability that the policy puts that item into the
exploration slots (set membership, not a particular position), estimated by Monte Carlo with
``n_draws`` joint Thompson draws over the same pool. Over the whole pool these inclusion
probabilities sum to ``explore_slots``; the estimate of a served item is floored at
``1 / n_draws`` because the item was in fact drawn.

Cost. Drawing ``n_draws`` Beta samples for every pool item on every request (200 x 200 draws,
~1.5 ms) dominated the decision. The Monte Carlo samples are therefore kept per item in a
``_DrawCache`` (float32 [items, n_draws]) and redrawn only when the item's (alpha, beta)
changes; a decision gathers the pool's rows and counts the top ``slots`` per draw. Each item's
samples are independent of every other item's, so for any pool the estimate is still the
Monte Carlo inclusion probability of ``n_draws`` independent joint draws; reusing them across
requests only correlates the estimation error between requests whose pools share items. The
draw that actually fills the slots is fresh on every request. A decision over items whose
statistics all changed costs as much as before (one vectorised ``Generator.beta`` call).

Contract (recstack/exploration/base.py): ``select`` returns a ``SlateDecision`` (scores: the
upstream scores of the served items) and raises ``PolicyInputError`` (``PolicyError`` is the same
class) naming the argument.

Segments (recstack/exploration/segments.py). ``select(..., segment=S, segment_arms=...)`` draws
every pool item from its segment posterior: the cold-item prior (prior_alpha, prior_beta) plus
the global arm's evidence scaled down to at most ``segment_prior_strength`` pseudo-observations,
plus the segment arm's own evidence. Without a segment the global arm is used as stored (the
prior only for items without statistics). The draw cache is keyed by (segment, item) for
segment requests and by item otherwise, so requests of different segments keep their own samples
(a row is still redrawn whenever its (alpha, beta) changes).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from itertools import repeat

import numpy as np

from recstack.exploration import THOMPSON, kernels
from recstack.exploration.base import PolicyError, PolicyInputError, SlateDecision, SlateSizeError
from recstack.exploration.segments import segment_beta_params, stack_arms

__all__ = ["PolicyError", "ThompsonSlatePolicy"]


class _DrawCache:
    """Per-key Monte Carlo Beta samples: key (an item id, or (segment, item)) -> row of a float32
    [capacity, n_draws] array, valid while the key's (alpha, beta) stays the same. At most
    ``max_items`` rows (the row of the key cached longest ago is reused first)."""

    def __init__(self, n_draws: int, rng: np.random.Generator, max_items: int = 20_000):
        self.n_draws = n_draws
        self.max_items = max_items
        self._rng = rng
        self._index: dict[Hashable, int] = {}
        capacity = min(1024, max_items)
        self.samples = np.empty((capacity, n_draws), dtype=np.float32)
        self._params = np.full((capacity, 2), np.nan)  # (alpha, beta) the row was drawn with

    def __len__(self) -> int:
        return len(self._index)

    def rows(self, items: Sequence[Hashable], alpha: np.ndarray, beta: np.ndarray) -> np.ndarray:
        """Row of every key [P]; keys that are new or whose parameters changed are (re)drawn
        in one vectorised call."""
        rows = np.fromiter(map(self._index.get, items, repeat(-1)), dtype=np.intp, count=len(items))
        params = self._params[rows]
        stale = np.flatnonzero((rows < 0) | (params[:, 0] != alpha) | (params[:, 1] != beta))
        if stale.size:
            keep = set(items)
            for i in stale.tolist():
                if rows[i] < 0:
                    rows[i] = self._new_row(keep)
                    self._index[items[i]] = int(rows[i])
            fresh = rows[stale]
            draws = self._rng.beta(alpha[stale], beta[stale], size=(self.n_draws, stale.size))
            self.samples[fresh] = draws.T
            self._params[fresh, 0] = alpha[stale]
            self._params[fresh, 1] = beta[stale]
        return rows

    def _new_row(self, keep: set[Hashable]) -> int:
        n = len(self._index)
        if n < self.samples.shape[0]:
            return n
        if n < self.max_items:
            capacity = min(2 * n, self.max_items)
            samples = np.empty((capacity, self.n_draws), dtype=np.float32)
            samples[:n] = self.samples
            params = np.full((capacity, 2), np.nan)
            params[:n] = self._params
            self.samples, self._params = samples, params
            return n
        for old in self._index:  # oldest first; never evict an item of the current pool
            if old not in keep:
                row = self._index.pop(old)
                self._params[row] = np.nan
                return row
        raise AssertionError("unreachable: pools larger than the cache are not cached")


class ThompsonSlatePolicy:
    """Beta-Bernoulli Thompson sampling for the tail slots of a slate.

    explore_slots: positions at the end of the slate open to exploration (>= 0).
    prior_alpha, prior_beta: Beta prior of an item without statistics (> 0).
    seed: seed of the policy's random generator (None: fresh entropy).
    n_draws: Monte Carlo draws for the propensity estimate.
    cache_items: draw-cache rows kept, one per item or per (segment, item) (float32, ``n_draws``
        each).
    segment_prior_strength: most pseudo-observations the global arm lends a segment's prior
        (>= 0; 0: independent segments); see recstack/exploration/segments.py.
    """

    name = THOMPSON

    def __init__(
        self,
        explore_slots: int = 2,
        prior_alpha: float = 1.0,
        prior_beta: float = 1.0,
        seed: int | None = None,
        n_draws: int = 200,
        cache_items: int = 20_000,
        segment_prior_strength: float = 10.0,
    ):
        if explore_slots < 0:
            raise SlateSizeError(f"explore_slots must be >= 0, got {explore_slots}")
        if prior_alpha <= 0 or prior_beta <= 0:
            raise PolicyInputError(f"prior_alpha and prior_beta must be > 0, got {prior_alpha}, {prior_beta}")
        if n_draws < 1:
            raise PolicyInputError(f"n_draws must be >= 1, got {n_draws}")
        self.explore_slots = explore_slots
        self.prior_alpha = prior_alpha
        self.prior_beta = prior_beta
        self.n_draws = n_draws
        if cache_items < 1:
            raise PolicyInputError(f"cache_items must be >= 1, got {cache_items}")
        if not segment_prior_strength >= 0:  # also rejects NaN
            raise PolicyInputError(f"segment_prior_strength must be >= 0, got {segment_prior_strength}")
        self.segment_prior_strength = float(segment_prior_strength)
        self._rng = np.random.default_rng(seed)
        self._draws = _DrawCache(n_draws, self._rng, cache_items)

    def _beta_params(
        self, items: Sequence[str], arms: Mapping[str, tuple[float, float]]
    ) -> tuple[np.ndarray, np.ndarray]:
        """alpha [P], beta [P] per item; missing or non-positive stats fall back to the prior."""
        prior = (self.prior_alpha, self.prior_beta)
        get = arms.get
        ab = np.array([get(item) or prior for item in items], dtype=np.float64).reshape(len(items), 2)
        bad = ~((ab > 0) & np.isfinite(ab)).all(axis=1)
        if bad.any():
            ab[bad] = prior
        return ab[:, 0].copy(), ab[:, 1].copy()

    def segment_params(
        self,
        items: Sequence[str],
        arms: Mapping[str, tuple[float, float]],
        segment_arms: Mapping[str, tuple[float, float]],
    ) -> tuple[np.ndarray, np.ndarray]:
        """alpha [P], beta [P] per item for a segment request: the cold-item prior plus the global
        evidence (at most ``segment_prior_strength`` pseudo-observations) plus the segment's own
        evidence. ``arms`` / ``segment_arms``: stored (alpha, beta) including the Beta(1, 1) prior."""
        return segment_beta_params(
            stack_arms(items, arms),
            stack_arms(items, segment_arms),
            (self.prior_alpha, self.prior_beta),
            self.segment_prior_strength,
        )

    def inclusion_probabilities(self, alpha: np.ndarray, beta: np.ndarray, slots: int) -> np.ndarray:
        """Monte Carlo P(item among the top ``slots`` Thompson draws), shape [P]; sums to ``slots``."""
        p = alpha.shape[0]
        if slots >= p:
            return np.ones(p)
        theta = self._rng.beta(alpha, beta, size=(self.n_draws, p))  # [n_draws, P]
        top = np.argpartition(-theta, slots - 1, axis=1)[:, :slots]  # [n_draws, slots]
        counts = np.bincount(top.ravel(), minlength=p)
        return counts / self.n_draws

    def cached_inclusion(
        self, pool: Sequence[Hashable], alpha: np.ndarray, beta: np.ndarray, slots: int
    ) -> np.ndarray:
        """As ``inclusion_probabilities`` for the cache keys ``pool`` [P] (distinct item ids, or
        (segment, item) pairs), with their Monte Carlo samples taken from (or added to) the draw
        cache."""
        p = len(pool)
        if slots >= p:
            return np.ones(p)
        if p > self._draws.max_items:  # a pool larger than the cache: fresh draws
            return self.inclusion_probabilities(alpha, beta, slots)
        rows = self._draws.rows(pool, alpha, beta)
        counts = np.zeros(p, dtype=np.int64)
        kernels.rows_top_inclusion(self._draws.samples, rows, slots, counts)
        return counts / self.n_draws

    def select(
        self,
        candidates: Sequence[str],
        scores: np.ndarray | Sequence[float],
        k: int,
        arms: Mapping[str, tuple[float, float]],
        explore_slots: int | None = None,
        *,
        segment: str = "",
        segment_arms: Mapping[str, tuple[float, float]] | None = None,
    ) -> SlateDecision:
        """Choose a slate of ``min(k, len(candidates))`` items.

        candidates: item ids ranked best first [C]; scores: their upstream scores [C].
        arms: item id -> (alpha, beta) of its global Beta posterior (missing -> prior).
        explore_slots: overrides the policy's default for this call.
        segment: the request's segment id ("" = none; validated by the caller); with a segment,
        segment_arms: item id -> stored (alpha, beta) of its arm in that segment (missing: no
        segment data) and every pool item draws from its borrowed-prior segment posterior
        (``segment_params``).
        Returns the ``SlateDecision`` (items [S], upstream scores [S], propensities [S], explored
        [S]) in slate order.
        """
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(candidates),):
            raise PolicyInputError(f"scores must have shape ({len(candidates)},), got {scores.shape}")
        if k < 1:
            raise SlateSizeError(f"k must be >= 1, got {k}")
        if len(set(candidates)) != len(candidates):
            raise PolicyInputError("candidates must be distinct item ids")
        slots = self.explore_slots if explore_slots is None else explore_slots
        if slots < 0:
            raise SlateSizeError(f"explore_slots must be >= 0, got {slots}")
        size = min(k, len(candidates))
        slots = min(slots, size)
        fixed = size - slots
        items = list(candidates[:fixed])
        out_scores = list(scores[:fixed])
        props = [1.0] * fixed
        if slots:
            pool = list(candidates[fixed:])
            keys: Sequence[Hashable] = pool
            if segment:
                a, b = self.segment_params(pool, arms, segment_arms or {})
                keys = [(segment, item) for item in pool]
            else:
                a, b = self._beta_params(pool, arms)
            theta = self._rng.beta(a, b)  # [P]
            chosen = np.argsort(-theta, kind="stable")[:slots]
            inclusion = self.cached_inclusion(keys, a, b, slots)
            floor = 1.0 / self.n_draws
            for j in chosen:
                items.append(pool[j])
                out_scores.append(scores[fixed + j])
                props.append(max(float(inclusion[j]), floor))
        return SlateDecision.of(items, out_scores, props, fixed)
