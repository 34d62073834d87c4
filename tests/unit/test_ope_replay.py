"""Replay evaluation of learning policies (recstack.exploration.ope.replay)."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.exploration.ope.data import LoggedBandit, OPEError
from recstack.exploration.ope.replay import parse_spec, replay_learning

MEANS = np.array([0.1, 0.2, 0.3, 0.4, 0.8])


def _log(
    n: int, probs: np.ndarray, seed: int = 0, contexts: np.ndarray | None = None, means: np.ndarray = MEANS
) -> LoggedBandit:
    """n records logged by a context-free policy with action probabilities ``probs``; rewards
    Bernoulli(means[a]) or, with per-action ``contexts`` [n, A], Bernoulli(contexts[i, a])."""
    rng = np.random.default_rng(seed)
    actions = rng.choice(len(probs), size=n, p=probs)
    means = means[actions] if contexts is None else contexts[np.arange(n), actions]
    return LoggedBandit(
        actions=actions,
        rewards=(rng.random(n) < means).astype(float),
        propensities=probs[actions],
        positions=np.zeros(n, dtype=int),
        action_ids=[f"a{j}" for j in range(len(probs))],
        contexts=contexts,
    )


@pytest.mark.parametrize("spec", ["linucb", "lints:v=0.5", "thompson", "linucb-hybrid"])
def test_learning_policies_replay_to_near_the_best_arm(spec: str) -> None:
    data = _log(20_000, np.full(5, 0.2))
    est = replay_learning(data, spec, seed=1)
    uniform = float(data.rewards.mean())
    assert uniform < 0.45
    # a learner that finds arm a4 (mean 0.8) quickly scores far above the logging policy
    assert 0.65 < est.value < 0.8 and est.ci_low < est.value < est.ci_high
    assert 3000 < est.n_effective < 6000  # about n / A matches under uniform logging


def test_rejection_sampling_removes_the_bias_of_non_uniform_logging() -> None:
    """The best arm a0 was logged 60 % of the time. Plain matching would accept ~60 % of the
    records once the learner prefers a0 (over-weighting whatever the learner did then); with
    rejection sampling every record is accepted with probability p_min = 0.1 whatever the learner
    chooses, as under uniform logging, and the value matches a uniform log's."""
    skewed = np.array([0.6, 0.1, 0.1, 0.1, 0.1])
    means = MEANS[::-1].copy()  # a0 is the best arm
    n = 30_000
    uniform_est = replay_learning(_log(n, np.full(5, 0.2), seed=2, means=means), "thompson", seed=3)
    skewed_est = replay_learning(_log(n, skewed, seed=4, means=means), "thompson", seed=3)
    assert abs(skewed_est.n_effective - 0.1 * n) < 0.1 * 0.1 * n
    assert abs(skewed_est.value - uniform_est.value) < 0.05


def test_linucb_uses_per_action_contexts() -> None:
    """Rewards follow a per-record affinity: LinUCB on [1, affinity] beats context-free Thompson."""
    rng = np.random.default_rng(5)
    n = 20_000
    affinity = rng.random((n, 5)) ** 3
    data = _log(n, np.full(5, 0.2), seed=6, contexts=affinity)
    linucb = replay_learning(data, "linucb:alpha=0.2", seed=7)
    thompson = replay_learning(data, "thompson", seed=7)
    assert linucb.value > thompson.value + 0.1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("ucb1", "unknown learning policy 'ucb1'"),
        ("linucb:beta=1", "unknown parameter 'beta=1'"),
        ("linucb:alpha=x", "alpha must be a number"),
        ("thompson:prior_alpha=0", "prior_alpha must be a finite number > 0"),
    ],
)
def test_bad_specs_name_the_problem(spec: str, message: str) -> None:
    with pytest.raises(OPEError, match=message):
        parse_spec(spec)
