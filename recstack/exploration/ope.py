"""Off-policy evaluation of a target policy from logged bandit feedback.

Data model: one record per served (impression, position): logged action a_i (index into
``action_ids``), position p_i (0-based slot), reward r_i, logging propensity mu_i in (0, 1].
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

Log formats:
  recstack JSON lines, one impression per line::

    {"request_id": "r1", "user_id": "u1", "context": {...},
     "items": ["i3", "i9"], "positions": [0, 1], "propensities": [1.0, 0.02], "rewards": [0, 1]}

  items, positions, propensities and rewards are parallel lists (one entry per served item;
  propensity as in ``recstack.exploration.base``: 1.0 for fixed positions, P(in the
  exploration slots) for explored items; reward 0/1 or any finite number). ``context`` is the
  request's context (kept per record in ``raw_contexts``). ``read_recstack_log`` reads it.

  Open Bandit Dataset CSV (``read_obd_csv``): columns timestamp, item_id, position (1-based),
  click, propensity_score, user_feature_*, user-item_affinity_<item>; rows sorted by
  timestamp like obp; contexts = the user-item affinity columns [n, n_items].
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

ESTIMATORS = ("replay", "ips", "snips", "dr")


class OPEError(ValueError):
    """Invalid logged data or target policy; the message names the field and the fix."""


@dataclass(frozen=True)
class LoggedBandit:
    """Logged feedback, one row per served (impression, position).

    actions int [n] (index into ``action_ids``), rewards float [n], propensities float [n] in
    (0, 1], positions int [n] (0-based), action_ids [A], contexts float [n, d] or None,
    request_ids [n] or None, raw_contexts (one dict per record) or None.
    """

    actions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray
    positions: np.ndarray
    action_ids: list[str]
    contexts: np.ndarray | None = None
    request_ids: list[str] | None = None
    raw_contexts: list[dict] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = self.actions.shape[0]
        for name in ("rewards", "propensities", "positions"):
            if getattr(self, name).shape != (n,):
                raise OPEError(f"{name} must have shape ({n},), got {getattr(self, name).shape}")
        if n == 0:
            raise OPEError("the log has no records")
        if self.actions.min() < 0 or self.actions.max() >= len(self.action_ids):
            raise OPEError(f"actions must index action_ids (0..{len(self.action_ids) - 1})")
        if self.positions.min() < 0:
            raise OPEError("positions must be >= 0 (0-based)")
        if not np.isfinite(self.rewards).all():
            raise OPEError("rewards contain NaN or inf")
        p = self.propensities
        if not (np.isfinite(p).all() and (p > 0).all() and (p <= 1).all()):
            bad = int(np.flatnonzero(~(np.isfinite(p) & (p > 0) & (p <= 1)))[0])
            raise OPEError(f"propensities must be in (0, 1]; record {bad} has {p[bad]}")
        if self.contexts is not None and self.contexts.shape[0] != n:
            raise OPEError(f"contexts must have {n} rows, got {self.contexts.shape[0]}")

    @property
    def n(self) -> int:
        return int(self.actions.shape[0])

    @property
    def n_actions(self) -> int:
        return len(self.action_ids)

    @property
    def n_positions(self) -> int:
        return int(self.positions.max()) + 1


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
    return _ratio_estimate("snips", rewards, w, ci, level, n_boot, seed, _ess(w))


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
    return _ratio_estimate("replay", rewards, m, ci, level, n_boot, seed, float(matched))


def _mean_estimate(
    name: str, terms: np.ndarray, w: np.ndarray, ci: str, level: float, n_boot: int, seed: int
) -> Estimate:
    """An estimator that is the mean of per-record ``terms`` [n] (ips, dr); w: the weights [n]."""
    value = float(terms.mean())
    lo, hi = _interval(_mean_rows, [terms], value, terms, ci, level, n_boot, seed)
    return Estimate(name, value, lo, hi, ci, level, terms.shape[0], _ess(w))


def _ratio_estimate(
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


# ---------------------------------------------------------------- readers


def read_recstack_log(path: str | Path) -> LoggedBandit:
    """Read recstack's impression/reward JSON lines (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise OPEError(f"log file {path} does not exist")
    index: dict[str, int] = {}
    actions: list[int] = []
    positions: list[int] = []
    props: list[float] = []
    rewards: list[float] = []
    request_ids: list[str] = []
    contexts: list[dict] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OPEError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise OPEError(f"{path}:{lineno}: expected a JSON object")
            missing = [
                k for k in ("request_id", "items", "positions", "propensities", "rewards") if k not in rec
            ]
            if missing:
                raise OPEError(f"{path}:{lineno}: missing fields {missing}")
            items = rec["items"]
            cols = [rec["positions"], rec["propensities"], rec["rewards"]]
            if not isinstance(items, list) or any(
                not isinstance(c, list) or len(c) != len(items) for c in cols
            ):
                raise OPEError(
                    f"{path}:{lineno}: items, positions, propensities, rewards must be lists of equal length"
                )
            ctx = rec.get("context") or {}
            for item, pos, prop, rew in zip(items, *cols, strict=True):
                try:
                    pos_i, prop_f, rew_f = int(pos), float(prop), float(rew)
                except (TypeError, ValueError):
                    raise OPEError(
                        f"{path}:{lineno}: non-numeric position/propensity/reward for item {item!r}"
                    ) from None
                if not 0 < prop_f <= 1:
                    raise OPEError(f"{path}:{lineno}: propensity of {item!r} must be in (0, 1], got {prop}")
                actions.append(index.setdefault(str(item), len(index)))
                positions.append(pos_i)
                props.append(prop_f)
                rewards.append(rew_f)
                request_ids.append(str(rec["request_id"]))
                contexts.append(ctx)
    if not actions:
        raise OPEError(f"{path}: no impressions in the log")
    return LoggedBandit(
        actions=np.asarray(actions, dtype=np.int64),
        rewards=np.asarray(rewards, dtype=np.float64),
        propensities=np.asarray(props, dtype=np.float64),
        positions=np.asarray(positions, dtype=np.int64),
        action_ids=list(index),
        request_ids=request_ids,
        raw_contexts=contexts,
    )


OBD_REQUIRED = ("timestamp", "item_id", "position", "click", "propensity_score")


def read_obd_csv(path: str | Path, n_items: int | None = None) -> LoggedBandit:
    """Read an Open Bandit Dataset CSV (e.g. ``obd/random/all/all.csv``).

    Actions are the integer item ids 0..n_items-1 (``n_items`` defaults to the number of
    user-item_affinity columns, else max item_id + 1); positions = dense rank of ``position``
    minus 1 (as obp); rows stably sorted by timestamp.
    """
    path = Path(path)
    if not path.is_file():
        raise OPEError(f"OBD file {path} does not exist")
    df = pd.read_csv(path, index_col=0)
    missing = [c for c in OBD_REQUIRED if c not in df.columns]
    if missing:
        raise OPEError(f"{path}: not an Open Bandit Dataset CSV, missing columns {missing}")
    df = df.sort_values("timestamp", kind="stable")
    aff_cols = [c for c in df.columns if c.startswith("user-item_affinity_")]
    aff_cols.sort(key=lambda c: int(c.rsplit("_", 1)[1]))
    items = df["item_id"].to_numpy(dtype=np.int64)
    if n_items is None:
        n_items = len(aff_cols) or int(items.max()) + 1
    if items.min() < 0 or items.max() >= n_items:
        raise OPEError(f"{path}: item_id must be in 0..{n_items - 1}")
    positions = pd.Series(df["position"]).rank(method="dense").to_numpy(dtype=np.int64) - 1
    return LoggedBandit(
        actions=items,
        rewards=df["click"].to_numpy(dtype=np.float64),
        propensities=df["propensity_score"].to_numpy(dtype=np.float64),
        positions=positions,
        action_ids=[str(i) for i in range(n_items)],
        contexts=df[aff_cols].to_numpy(dtype=np.float64) if aff_cols else None,
    )


def read_log(path: str | Path, fmt: str = "auto") -> LoggedBandit:
    """``fmt``: ``recstack`` (JSON lines), ``obd`` (CSV) or ``auto`` (by suffix: .csv -> obd)."""
    if fmt == "auto":
        fmt = "obd" if str(path).endswith(".csv") else "recstack"
    if fmt == "recstack":
        return read_recstack_log(path)
    if fmt == "obd":
        return read_obd_csv(path)
    raise OPEError(f"log format must be recstack, obd or auto, got {fmt!r}")


# ---------------------------------------------------------------- target policies from a spec


def policy_from_spec(spec: str, data: LoggedBandit) -> TargetPolicy:
    """Build a target policy for the CLI.

    ``logged``           pi = the logging propensities (IPS then equals the on-policy mean)
    ``uniform``          uniform over the log's actions, per position
    ``best``             deterministic: per position the action with the highest
                         ``TabularRewardModel`` estimate (replay applies); chosen on the same
                         log, so its estimate is optimistic (selection bias)
    ``json:PATH``        context-free distribution from a JSON object {item_id: weight}
                         (normalised; items absent from it get 0), same for every position
    ``softmax:TEMP``     pi(a|i) proportional to exp(context[i, a] / TEMP); needs per-action
                         contexts [n, A] such as the OBD user-item affinities
    """
    name, _, arg = spec.partition(":")
    a, n_pos = data.n_actions, data.n_positions
    if name == "logged":
        dist = np.zeros((data.n, a))
        dist[np.arange(data.n), data.actions] = data.propensities
        # the remaining mass goes uniformly to the other actions so rows sum to 1
        rest = (1.0 - data.propensities) / max(a - 1, 1)
        dist += rest[:, None] * (dist == 0)
        return TargetPolicy(spec, dist)
    if name == "uniform":
        return TargetPolicy(spec, np.full((n_pos, a), 1.0 / a), per_position=True)
    if name == "best":
        q = TabularRewardModel().fit(data).q_table()
        dist = np.zeros((n_pos, a))
        dist[np.arange(n_pos), np.argmax(q, axis=1)] = 1.0
        return TargetPolicy(spec, dist, per_position=True)
    if name == "json":
        path = Path(arg)
        if not path.is_file():
            raise OPEError(f"policy file {path} does not exist")
        weights = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(weights, dict):
            raise OPEError(f"{path}: expected a JSON object item_id -> weight")
        row = np.array([float(weights.get(i, 0.0)) for i in data.action_ids])
        if not np.isfinite(row).all() or (row < 0).any() or row.sum() <= 0:
            raise OPEError(f"{path}: weights must be >= 0 with a positive sum over the log's items")
        return TargetPolicy(spec, np.tile(row / row.sum(), (n_pos, 1)), per_position=True)
    if name == "softmax":
        if data.contexts is None or data.contexts.shape[1] != a:
            raise OPEError("softmax:TEMP needs per-action contexts [n, n_actions] (OBD affinities)")
        try:
            temp = float(arg)
        except ValueError:
            raise OPEError(f"softmax:TEMP needs a number, got {arg!r}") from None
        if temp <= 0:
            raise OPEError(f"softmax temperature must be > 0, got {temp}")
        logits = data.contexts / temp
        logits = logits - logits.max(axis=1, keepdims=True)
        dist = np.exp(logits)
        return TargetPolicy(spec, dist / dist.sum(axis=1, keepdims=True))
    raise OPEError(
        f"unknown policy spec {spec!r}: use logged, uniform, best, json:PATH, softmax:TEMP, "
        "or a learning policy (linucb, lints, linucb-hybrid, thompson; replay only)"
    )


def run_ope(
    log: str | Path,
    policy: str,
    fmt: str = "auto",
    ci: str = "normal",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """What ``recstack ope --log LOG --policy SPEC`` prints: a JSON-ready dict."""
    from recstack.exploration.replay import LEARNING_POLICIES, replay_learning

    data = read_log(log, fmt)
    if policy.partition(":")[0] in LEARNING_POLICIES:  # learns from its rewards: replay only
        est = {"replay": replay_learning(data, policy, seed=seed, ci=ci, level=level, n_boot=n_boot)}
    else:
        est = evaluate(data, policy_from_spec(policy, data), ci=ci, level=level, n_boot=n_boot, seed=seed)
    return {
        "log": str(log),
        "policy": policy,
        "records": data.n,
        "actions": data.n_actions,
        "on_policy_mean_reward": float(data.rewards.mean()),
        "estimates": {k: v.to_dict() for k, v in est.items()},
    }
