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


def test_cached_propensities_match_serving_frequencies_and_follow_arm_changes() -> None:
    policy = ThompsonSlatePolicy(explore_slots=1, seed=3, n_draws=4000)
    pool_arms = [(2, 8), (5, 5), (8, 2), (1, 1), (3, 3), (6, 4)]
    arms = {f"i{2 + j}": ab for j, ab in enumerate(pool_arms)}
    cands, scores = ITEMS[:8], SCORES[:8]
    served: dict[str, int] = {}
    props: dict[str, float] = {}
    n = 3000
    for _ in range(n):
        items, _, p = policy.select(cands, scores, k=3, arms=arms)
        served[items[-1]] = served.get(items[-1], 0) + 1
        props[items[-1]] = float(p[-1])  # the Monte Carlo samples are reused: same value every time
    for item, count in served.items():
        assert count / n == pytest.approx(props[item], abs=0.03), item
    # a changed posterior invalidates the item's cached samples at once
    arms["i2"] = (80.0, 1.0)
    items, _, p = policy.select(cands, scores, k=3, arms=arms)
    assert items[-1] == "i2" and p[-1] > 0.9


def test_draw_cache_is_bounded_and_never_evicts_the_current_pool() -> None:
    policy = ThompsonSlatePolicy(explore_slots=2, seed=0, cache_items=12)
    for start in range(0, 40, 3):
        pool = [f"c{start + j}" for j in range(10)]
        items, _, p = policy.select(pool, np.linspace(1, 0, 10), k=4, arms={})
        assert len(items) == 4 and np.all((p > 0) & (p <= 1))
        assert len(policy._draws) <= 12
    # a pool larger than the cache is estimated with fresh draws
    items, _, p = policy.select([f"x{j}" for j in range(20)], np.zeros(20), k=3, arms={})
    assert len(items) == 3 and np.all((p > 0) & (p <= 1)) and len(policy._draws) <= 12
