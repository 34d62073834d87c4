from __future__ import annotations

import numpy as np
import pytest

from recstack.exploration.thompson import PolicyError, ThompsonSlatePolicy

ITEMS = [f"i{i}" for i in range(20)]
SCORES = np.linspace(1.0, 0.0, 20)


def test_top_positions_keep_ranked_order_with_propensity_one() -> None:
    policy = ThompsonSlatePolicy(explore_slots=2, seed=0)
    items, scores, props = policy.select(ITEMS, SCORES, k=5, arms={})
    assert items[:3] == ITEMS[:3]
    assert np.allclose(props[:3], 1.0)
    assert len(items) == 5 and len(set(items)) == 5
    assert all(x in ITEMS[3:] for x in items[3:])
    assert np.allclose(scores, [SCORES[ITEMS.index(x)] for x in items])


def test_propensities_in_range_and_inclusion_sums_to_slots() -> None:
    policy = ThompsonSlatePolicy(explore_slots=3, seed=1, n_draws=500)
    _, _, props = policy.select(ITEMS, SCORES, k=6, arms={})
    assert np.all(props > 0) and np.all(props <= 1)
    alpha = np.ones(14)
    beta = np.ones(14)
    incl = policy.inclusion_probabilities(alpha, beta, 3)
    assert incl.sum() == pytest.approx(3.0)
    # uniform priors: every pool item about 3/14
    assert np.allclose(incl, 3 / 14, atol=0.08)


def test_strong_arm_is_explored_with_high_propensity() -> None:
    policy = ThompsonSlatePolicy(explore_slots=1, seed=2)
    arms = {x: (1.0, 50.0) for x in ITEMS}  # known bad arms, p ~ 0.02
    arms["i15"] = (50.0, 5.0)  # p ~ 0.9
    items, _, props = policy.select(ITEMS, SCORES, k=4, arms=arms)
    assert items[-1] == "i15"
    assert props[-1] > 0.9


def test_k_larger_than_candidates_and_zero_slots() -> None:
    policy = ThompsonSlatePolicy(explore_slots=0, seed=0)
    items, _, props = policy.select(ITEMS[:3], SCORES[:3], k=10, arms={})
    assert items == ITEMS[:3]
    assert np.allclose(props, 1.0)


def test_whole_slate_explored_when_pool_equals_slots() -> None:
    policy = ThompsonSlatePolicy(explore_slots=5, seed=0)
    items, _, props = policy.select(ITEMS[:3], SCORES[:3], k=3, arms={})
    assert sorted(items) == sorted(ITEMS[:3])
    assert np.allclose(props, 1.0)  # every item is certain to be in the slate


def test_bad_input_raises_policy_error() -> None:
    policy = ThompsonSlatePolicy(seed=0)
    with pytest.raises(PolicyError, match="k must be >= 1"):
        policy.select(ITEMS, SCORES, k=0, arms={})
    with pytest.raises(PolicyError, match="scores must have shape"):
        policy.select(ITEMS, SCORES[:3], k=2, arms={})
    with pytest.raises(PolicyError, match="distinct"):
        policy.select(["a", "a"], [1.0, 0.5], k=2, arms={})
    with pytest.raises(PolicyError, match="explore_slots"):
        ThompsonSlatePolicy(explore_slots=-1)
    with pytest.raises(PolicyError, match="prior"):
        ThompsonSlatePolicy(prior_alpha=0)
