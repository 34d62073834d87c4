"""The contract of every slate policy (Thompson, LinUCB, hybrid LinUCB, LinTS): ``SlatePolicy``.

A policy sees the upstream ranking of one request (item ids, best first, [C]) plus what it
learns from: Beta arm statistics (``ThompsonSlatePolicy.select(candidates, scores, k, arms)``) or
one feature row per candidate (``ContextualSlatePolicy.select(contexts, arm_ids, k,
explore_slots)``). Every policy returns a ``SlateDecision``: the first ``k - explore_slots``
positions keep the upstream order (propensity 1.0), the last ``explore_slots`` positions are
chosen by the policy from the remaining candidates. ``recstack.exploration.explorer.Explorer``
gathers each policy's inputs and is what the services call.

Propensity of an explored item = the probability that the policy puts that item into the
exploration slots (set membership, not a particular slot); off-policy estimators divide by it.

Errors, one hierarchy: invalid input is a ``PolicyInputError`` (a ``ValueError``; ``PolicyError``
is the same class) or one of its subclasses, whose message names the argument; a corrupted
serialised state is ``CorruptStateError``, which the loading code turns into a reset to the prior
(``LinUCB.load_arm``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np


class PolicyInputError(ValueError):
    """Invalid input to a contextual policy; the message says which argument and why."""


PolicyError = PolicyInputError
"""The name ``recstack.exploration.thompson`` used for the same class."""


class FeatureSizeError(PolicyInputError):
    """A context or feature vector does not have the dimension the policy was built with."""


class NonFiniteInputError(PolicyInputError):
    """A context, reward or score contains NaN or infinity."""


class EmptyCandidatesError(PolicyInputError):
    """``select`` was called without candidates."""


class SlateSizeError(PolicyInputError):
    """``k`` or ``explore_slots`` is out of range (``k`` larger than the candidates included)."""


class CorruptStateError(ValueError):
    """Serialised arm statistics that cannot be trusted (wrong length, NaN, not symmetric, ...)."""


@dataclass(frozen=True)
class SlateDecision:
    """A served slate, in slate order.

    items: item ids [k]; scores: the policy's score of each served item [k] (the upstream
    rank order is kept for the fixed positions, their score is still the policy's);
    propensities: P(item served by the policy) [k], 1.0 for fixed positions;
    explored: True for the positions filled by the exploration slots [k].
    """

    items: list[str]
    scores: np.ndarray
    propensities: np.ndarray
    explored: np.ndarray

    @classmethod
    def empty(cls) -> SlateDecision:
        """The slate of a request without candidates."""
        return cls([], np.zeros(0), np.zeros(0), np.zeros(0, dtype=bool))

    @classmethod
    def of(
        cls,
        items: Sequence[str],
        scores: Sequence[float] | np.ndarray,
        propensities: Sequence[float],
        fixed: int,
    ) -> SlateDecision:
        """A slate whose first ``fixed`` positions keep the upstream order, the rest explored."""
        return cls(
            list(items),
            np.asarray(scores, dtype=np.float64),
            np.asarray(propensities, dtype=np.float64),
            explored_mask(len(items), fixed),
        )

    def __iter__(self):  # noqa: ANN204
        """Unpacks as ``items, scores, propensities = decision``."""
        return iter((self.items, self.scores, self.propensities))

    def __getitem__(self, i: int) -> Any:
        """``decision[0]`` items, ``[1]`` scores, ``[2]`` propensities (as unpacking)."""
        return (self.items, self.scores, self.propensities)[i]


def explored_mask(k: int, fixed: int) -> np.ndarray:
    """The ``explored`` mask of a slate: False for the ``fixed`` first positions, then True [k]."""
    mask = np.ones(k, dtype=bool)
    mask[:fixed] = False
    return mask


@runtime_checkable
class SlatePolicy(Protocol):
    """What every policy is: a ``name`` and a ``select(...)`` that returns a ``SlateDecision`` and
    raises ``PolicyInputError`` on invalid input. Its inputs depend on what the policy learns from
    (``ContextualSlatePolicy``; ``ThompsonSlatePolicy``)."""

    name: str

    def select(self, *args: Any, **kwargs: Any) -> SlateDecision: ...


@runtime_checkable
class ContextualSlatePolicy(SlatePolicy, Protocol):
    """A ``SlatePolicy`` over feature rows: ``LinUCB``, ``HybridLinUCB`` and ``LinTS``."""

    name: str
    dim: int

    def select(
        self, contexts: np.ndarray, arm_ids: Sequence[str], k: int, explore_slots: int
    ) -> SlateDecision: ...

    def update(self, arm_id: str, x: np.ndarray, reward: float) -> None: ...

    def update_batch(self, arm_ids: Sequence[str], xs: np.ndarray, rewards: np.ndarray) -> None: ...


def check_finite_contexts(x: np.ndarray, arm_ids: Sequence[str]) -> None:
    """``NonFiniteInputError`` naming the first row (and arm) of ``x`` [C, d] with NaN or inf."""
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise NonFiniteInputError(f"contexts contain NaN or inf (first at row {row}, arm {arm_ids[row]!r})")


def check_select_args(
    contexts: np.ndarray,
    arm_ids: Sequence[str],
    k: int,
    explore_slots: int,
    dim: int,
    check_finite: bool = True,
    check_distinct: bool = True,
) -> np.ndarray:
    """Validate a ``select`` call; returns the contexts as float64 [C, dim].

    Raises: EmptyCandidatesError (no candidates), FeatureSizeError (shape), NonFiniteInputError
    (NaN/inf), SlateSizeError (k < 1, k > C, explore_slots < 0 or > k), PolicyInputError
    (duplicate arm ids). ``check_finite=False`` leaves the NaN/inf scan to the caller: the
    linear policies check their scores instead (a NaN/inf context always gives a non-finite
    score, since A^{-1} has a positive diagonal) and call ``check_finite_contexts`` when one is;
    ``check_distinct=False`` leaves the duplicate check to the caller (``check_distinct_ids``).
    """
    n = len(arm_ids)
    if n == 0:
        raise EmptyCandidatesError("arm_ids is empty: select needs at least one candidate")
    x = np.asarray(contexts, dtype=np.float64)
    if x.ndim != 2 or x.shape != (n, dim):
        raise FeatureSizeError(
            f"contexts must have shape (len(arm_ids), dim) = ({n}, {dim}), got {tuple(x.shape)}"
        )
    if check_finite:
        check_finite_contexts(x, arm_ids)
    if k < 1:
        raise SlateSizeError(f"k must be >= 1, got {k}")
    if k > n:
        raise SlateSizeError(f"k={k} is larger than the number of candidates ({n}); pass k <= {n}")
    if explore_slots < 0 or explore_slots > k:
        raise SlateSizeError(f"explore_slots must be in [0, k={k}], got {explore_slots}")
    if check_distinct:
        check_distinct_ids(arm_ids)
    return x


def check_distinct_ids(arm_ids: Sequence[str]) -> None:
    """``PolicyInputError`` when an arm id appears twice."""
    if len(set(arm_ids)) != len(arm_ids):
        raise PolicyInputError("arm_ids must be distinct item ids")


def check_update_args(
    arm_ids: Sequence[str], xs: np.ndarray, rewards: np.ndarray, dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate an update batch; returns (xs float64 [N, dim], rewards float64 [N])."""
    x = np.asarray(xs, dtype=np.float64)
    r = np.asarray(rewards, dtype=np.float64)
    n = len(arm_ids)
    if x.ndim != 2 or x.shape != (n, dim):
        raise FeatureSizeError(f"xs must have shape (len(arm_ids), dim) = ({n}, {dim}), got {tuple(x.shape)}")
    if r.shape != (n,):
        raise FeatureSizeError(f"rewards must have shape ({n},), got {tuple(r.shape)}")
    if not (np.isfinite(x).all() and np.isfinite(r).all()):
        raise NonFiniteInputError("update got NaN or inf in xs or rewards")
    return x, r
