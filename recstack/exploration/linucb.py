"""LinUCB (disjoint and hybrid) and linear Thompson sampling over a ranked slate.

Model (Li et al., WWW 2010). Disjoint: every arm a has its own ridge regression
``A_a = ridge*I + sum x x^T``, ``b_a = sum r x``, ``theta_a = A_a^{-1} b_a``, and the score of a
candidate with features x is ``theta_a.x + alpha * sqrt(x^T A_a^{-1} x)``. Hybrid adds a
coefficient vector beta shared by all arms over shared features z (``A0``, ``b0``), see
``HybridLinUCB``. LinTS samples from the same Gaussian posterior instead of adding a bonus.

Cost. ``A_a^{-1}`` is kept up to date with a rank-one Sherman-Morrison step per reward
(O(d^2)); no matrix is inverted when deciding. All candidates are scored in one batched numpy
operation over the stacked ``(n_arms, d, d)`` inverses. Arms never updated share row 0, the
prior (``A^{-1} = I / ridge``, ``b = 0``), so unseen candidates cost no memory.

Slate. ``select`` keeps the upstream order for the first ``k - explore_slots`` positions
(propensity 1.0). The exploration slots come from the remaining pool of m candidates. LinUCB is
deterministic, and a deterministic logging policy gives propensity 0 to every item it would not
pick, so logs it writes cannot evaluate any other policy off-line. Hence the epsilon mix: with
probability ``1 - epsilon`` the slots take the top ``explore_slots`` pool items by UCB (best
first, ties broken by upstream order), with probability ``epsilon`` a uniformly random subset of
the pool (random order). Propensity of a served explored item = P(it is in the slots) =
``(1 - epsilon) * [it is in the greedy set] + epsilon * explore_slots / m``. Consequences:
``epsilon = 0`` logs propensity 1 for the greedy items and never serves the others (no OPE of
other policies); with ``epsilon > 0`` the smallest propensity is ``epsilon * s / m`` (0.001 for
epsilon 0.1, 2 slots, 200 candidates), so IPS weights reach ``m / (epsilon * s)`` and estimates
of very different policies are noisy; the greedy choice is served ``1 - epsilon`` of the time only.

Persistence. ``LinUCB.arm_hash`` / ``load_arm`` map one arm to a Redis hash whose ``state``
field holds float32 bytes (little endian; the format is recstack/exploration/state_codec.py);
``decode_state`` validates it and raises ``CorruptStateError``, which ``load_arm`` turns into a
reset of that arm to the prior with a logged warning. The Redis I/O is
recstack/exploration/linear_store.py, the context features recstack/exploration/context.py.
Policy objects are not thread-safe: use one per event loop / worker.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from itertools import repeat

import numpy as np

from recstack.exploration import kernels
from recstack.exploration.base import (
    CorruptStateError,
    FeatureSizeError,
    NonFiniteInputError,
    PolicyInputError,
    SlateDecision,
    check_distinct_ids,
    check_finite_contexts,
    check_select_args,
    check_update_args,
    explored_mask,
)
from recstack.exploration.state_codec import decode_state, state_fields, state_hash

log = logging.getLogger(__name__)


class _ArmRows:
    """Arm id -> row of stacked per-arm arrays; row 0 is the shared prior and never updated.

    Arrays named in ``mirror`` also get a float32 copy ``<name>32``, written by ``set``; the
    decision path gathers those (half the memory traffic), updates work in float64.
    """

    def __init__(self, priors: Mapping[str, np.ndarray], mirror: Sequence[str] = (), capacity: int = 64):
        self.priors = dict(priors)
        self.mirror = tuple(mirror)
        for name in self.mirror:
            self.priors[name + "32"] = self.priors[name].astype(np.float32)
        self.index: dict[str, int] = {}
        # row -> (n, hash of the state bytes) of the last load_arm; dropped by local updates
        self.loaded: dict[int, tuple[int, int]] = {}
        self.counts = np.zeros(capacity, dtype=np.int64)
        self.arrays = {
            name: np.broadcast_to(p, (capacity, *p.shape)).copy() for name, p in self.priors.items()
        }

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, arm_ids: Sequence[str]) -> np.ndarray:
        """Row of each arm [C] (0 for arms never updated)."""
        return np.fromiter(map(self.index.get, arm_ids, repeat(0)), dtype=np.intp, count=len(arm_ids))

    def row(self, arm_id: str) -> int:
        """Row of ``arm_id``, created (as the prior) on first use."""
        r = self.index.get(arm_id)
        if r is None:
            r = len(self.index) + 1
            if r >= self.counts.shape[0]:
                self._grow(2 * self.counts.shape[0])
            self.index[arm_id] = r
        return r

    def set(self, r: int, **values: np.ndarray) -> None:
        """Write arrays of row r (and their float32 mirrors); the row no longer holds what
        ``load_arm`` last loaded (it re-marks the row after installing a hash)."""
        self.loaded.pop(r, None)
        for name, v in values.items():
            self.arrays[name][r] = v
            if name in self.mirror:
                self.arrays[name + "32"][r] = v

    def reset(self, r: int) -> None:
        self.loaded.pop(r, None)
        for name, p in self.priors.items():
            self.arrays[name][r] = p
        self.counts[r] = 0

    def _grow(self, capacity: int) -> None:
        old = self.counts.shape[0]
        self.counts = np.concatenate([self.counts, np.zeros(capacity - old, dtype=np.int64)])
        for name, p in self.priors.items():
            extra = np.broadcast_to(p, (capacity - old, *p.shape))
            self.arrays[name] = np.concatenate([self.arrays[name], extra])


def _sherman_morrison(ainv: np.ndarray, x: np.ndarray) -> np.ndarray:
    """(A + x x^T)^{-1} from A^{-1} [d, d] and x [d]; result re-symmetrised."""
    u = ainv @ x
    out = ainv - np.outer(u, u) / (1.0 + x @ u)
    return 0.5 * (out + out.T)


def hybrid_shared_delta(
    ainv: np.ndarray, bmat: np.ndarray, b: np.ndarray, z: np.ndarray, x: np.ndarray, reward: float
) -> tuple[np.ndarray, np.ndarray]:
    """Change of the hybrid model's shared ``(A0, b0)`` when arm (A^{-1}, B, b) observes
    (z, x, reward): ``((z - v)(z - v)^T / s, (z - v)(reward - x.w) / s)``.

    Li et al.'s Algorithm 2 adds ``B^T A^{-1} B`` (and ``B^T A^{-1} b``) of the arm before its
    update and subtracts them after, O(d^2 k + d k^2). With ``u = A^{-1} x``, ``s = 1 + x.u``,
    ``v = B^T u`` and ``w = A^{-1} b``, Sherman-Morrison reduces the net change to the rank-one
    terms above, O(d^2 + d k + k^2); the stream's Lua script applies the same formula."""
    u = ainv @ x
    s = 1.0 + x @ u
    g = z - bmat.T @ u
    return np.outer(g, g) / s, g * (reward - x @ (ainv @ b)) / s


def top_indices(score: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` highest scores [n], best first, ties to the lower index: the first
    ``n`` of a stable ``argsort(-score)``. A few slots (n <= 4) take n argmax passes instead of
    a sort of the whole pool."""
    if n > 4 or n >= score.shape[0]:
        return np.argsort(-score, kind="stable")[:n]
    work = np.array(score, dtype=np.float64)
    picked = []
    for _ in range(n):
        j = int(work.argmax())
        picked.append(j)
        work[j] = -np.inf
    out = np.array(picked, dtype=np.intp)
    if len(set(picked)) < n or not np.isfinite(score[out]).all():  # -inf or NaN scores: sort
        return np.argsort(-score, kind="stable")[:n]
    return out


def _check_params(alpha: float, epsilon: float, ridge: float, dim: int) -> None:
    if dim < 1:
        raise PolicyInputError(f"dim must be >= 1, got {dim}")
    if not (np.isfinite(alpha) and alpha >= 0):
        raise PolicyInputError(f"alpha must be a finite number >= 0, got {alpha}")
    if not 0.0 <= epsilon <= 1.0:
        raise PolicyInputError(f"epsilon must be in [0, 1], got {epsilon}")
    if not (np.isfinite(ridge) and ridge > 0):
        raise PolicyInputError(f"ridge must be > 0, got {ridge}")


_Picker = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


class _LinearSlatePolicy:
    """What the linear policies share: parameters, the UCB score, slate assembly with the epsilon
    mix, single updates and the Redis hash of an arm.

    Subclasses build ``self._arms`` (an ``_ArmRows``) and define ``mean_and_width``,
    ``update_batch`` and the arm's serialised blocks: ``_arm_shapes()`` (the first block is
    A^{-1}, checked for symmetry on load), ``_arm_blocks(row)`` and ``_set_arm(row, *blocks)``.
    """

    name: str
    kind: str
    _arms: _ArmRows

    def __init__(self, dim: int, alpha: float, epsilon: float, ridge: float, seed: int | None):
        _check_params(alpha, epsilon, ridge, dim)
        self.dim = dim
        self.alpha = float(alpha)
        self.epsilon = float(epsilon)
        self.ridge = float(ridge)
        self._rng = np.random.default_rng(seed)

    def mean_and_width(self, contexts: np.ndarray, arm_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def update_batch(self, arm_ids: Sequence[str], xs: np.ndarray, rewards: np.ndarray) -> None:
        raise NotImplementedError

    def _arm_shapes(self) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def _arm_blocks(self, row: int) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def _set_arm(self, row: int, *blocks: np.ndarray) -> None:
        raise NotImplementedError

    def score(self, contexts: np.ndarray, arm_ids: Sequence[str]) -> np.ndarray:
        """Upper confidence bound of every candidate [C]."""
        mean, width = self.mean_and_width(contexts, arm_ids)
        return mean + self.alpha * width

    def select(
        self, contexts: np.ndarray, arm_ids: Sequence[str], k: int, explore_slots: int
    ) -> SlateDecision:
        """Slate of ``k`` items from candidates ``arm_ids`` [C] (upstream order) with features
        ``contexts`` [C, dim]. Raises ``PolicyInputError`` subclasses on bad input (k > C included)."""
        x = check_select_args(contexts, arm_ids, k, explore_slots, self.dim, check_finite=False)
        return self._select_full(x, arm_ids, k, explore_slots)

    def _select_full(
        self, x: np.ndarray, arm_ids: Sequence[str], k: int, explore_slots: int
    ) -> SlateDecision:
        """``select`` on validated shapes: score every candidate, then assemble the slate."""
        score = self.score(x, arm_ids)
        if not np.isfinite(score).all():
            check_finite_contexts(x, arm_ids)  # NaN/inf input -> NonFiniteInputError
        return self._slate(arm_ids, score, k, explore_slots)

    def update(self, arm_id: str, x: np.ndarray, reward: float) -> None:
        """Add one observation (features x [dim], reward) to ``arm_id``."""
        self.update_batch([arm_id], check_vector(x, self.dim)[None, :], np.array([reward], dtype=float))

    def arm_hash(self, arm_id: str) -> dict[str, bytes]:
        """Redis hash of one arm: ``format``, ``dim``, ``n`` and ``state`` = the arm's blocks
        (float32; LinUCB: A^{-1} then b)."""
        row = self._arms.rows([arm_id])[0]
        return state_hash(self.kind, self.dim, int(self._arms.counts[row]), *self._arm_blocks(row))

    def load_arm(self, arm_id: str, mapping: Mapping[bytes | str, bytes | str]) -> bool:
        """Install an arm's statistics; a corrupted hash resets the arm to the prior (logged
        warning) and returns False. An empty mapping (no key in Redis) changes nothing: True.
        The same hash as the last one loaded for this arm (count and state bytes; every Redis
        update changes both) is not decoded again."""
        if not mapping:
            return True
        row = self._arms.row(arm_id)
        try:
            fields = state_fields(mapping, self.kind, self.dim)
            seen = (fields["n"], hash(bytes(fields["state"])))
            if self._arms.loaded.get(row) == seen:
                return True
            blocks = decode_state(fields["state"], self._arm_shapes(), symmetric=[0])
        except CorruptStateError as exc:
            log.warning("bandit state of arm %r is corrupted, reset to the prior: %s", arm_id, exc)
            self._arms.reset(row)
            return False
        self._set_arm(row, *blocks)
        self._arms.counts[row] = fields["n"]
        self._arms.loaded[row] = seen
        return True

    def _pick_slots(self, score: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray]:
        """(chosen pool indices [s], propensities [s]) for the epsilon-mixed greedy rule."""
        return self._mix(top_indices(score, slots), score.shape[0], slots)

    def _mix(self, greedy: np.ndarray, m: int, slots: int) -> tuple[np.ndarray, np.ndarray]:
        """The epsilon mix over a pool of m items whose best ``slots`` (pool indices, best first)
        are ``greedy``: (chosen pool indices [s], propensities [s])."""
        if slots >= m:
            return greedy, np.ones(slots)
        if self._explores():
            return self._uniform_slots(greedy, m, slots)
        return greedy, np.full(slots, self._greedy_propensity(m, slots))

    def _explores(self) -> bool:
        """The epsilon coin of one decision: True = fill the slots uniformly at random."""
        return self.epsilon > 0 and self._rng.random() < self.epsilon

    def _greedy_propensity(self, m: int, slots: int) -> float:
        """P(a greedy pick is served) = 1 - epsilon + epsilon * slots / m."""
        return 1.0 - self.epsilon + self.epsilon * slots / m

    def _uniform_slots(self, greedy: np.ndarray, m: int, slots: int) -> tuple[np.ndarray, np.ndarray]:
        """The random branch: ``slots`` distinct pool items, uniformly; (pool indices, propensities)."""
        chosen = self._rng.choice(m, size=slots, replace=False)
        top = set(greedy.tolist())
        uniform = self.epsilon * slots / m
        props = [uniform + (1.0 - self.epsilon) * (c in top) for c in chosen.tolist()]
        return chosen, np.asarray(props)

    def _slate(
        self, arm_ids: Sequence[str], score: np.ndarray, k: int, slots: int, pick: _Picker | None = None
    ) -> SlateDecision:
        """Fixed positions, then the slots chosen by ``pick(pool_scores, slots)``."""
        fixed = k - slots
        if slots:
            chosen, p = (pick or self._pick_slots)(score[fixed:], slots)
            order, props = np.arange(k), np.ones(k)
            order[fixed:] = fixed + chosen
            props[fixed:] = p
        else:
            order, props = np.arange(k), np.ones(k)
        return SlateDecision(
            [arm_ids[i] for i in order.tolist()], score[order], props, explored_mask(k, fixed)
        )


class LinUCB(_LinearSlatePolicy):
    """Disjoint LinUCB over a slate.

    dim: feature dimension d; alpha: width of the confidence bonus (0 = greedy on the mean);
    epsilon: probability of a uniformly random exploration set (see the module docstring);
    ridge: prior precision lambda (A starts at lambda*I); seed: random generator seed.
    """

    name = "linucb"
    kind = "linucb"

    def __init__(
        self,
        dim: int,
        alpha: float = 1.0,
        epsilon: float = 0.05,
        ridge: float = 1.0,
        seed: int | None = None,
    ):
        super().__init__(dim, alpha, epsilon, ridge, seed)
        # m32[row] = [A^{-1}; theta^T] as float32 [d + 1, d]: the block the scoring kernels read.
        m32 = np.vstack([np.eye(dim) / ridge, np.zeros((1, dim))]).astype(np.float32)
        # lmax[row]: largest eigenvalue of A^{-1} (NaN = not computed since the arm changed), the
        # score bound that lets ``select`` skip most pool items (``kernels.disjoint_top``).
        self._arms = _ArmRows(
            {
                "ainv": np.eye(dim) / ridge,
                "b": np.zeros(dim),
                "m32": m32,
                "theta32": np.zeros(dim, dtype=np.float32),  # = m32[:, dim], compact for bounds
                "lmax": np.array(1.0 / ridge),
            }
        )

        self.prune = True
        self.pool_scored = -1  # pool items the last pruned select scored exactly (-1: none yet)

    @property
    def arm_ids(self) -> list[str]:
        """Arms with statistics (updated or loaded)."""
        return list(self._arms.index)

    def mean_and_width(self, contexts: np.ndarray, arm_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean theta_a.x [C] and sqrt(x^T A_a^{-1} x) [C] of every candidate (one
        fused pass over the arms' float32 ``[A^{-1}; theta^T]`` blocks, ``kernels``)."""
        rows = self._arms.rows(arm_ids)
        mean, var = np.empty(rows.shape[0]), np.empty(rows.shape[0])
        kernels.disjoint_mean_var(self._arms.arrays["m32"], rows, contexts, mean, var)
        return mean, np.sqrt(np.maximum(var, 0.0))

    def score(self, contexts: np.ndarray, arm_ids: Sequence[str]) -> np.ndarray:
        """Upper confidence bound theta_a.x + alpha * sqrt(x^T A_a^{-1} x) of every candidate [C]
        (the kernel writes it directly)."""
        out = np.empty(len(arm_ids))
        kernels.disjoint_ucb(self._arms.arrays["m32"], self._arms.rows(arm_ids), contexts, self.alpha, out)
        return out

    def _set_arm(self, row: int, ainv: np.ndarray, b: np.ndarray) -> None:
        m32 = self._arms.arrays["m32"][row]
        m32[: self.dim] = ainv
        m32[self.dim] = ainv @ b
        self._arms.set(row, ainv=ainv, b=b, theta32=m32[self.dim], lmax=np.nan)

    def _refresh_lmax(self, rows: np.ndarray) -> None:
        """lambda_max(A^{-1}) of the given arm rows whose arm changed since it was last computed
        (NaN), in one batch, with a relative margin of 1e-6 for the eigensolver's rounding."""
        lmax = self._arms.arrays["lmax"]
        stale = np.unique(rows[np.isnan(lmax[rows])])
        if stale.size:
            top = np.linalg.eigvalsh(self._arms.arrays["ainv"][stale])[:, -1]
            lmax[stale] = np.maximum(top, 0.0) * (1.0 + 1e-6) + 1e-12

    def select(
        self, contexts: np.ndarray, arm_ids: Sequence[str], k: int, explore_slots: int
    ) -> SlateDecision:
        """As ``_LinearSlatePolicy.select``; the exploration slots are found with
        ``kernels.disjoint_top`` (exact top UCBs, most pool items only bounded) instead of scoring
        the whole pool: the same slate, scores and propensities (``prune = False``: the full
        computation, for comparison)."""
        x = check_select_args(
            contexts, arm_ids, k, explore_slots, self.dim, check_finite=False, check_distinct=False
        )
        fixed, m = k - explore_slots, len(arm_ids) - (k - explore_slots)
        if not self.prune or type(self) is not LinUCB or not 0 < explore_slots < m:
            check_distinct_ids(arm_ids)
            return self._select_full(x, arm_ids, k, explore_slots)
        rows = self._arms.rows(arm_ids)
        arr = self._arms.arrays
        score = np.empty(rows.shape[0])
        top = np.empty(explore_slots, dtype=np.intp)
        unknown = np.empty(rows.shape[0], dtype=np.intp)
        args = (x, self.alpha, fixed, explore_slots, score, top, unknown)
        status, n_unknown = kernels.disjoint_top(arr["m32"], arr["theta32"], arr["lmax"], rows, *args)
        if status == kernels.TOP_STALE:
            self._refresh_lmax(rows)
            status, n_unknown = kernels.disjoint_top(arr["m32"], arr["theta32"], arr["lmax"], rows, *args)
        if status == kernels.TOP_DUPLICATE or (
            n_unknown > 1 and len(set(map(arm_ids.__getitem__, unknown[:n_unknown].tolist()))) < n_unknown
        ):
            check_distinct_ids(arm_ids)  # raises PolicyInputError
            return self._select_full(x, arm_ids, k, explore_slots)  # not reached: equal rows = equal ids
        if status == kernels.TOP_NONFINITE:
            check_finite_contexts(x, arm_ids)  # NaN/inf input -> NonFiniteInputError
            return self._select_full(x, arm_ids, k, explore_slots)  # finite input, overflowing scores
        self.pool_scored = status
        order, props = np.arange(k), np.ones(k)
        if self._explores():  # the epsilon branch: random pool items, maybe not scored yet
            chosen, props[fixed:] = self._uniform_slots(top - fixed, m, explore_slots)
            order[fixed:] = fixed + chosen
            missing = order[np.isnan(score[order])]
            extra = np.empty(missing.size)
            kernels.disjoint_ucb(arr["m32"], rows[missing], x[missing], self.alpha, extra)
            score[missing] = extra
        else:
            order[fixed:] = top
            props[fixed:] = self._greedy_propensity(m, explore_slots)
        return SlateDecision(
            [arm_ids[i] for i in order.tolist()], score[order], props, explored_mask(k, fixed)
        )

    def update_batch(self, arm_ids: Sequence[str], xs: np.ndarray, rewards: np.ndarray) -> None:
        """Add observations in order: arm_ids [N], xs [N, d], rewards [N]."""
        x, r = check_update_args(arm_ids, xs, rewards, self.dim)
        arr = self._arms.arrays
        for arm_id, xi, ri in zip(arm_ids, x, r, strict=True):
            row = self._arms.row(arm_id)
            ainv = _sherman_morrison(arr["ainv"][row], xi)
            b = arr["b"][row] + ri * xi
            self._set_arm(row, ainv, b)
            self._arms.counts[row] += 1

    def a_inverse(self, arm_id: str) -> np.ndarray:
        """A_a^{-1} [d, d] of an arm (the prior's for an unknown arm)."""
        return self._arms.arrays["ainv"][self._arms.rows([arm_id])[0]].copy()

    def _arm_shapes(self) -> list[tuple[int, ...]]:
        return [(self.dim, self.dim), (self.dim,)]

    def _arm_blocks(self, row: int) -> tuple[np.ndarray, ...]:
        return self._arms.arrays["ainv"][row], self._arms.arrays["b"][row]


class LinTS(LinUCB):
    """Linear Thompson sampling on the disjoint LinUCB posterior.

    Per decision every candidate draws ``theta_a.x + v * sqrt(x^T A_a^{-1} x) * N(0, 1)`` (the
    exact marginal of x^T theta~ for theta~ ~ N(theta_a, v^2 A_a^{-1}), independent across arms);
    the highest draws in the pool take the exploration slots. Propensity = Monte Carlo
    P(item in the slots) over ``n_draws`` draws (floored at 1/n_draws for a served item), mixed
    with ``epsilon`` exactly as LinUCB (default 0: Thompson already randomises). ``v`` is kept
    as ``alpha``; the inherited ``score`` is the deterministic mean + v * width.

    The Monte Carlo noise comes from a bank of N(0, 1) samples [n_draws, >= 4 * pool] (float32):
    each decision reads a window of pool-size columns at a random offset and redraws 1/8 of a
    pool's worth of columns, so the whole bank is renewed every few dozen decisions and no
    decision pays for 200 x pool normal draws (~0.3 ms). Within one decision every item has its
    own independent column, so the estimate stays an unbiased Monte Carlo estimate; decisions
    close in time share noise (correlated estimation errors). The draw that fills the slots is
    fresh on every decision.
    """

    name = "lints"

    def __init__(
        self,
        dim: int,
        v: float = 1.0,
        epsilon: float = 0.0,
        ridge: float = 1.0,
        seed: int | None = None,
        n_draws: int = 200,
    ):
        super().__init__(dim, alpha=v, epsilon=epsilon, ridge=ridge, seed=seed)
        if n_draws < 1:
            raise PolicyInputError(f"n_draws must be >= 1, got {n_draws}")
        self.n_draws = n_draws
        self._bank = np.empty((n_draws, 0), dtype=np.float32)
        self._bank_pos = 0

    def _noise(self, m: int) -> np.ndarray:
        """N(0, 1) noise [n_draws, m] (a read-only view into the bank)."""
        cols = self._bank.shape[1]
        if cols < 4 * m:
            cols = max(1024, 4 * m)
            self._bank = self._rng.standard_normal((self.n_draws, cols), dtype=np.float32)
            self._bank_pos = 0
        else:
            r = max(1, m // 8)
            j = self._bank_pos
            self._bank[:, j : j + r] = self._rng.standard_normal(
                (self.n_draws, min(r, cols - j)), dtype=np.float32
            )
            self._bank_pos = (j + r) % cols if j + r < cols else 0
        start = int(self._rng.integers(0, cols - m + 1))
        return self._bank[:, start : start + m]

    def share_state(self, other: LinUCB) -> None:
        """Use ``other``'s arm statistics (same object: updates and loads through either policy
        are seen by both). Dimension and ridge must match."""
        if (other.dim, other.ridge) != (self.dim, self.ridge):
            raise PolicyInputError(
                f"cannot share state: dim/ridge ({other.dim}, {other.ridge}) != ({self.dim}, {self.ridge})"
            )
        self._arms = other._arms

    def select(
        self, contexts: np.ndarray, arm_ids: Sequence[str], k: int, explore_slots: int
    ) -> SlateDecision:
        x = check_select_args(contexts, arm_ids, k, explore_slots, self.dim, check_finite=False)
        mean, width = self.mean_and_width(x, arm_ids)
        if not (np.isfinite(mean).all() and np.isfinite(width).all()):
            check_finite_contexts(x, arm_ids)
        draw = mean + self.alpha * width * self._rng.standard_normal(mean.shape[0])
        fixed = k - explore_slots

        def pick(score: np.ndarray, slots: int) -> tuple[np.ndarray, np.ndarray]:
            return self._pick_thompson(score, mean[fixed:], width[fixed:], slots)

        return self._slate(arm_ids, draw, k, explore_slots, pick)

    def _pick_thompson(
        self, score: np.ndarray, mean: np.ndarray, width: np.ndarray, slots: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top draws of the pool (or an epsilon-uniform set) and Monte Carlo inclusion propensities."""
        m = score.shape[0]
        if slots >= m:
            return np.argsort(-score, kind="stable"), np.ones(m)
        if self._explores():
            chosen = self._rng.choice(m, size=slots, replace=False)
        else:
            chosen = top_indices(score, slots)
        counts = np.zeros(m, dtype=np.int64)
        w32, m32 = (self.alpha * width).astype(np.float32), mean.astype(np.float32)
        kernels.top_inclusion(self._noise(m), m32, w32, slots, counts)
        inclusion = counts / self.n_draws
        p_ts = np.maximum(inclusion[chosen], 1.0 / self.n_draws)
        return chosen, (1.0 - self.epsilon) * p_ts + self.epsilon * slots / m


class HybridLinUCB(_LinearSlatePolicy):
    """Hybrid LinUCB (Li et al. 2010, Algorithm 2): shared coefficients beta over features z
    plus per-arm theta_a over features x.

    Each context row is ``[z | x]``: the first ``shared_dim`` columns are z, the remaining
    ``dim - shared_dim`` are x. With ``shared_dim=None`` z and x are both the whole row (the
    shared part learns what generalises across arms, the per-arm part the residual).
    Per-arm ``A_a^{-1}`` uses Sherman-Morrison; ``A0`` receives a rank-<=2 update per reward and
    its k x k inverse is refreshed once per ``update_batch`` call, never when deciding.
    """

    name = "linucb-hybrid"
    kind = "linucb-hybrid"

    def __init__(
        self,
        dim: int,
        shared_dim: int | None = None,
        alpha: float = 1.0,
        epsilon: float = 0.05,
        ridge: float = 1.0,
        seed: int | None = None,
    ):
        super().__init__(dim, alpha, epsilon, ridge, seed)
        if shared_dim is not None and not 1 <= shared_dim < dim:
            raise PolicyInputError(f"shared_dim must be in [1, dim-1] or None, got {shared_dim} (dim={dim})")
        self.shared_dim = shared_dim
        self.k_dim = dim if shared_dim is None else shared_dim
        self.d_dim = dim if shared_dim is None else dim - shared_dim
        kd, dd = self.k_dim, self.d_dim
        self.a0 = np.eye(kd) * ridge
        self.a0inv = np.eye(kd) / ridge
        self.b0 = np.zeros(kd)
        self.beta = np.zeros(kd)
        self._a0inv32 = self.a0inv.astype(np.float32)
        self._beta32 = self.beta.astype(np.float32)
        # The decision path reads float32 A_a^{-1}, M_a = A_a^{-1} B_a and h_a = A_a^{-1} b_a
        # (``kernels.hybrid_mean_var``); updates work on float64 A_a^{-1}, B_a, b_a.
        self._arms = _ArmRows(
            {
                "ainv": np.eye(dd) / ridge,
                "B": np.zeros((dd, kd)),
                "b": np.zeros(dd),
                "M32": np.zeros((dd, kd), dtype=np.float32),
                "h32": np.zeros(dd, dtype=np.float32),
            },
            mirror=("ainv",),
        )

    def _split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.shared_dim is None:
            return x, x
        return x[..., : self.shared_dim], x[..., self.shared_dim :]

    def mean_and_width(self, contexts: np.ndarray, arm_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Predicted reward z.beta + x.theta_a [C] and the confidence width sqrt(s) [C]."""
        z, x = self._split(contexts)
        rows = self._arms.rows(arm_ids)
        arr = self._arms.arrays
        mean, var = np.empty(rows.shape[0]), np.empty(rows.shape[0])
        kernels.hybrid_mean_var(
            arr["ainv32"], arr["M32"], arr["h32"], rows, z, x, self._a0inv32, self._beta32, mean, var
        )
        return mean, np.sqrt(np.maximum(var, 0.0))

    def update_batch(self, arm_ids: Sequence[str], xs: np.ndarray, rewards: np.ndarray) -> None:
        """Add observations in order: arm_ids [N], xs [N, dim] (rows [z | x]), rewards [N]."""
        feats, r = check_update_args(arm_ids, xs, rewards, self.dim)
        arr = self._arms.arrays
        for arm_id, row_x, ri in zip(arm_ids, feats, r, strict=True):
            z, x = self._split(row_x)
            row = self._arms.row(arm_id)
            ainv, bmat, b = arr["ainv"][row], arr["B"][row], arr["b"][row]
            d_a0, d_b0 = hybrid_shared_delta(ainv, bmat, b, z, x, ri)
            self.a0 += d_a0
            self.b0 += d_b0
            self._set_arm(row, _sherman_morrison(ainv, x), bmat + np.outer(x, z), b + ri * x)
            self._arms.counts[row] += 1
        self.a0 = 0.5 * (self.a0 + self.a0.T)
        self._refresh_shared()

    def _refresh_shared(self) -> None:
        self.a0inv = np.linalg.inv(self.a0)
        self.a0inv = 0.5 * (self.a0inv + self.a0inv.T)
        self.beta = self.a0inv @ self.b0
        self._a0inv32 = self.a0inv.astype(np.float32)
        self._beta32 = self.beta.astype(np.float32)

    def shared_hash(self) -> dict[str, bytes]:
        """Redis hash of the shared statistics: ``state`` = A0 then b0 (float32)."""
        return state_hash(f"{self.kind}-shared", self.k_dim, 0, self.a0, self.b0)

    def load_shared(self, mapping: Mapping[bytes | str, bytes | str]) -> bool:
        """Install A0, b0; corrupted (or not positive definite) -> reset shared stats, False."""
        if not mapping:
            return True
        kd = self.k_dim
        try:
            fields = state_fields(mapping, f"{self.kind}-shared", kd)
            a0, b0 = decode_state(fields["state"], [(kd, kd), (kd,)], symmetric=[0])
            if np.linalg.eigvalsh(a0).min() <= 0:
                raise CorruptStateError("A0 is not positive definite")
        except CorruptStateError as exc:
            log.warning("hybrid LinUCB shared state is corrupted, reset to the prior: %s", exc)
            a0, b0 = np.eye(kd) * self.ridge, np.zeros(kd)
            ok = False
        else:
            ok = True
        self.a0, self.b0 = a0, b0
        self._refresh_shared()
        return ok

    def _arm_shapes(self) -> list[tuple[int, ...]]:
        """A_a^{-1}, B_a, b_a."""
        dd, kd = self.d_dim, self.k_dim
        return [(dd, dd), (dd, kd), (dd,)]

    def _arm_blocks(self, row: int) -> tuple[np.ndarray, ...]:
        arr = self._arms.arrays
        return arr["ainv"][row], arr["B"][row], arr["b"][row]

    def _set_arm(self, row: int, ainv: np.ndarray, bmat: np.ndarray, b: np.ndarray) -> None:
        self._arms.set(row, ainv=ainv, B=bmat, b=b, M32=ainv @ bmat, h32=ainv @ b)


def check_vector(x: np.ndarray, dim: int, name: str = "x") -> np.ndarray:
    """A finite float64 vector [dim] or ``FeatureSizeError`` / ``NonFiniteInputError``."""
    v = np.asarray(x, dtype=np.float64)
    if v.shape != (dim,):
        raise FeatureSizeError(f"{name} must have shape ({dim},), got {tuple(v.shape)}")
    if not np.isfinite(v).all():
        raise NonFiniteInputError(f"{name} contains NaN or inf")
    return v
