"""Off-policy estimators of a target policy's value from a ``LoggedBandit``.

A target policy gives pi(a | record) for every record, of the same kind as the logged
propensity: for the Open Bandit Dataset the probability of the action in that record's position
(item-position model); for recstack logs the probability that the target puts the item in the
exploration slots (1.0 for a fixed position it keeps). Records at fixed positions (propensity
1.0) weigh like on-policy data.

Estimators (w_i = pi(a_i | i) / mu_i):
  replay  mean of r_i over records where a deterministic target picks a_i (Li et al. 2011);
          unbiased under uniform logging only, value NaN when nothing matches
  ips     mean(w_i r_i)
  snips   sum(w_i r_i) / sum(w_i)
  dr      mean(sum_a pi(a|i) q(i, a) + w_i (r_i - q(i, a_i))) with a reward model q
          (``TabularRewardModel``: per (position, action) mean reward shrunk toward the global
          mean, fitted on the same log)
Confidence intervals: ``normal`` (CLT on the per-record terms; delta method / influence
function for the ratio estimators replay and snips) or ``bootstrap`` (percentile interval of
the estimator recomputed on records resampled with replacement, seeded).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from recstack.exploration.ope.data import LoggedBandit, OPEError

ESTIMATORS = ("replay", "ips", "snips", "dr")


@dataclass(frozen=True)
class TargetPolicy:
    """pi(a | record). ``dist`` is [n, A] (one row per record, for the record's position) or
    [L, A] with ``per_position=True`` (context-free: one row per position). Rows sum to 1."""

    name: str
    dist: np.ndarray
    per_position: bool = False

    def prob_logged(self, data: LoggedBandit) -> np.ndarray:
        """pi(a_i | record i) [n]."""
        rows = data.positions if self.per_position else np.arange(data.n)
        return self.dist[rows, data.actions]

    def expectation(self, data: LoggedBandit, q_by_position: np.ndarray) -> np.ndarray:
        """sum_a pi(a | i) q(p_i, a) [n] for a reward table q [L, A]."""
        if self.per_position:
            return (self.dist[: q_by_position.shape[0]] * q_by_position).sum(axis=1)[data.positions]
        return np.einsum("na,na->n", self.dist, q_by_position[data.positions])

    def check(self, data: LoggedBandit) -> None:
        want = (data.n_positions if self.per_position else data.n, data.n_actions)
        d = self.dist
        if (
            d.ndim != 2
            or d.shape[1] != want[1]
            or d.shape[0] < want[0]
            or (not self.per_position and d.shape[0] != want[0])
        ):
            raise OPEError(f"target policy {self.name!r}: dist must have shape {want}, got {d.shape}")
        if not np.isfinite(d).all() or (d < 0).any():
            raise OPEError(f"target policy {self.name!r}: probabilities must be finite and >= 0")
        if not np.allclose(d.sum(axis=1), 1.0, atol=1e-6):
            raise OPEError(f"target policy {self.name!r}: each row of dist must sum to 1")


@dataclass(frozen=True)
class Estimate:
    """A policy value with a two-sided confidence interval at ``level``."""

    estimator: str
    value: float
    ci_low: float
    ci_high: float
    ci_method: str
    level: float
    n: int
    n_effective: float

    def to_dict(self) -> dict:
        return asdict(self)


class TabularRewardModel:
    """q(position, action) = (sum of rewards + shrinkage * global mean) / (count + shrinkage)."""

    def __init__(self, shrinkage: float = 1.0):
        if shrinkage < 0:
            raise OPEError(f"shrinkage must be >= 0, got {shrinkage}")
        self.shrinkage = shrinkage
        self.table: np.ndarray | None = None

    def fit(self, data: LoggedBandit) -> TabularRewardModel:
        shape = (data.n_positions, data.n_actions)
        sums = np.zeros(shape)
        counts = np.zeros(shape)
        np.add.at(sums, (data.positions, data.actions), data.rewards)
        np.add.at(counts, (data.positions, data.actions), 1.0)
        g = float(data.rewards.mean())
        with np.errstate(invalid="ignore"):
            self.table = np.where(
                counts + self.shrinkage > 0, (sums + self.shrinkage * g) / (counts + self.shrinkage), g
            )
        return self

    def q_table(self) -> np.ndarray:
        if self.table is None:
            raise OPEError("TabularRewardModel is not fitted: call fit(data) first")
        return self.table


def _interval(
    terms_fn,
    arrays: Sequence[np.ndarray],
    value: float,
    influence: np.ndarray,
    ci: str,
    level: float,
    n_boot: int,
    seed: int,
) -> tuple[float, float]:
    n = influence.shape[0]
    if ci == "normal":
        z = stats.norm.ppf(0.5 + level / 2)
        se = float(influence.std(ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
        return float(value - z * se), float(value + z * se)
    if ci == "bootstrap":
        rng = np.random.default_rng(seed)
        out = np.empty(n_boot)
        chunk = max(1, min(n_boot, 2_000_000 // max(n, 1)))
        for start in range(0, n_boot, chunk):
            b = min(chunk, n_boot - start)
            idx = rng.integers(0, n, size=(b, n))
            out[start : start + b] = terms_fn(*(a[idx] for a in arrays))
        tail = 100 * (1 - level) / 2
        lo, hi = np.nanpercentile(out, [tail, 100 - tail])
        return float(lo), float(hi)
    raise OPEError(f"ci must be 'normal' or 'bootstrap', got {ci!r}")


def _mean_rows(t: np.ndarray) -> np.ndarray:
    return t.mean(axis=-1)


def _ratio_rows(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return num.sum(axis=-1) / den.sum(axis=-1)


def _check_arrays(rewards: np.ndarray, propensities: np.ndarray, target_probs: np.ndarray) -> None:
    n = rewards.shape[0]
    if propensities.shape != (n,) or target_probs.shape != (n,):
        raise OPEError(
            f"rewards, propensities and target_probs must have the same length, got "
            f"{rewards.shape}, {propensities.shape}, {target_probs.shape}"
        )
    if n == 0:
        raise OPEError("no records to evaluate")
    if not ((propensities > 0) & (propensities <= 1)).all():
        raise OPEError("propensities must be in (0, 1]")
    if not (np.isfinite(target_probs).all() and (target_probs >= 0).all() and (target_probs <= 1).all()):
        raise OPEError("target_probs must be probabilities in [0, 1]")


def ips(
    rewards: np.ndarray,
    propensities: np.ndarray,
    target_probs: np.ndarray,
    *,
    ci: str = "normal",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    clip: float | None = None,
) -> Estimate:
    """Inverse propensity scoring; ``clip`` caps the weights (biased, lower variance)."""
    _check_arrays(rewards, propensities, target_probs)
    w = target_probs / propensities
    if clip is not None:
        w = np.minimum(w, clip)
    return _mean_estimate("ips", w * rewards, w, ci, level, n_boot, seed)


def snips(
    rewards: np.ndarray,
    propensities: np.ndarray,
    target_probs: np.ndarray,
    *,
    ci: str = "normal",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Self-normalised IPS: sum(w r) / sum(w)."""
    _check_arrays(rewards, propensities, target_probs)
    w = target_probs / propensities
    if w.sum() <= 0:
        raise OPEError("snips: the target policy gives probability 0 to every logged action")
    return ratio_estimate("snips", rewards, w, ci, level, n_boot, seed, _ess(w))


def doubly_robust(
    rewards: np.ndarray,
    propensities: np.ndarray,
    target_probs: np.ndarray,
    q_logged: np.ndarray,
    q_target: np.ndarray,
    *,
    ci: str = "normal",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Doubly robust: q_target_i + w_i (r_i - q_logged_i), q_logged = q(i, a_i) [n],
    q_target = sum_a pi(a|i) q(i, a) [n]."""
    _check_arrays(rewards, propensities, target_probs)
    if q_logged.shape != rewards.shape or q_target.shape != rewards.shape:
        raise OPEError("q_logged and q_target must have one value per record")
    w = target_probs / propensities
    return _mean_estimate("dr", q_target + w * (rewards - q_logged), w, ci, level, n_boot, seed)


def replay(
    rewards: np.ndarray,
    target_probs: np.ndarray,
    *,
    ci: str = "normal",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> Estimate:
    """Replay: mean reward of the records whose logged action the deterministic target picks.

    ``target_probs`` must be 0 or 1 (raises ``OPEError`` otherwise). No match -> value NaN."""
    if not np.isin(target_probs, (0.0, 1.0)).all():
        raise OPEError("replay needs a deterministic target (probabilities 0 or 1); use ips/snips/dr")
    m = target_probs.astype(np.float64)
    matched = int(m.sum())
    if matched == 0:
        nan = float("nan")
        return Estimate("replay", nan, nan, nan, ci, level, rewards.shape[0], 0.0)
    return ratio_estimate("replay", rewards, m, ci, level, n_boot, seed, float(matched))


def _mean_estimate(
    name: str, terms: np.ndarray, w: np.ndarray, ci: str, level: float, n_boot: int, seed: int
) -> Estimate:
    """An estimator that is the mean of per-record ``terms`` [n] (ips, dr); w: the weights [n]."""
    value = float(terms.mean())
    lo, hi = _interval(_mean_rows, [terms], value, terms, ci, level, n_boot, seed)
    return Estimate(name, value, lo, hi, ci, level, terms.shape[0], _ess(w))


def ratio_estimate(
    name: str,
    rewards: np.ndarray,
    w: np.ndarray,
    ci: str,
    level: float,
    n_boot: int,
    seed: int,
    n_effective: float,
) -> Estimate:
    """The weighted mean sum(w r) / sum(w) (snips, replay) with its delta-method influence terms."""
    value = float((w * rewards).sum() / w.sum())
    influence = w * (rewards - value) / w.mean()
    lo, hi = _interval(_ratio_rows, [w * rewards, w], value, influence, ci, level, n_boot, seed)
    return Estimate(name, value, lo, hi, ci, level, rewards.shape[0], n_effective)


def _ess(w: np.ndarray) -> float:
    """Effective sample size (sum w)^2 / sum w^2 of the importance weights."""
    s2 = float((w * w).sum())
    return float(w.sum() ** 2 / s2) if s2 > 0 else 0.0


def evaluate(
    data: LoggedBandit,
    target: TargetPolicy,
    estimators: Sequence[str] = ESTIMATORS,
    reward_model: TabularRewardModel | None = None,
    ci: str = "normal",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Estimate]:
    """Run the named estimators. ``replay`` is skipped (absent from the result) for a
    stochastic target; ``dr`` fits a ``TabularRewardModel`` on ``data`` when none is given."""
    unknown = set(estimators) - set(ESTIMATORS)
    if unknown:
        raise OPEError(f"unknown estimators {sorted(unknown)}; choose from {ESTIMATORS}")
    target.check(data)
    p = target.prob_logged(data)
    r, mu = data.rewards, data.propensities
    kw = dict(ci=ci, level=level, n_boot=n_boot, seed=seed)
    out: dict[str, Estimate] = {}
    for name in estimators:
        if name == "replay":
            if np.isin(target.dist, (0.0, 1.0)).all():
                out[name] = replay(r, p, **kw)
        elif name == "ips":
            out[name] = ips(r, mu, p, **kw)
        elif name == "snips":
            out[name] = snips(r, mu, p, **kw)
        else:
            q = (reward_model or TabularRewardModel().fit(data)).q_table()
            out[name] = doubly_robust(
                r, mu, p, q[data.positions, data.actions], target.expectation(data, q), **kw
            )
    return out
