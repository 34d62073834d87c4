"""Off-policy evaluation of *learning* policies (LinUCB, LinTS, hybrid LinUCB, Thompson) by replay.

A policy that learns from its own rewards has no fixed action distribution, so IPS/SNIPS/DR over
a ``TargetPolicy`` do not apply. The replay method (Li et al., WSDM 2011) runs the policy through
the log in order: at every record it chooses among all of the log's actions; when the choice
equals the logged action the record is *accepted*, its reward counts and the policy is updated
with it; otherwise the record is skipped and the policy sees nothing. With a uniformly random
logging policy the accepted stream has the distribution the policy would have met online, and the
mean accepted reward estimates its online value.

Non-uniform logging. Replay is biased when some actions were logged more often than others. Each
match is therefore accepted with probability ``p_min / p_i`` (rejection sampling, Dudik et al.,
UAI 2012), where ``p_i`` is the logged propensity and ``p_min`` the smallest propensity in the
log: the accepted records are then as if logged uniformly. Uniform logs accept every match; a
log with very small propensities accepts few records (``n_effective`` says how many).

Features. Contextual policies score action a at record i with ``x = [1, contexts[i, a]]`` when
the log has one context value per action (the Open Bandit Dataset's user-item affinities),
otherwise ``x = [1]`` (a per-action mean model). Records are taken in file order, one per
(impression, position).

Specs: ``linucb[:alpha=A,ridge=R]``, ``lints[:v=V,ridge=R]``, ``linucb-hybrid[:alpha=A]``,
``thompson[:prior_alpha=A,prior_beta=B]``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from recstack.exploration import CONTEXTUAL_POLICIES, THOMPSON
from recstack.exploration.linucb import HybridLinUCB, LinTS, LinUCB
from recstack.exploration.ope.data import LoggedBandit, OPEError
from recstack.exploration.ope.estimators import Estimate, ratio_estimate
from recstack.exploration.thompson import ThompsonSlatePolicy

LEARNING_POLICIES = (*CONTEXTUAL_POLICIES, THOMPSON)
_PARAMS = {
    "linucb": {"alpha": 1.0, "ridge": 1.0},
    "lints": {"v": 1.0, "ridge": 1.0},
    "linucb-hybrid": {"alpha": 1.0, "ridge": 1.0},
    "thompson": {"prior_alpha": 1.0, "prior_beta": 1.0},
}


def parse_spec(spec: str) -> tuple[str, dict[str, float]]:
    """``name[:key=value,...]`` -> (name, parameters with defaults); ``OPEError`` naming the bad part."""
    name, _, args = spec.partition(":")
    if name not in _PARAMS:
        raise OPEError(f"unknown learning policy {name!r}; use one of {', '.join(LEARNING_POLICIES)}")
    params = dict(_PARAMS[name])
    for part in filter(None, args.split(",")):
        key, sep, value = part.partition("=")
        if not sep or key not in params:
            raise OPEError(f"{name}: unknown parameter {part!r}; allowed: {', '.join(params)}")
        try:
            params[key] = float(value)
        except ValueError:
            raise OPEError(f"{name}: parameter {key} must be a number, got {value!r}") from None
        if (
            not np.isfinite(params[key])
            or params[key] < 0
            or (key != "alpha" and key != "v" and params[key] == 0)
        ):
            raise OPEError(
                f"{name}: parameter {key} must be a finite number > 0 (alpha, v >= 0), got {value}"
            )
    return name, params


def _features(data: LoggedBandit) -> Callable[[int], np.ndarray]:
    """Record index -> per-action features [A, d] (see the module docstring)."""
    a = data.n_actions
    if data.contexts is not None and data.contexts.shape[1] == a:
        ctx = data.contexts

        def per_action(i: int) -> np.ndarray:
            return np.column_stack((np.ones(a), ctx[i]))

        return per_action
    ones = np.ones((a, 1))
    return lambda i: ones


def replay_learning(
    data: LoggedBandit,
    spec: str,
    *,
    seed: int = 0,
    ci: str = "normal",
    level: float = 0.95,
    n_boot: int = 2000,
) -> Estimate:
    """Replay estimate of the learning policy ``spec`` on ``data`` (see the module docstring).

    ``n`` is the number of records, ``n_effective`` the number accepted; no accepted record ->
    value NaN."""
    name, params = parse_spec(spec)
    rng = np.random.default_rng(seed)
    arms = list(data.action_ids)
    features = _features(data)
    p_min = float(data.propensities.min())
    accept_prob = p_min / data.propensities
    accepted = np.zeros(data.n)
    if name == "thompson":
        policy = ThompsonSlatePolicy(1, params["prior_alpha"], params["prior_beta"], seed=seed)
        beta_arms: dict[str, tuple[float, float]] = {}
        zeros = np.zeros(len(arms))
        for i in range(data.n):
            chosen = policy.select(arms, zeros, 1, beta_arms, explore_slots=1).items[0]
            if chosen != arms[data.actions[i]] or rng.random() >= accept_prob[i]:
                continue
            accepted[i] = 1.0
            s, f = beta_arms.get(chosen, (params["prior_alpha"], params["prior_beta"]))
            beta_arms[chosen] = (s + data.rewards[i], f + 1.0 - data.rewards[i])
    else:
        d = features(0).shape[1]
        if name == "linucb":
            linear = LinUCB(d, alpha=params["alpha"], epsilon=0.0, ridge=params["ridge"], seed=seed)
        elif name == "lints":
            linear = LinTS(d, v=params["v"], ridge=params["ridge"], seed=seed)
        else:
            linear = HybridLinUCB(d, alpha=params["alpha"], epsilon=0.0, ridge=params["ridge"], seed=seed)
        for i in range(data.n):
            x = features(i)
            chosen = linear.select(x, arms, 1, 1).items[0]
            a = data.actions[i]
            if chosen != arms[a] or rng.random() >= accept_prob[i]:
                continue
            accepted[i] = 1.0
            linear.update(chosen, x[a], float(data.rewards[i]))
    matched = float(accepted.sum())
    if matched == 0:
        nan = float("nan")
        return Estimate("replay", nan, nan, nan, ci, level, data.n, 0.0)
    return ratio_estimate("replay", data.rewards, accepted, ci, level, n_boot, seed, matched)
