from __future__ import annotations

import logging

import numpy as np
import pytest

from recstack.exploration.base import (
    ContextualSlatePolicy,
    CorruptStateError,
    EmptyCandidatesError,
    FeatureSizeError,
    NonFiniteInputError,
    PolicyInputError,
    SlateSizeError,
)
from recstack.exploration.context import build_context
from recstack.exploration.linucb import HybridLinUCB, LinTS, LinUCB, top_indices
from recstack.exploration.state_codec import ArmState, decode_state, encode_state

D = 8
POLICIES = [
    lambda **kw: LinUCB(D, **kw),
    lambda **kw: LinTS(D, **kw),
    lambda **kw: HybridLinUCB(D, **kw),
    lambda **kw: HybridLinUCB(D, shared_dim=3, **kw),
]


def _ids(n: int) -> list[str]:
    return [f"i{j}" for j in range(n)]


@pytest.mark.parametrize("make", POLICIES)
def test_contract_slate_shape_and_fixed_positions(make) -> None:
    policy = make(seed=0)
    assert isinstance(policy, ContextualSlatePolicy)
    rng = np.random.default_rng(0)
    ids = _ids(30)
    ctx = rng.normal(size=(30, D))
    policy.update_batch(ids[:10], ctx[:10], rng.random(10))
    dec = policy.select(ctx, ids, k=6, explore_slots=2)
    assert dec.items[:4] == ids[:4]
    assert len(set(dec.items)) == 6 and all(x in ids[4:] for x in dec.items[4:])
    assert np.array_equal(dec.propensities[:4], np.ones(4))
    assert np.all((dec.propensities > 0) & (dec.propensities <= 1))
    assert dec.explored.tolist() == [False] * 4 + [True] * 2
    assert dec.scores.shape == (6,) and np.isfinite(dec.scores).all()


def test_sherman_morrison_matches_direct_inverse_after_many_updates() -> None:
    rng = np.random.default_rng(1)
    policy = LinUCB(D, ridge=2.0)
    xs = rng.normal(size=(3000, D)) * rng.uniform(0.1, 3.0, size=D)
    arms = rng.choice(["a", "b", "c"], size=3000)
    rewards = rng.normal(size=3000)
    policy.update_batch(list(arms), xs, rewards)
    for arm in "abc":
        sel = arms == arm
        a = 2.0 * np.eye(D) + xs[sel].T @ xs[sel]
        b = xs[sel].T @ rewards[sel]
        direct = np.linalg.inv(a)
        np.testing.assert_allclose(policy.a_inverse(arm), direct, rtol=1e-6, atol=1e-10)
        x = rng.normal(size=D)
        mean, width = policy.mean_and_width(x[None, :], [arm])
        assert mean[0] == pytest.approx(x @ np.linalg.solve(a, b), rel=1e-4, abs=1e-5)
        assert width[0] == pytest.approx(np.sqrt(x @ direct @ x), rel=1e-4)
    # an arm never updated scores with the prior
    np.testing.assert_allclose(policy.a_inverse("unseen"), np.eye(D) / 2.0)


def test_hybrid_equals_joint_ridge_regression() -> None:
    """Hybrid LinUCB is ridge regression on [z, one_hot(arm) (x) x]: same mean and width."""
    rng = np.random.default_rng(2)
    k, d, arms = 3, D - 3, ["a", "b", "c"]
    policy = HybridLinUCB(D, shared_dim=k)
    n = 400
    feats = rng.normal(size=(n, D))
    which = rng.integers(0, 3, size=n)
    rewards = rng.normal(size=n)
    policy.update_batch([arms[j] for j in which], feats, rewards)

    def joint(row: np.ndarray, arm: int) -> np.ndarray:
        v = np.zeros(k + 3 * d)
        v[:k] = row[:k]
        v[k + arm * d : k + (arm + 1) * d] = row[k:]
        return v

    phi = np.stack([joint(f, j) for f, j in zip(feats, which, strict=True)])
    m = np.eye(k + 3 * d) + phi.T @ phi
    w = np.linalg.solve(m, phi.T @ rewards)
    np.testing.assert_allclose(policy.beta, w[:k], rtol=1e-6, atol=1e-9)
    test = rng.normal(size=(3, D))
    mean, width = policy.mean_and_width(test, arms)
    for j in range(3):
        v = joint(test[j], j)
        assert mean[j] == pytest.approx(v @ w, rel=1e-3, abs=1e-4)
        assert width[j] == pytest.approx(np.sqrt(v @ np.linalg.solve(m, v)), rel=1e-3)


@pytest.mark.parametrize("make", [lambda: LinUCB(6, alpha=0.5, seed=3), lambda: LinTS(6, v=0.3, seed=3)])
def test_picks_best_arm_on_planted_linear_problem(make) -> None:
    rng = np.random.default_rng(3)
    n_arms, dim = 10, 6
    thetas = rng.normal(size=(n_arms, dim))
    ids = _ids(n_arms)
    policy = make()
    hits = []
    for t in range(1500):
        ctx = rng.normal(size=(n_arms, dim))
        dec = policy.select(ctx, ids, k=1, explore_slots=1)
        j = ids.index(dec.items[0])
        expected = np.einsum("ad,ad->a", thetas, ctx)
        policy.update(dec.items[0], ctx[j], expected[j] + 0.1 * rng.normal())
        if t >= 1200:
            hits.append(j == int(np.argmax(expected)))
    assert np.mean(hits) > 0.9


def test_epsilon_mix_propensities_match_serving_frequencies() -> None:
    rng = np.random.default_rng(4)
    eps, slots, n = 0.3, 2, 12
    policy = LinUCB(D, alpha=0.0, epsilon=eps, seed=5)
    ids = _ids(n)
    ctx = rng.normal(size=(n, D))
    policy.update_batch(ids, ctx, np.linspace(1.0, 0.0, n) * 5)  # clear greedy order
    fixed, m = 2, n - 2
    served = np.zeros(n)
    prop = np.zeros(n)
    trials = 4000
    for _ in range(trials):
        dec = policy.select(ctx, ids, k=fixed + slots, explore_slots=slots)
        assert np.all(dec.propensities[:fixed] == 1.0)
        for item, p in zip(dec.items[fixed:], dec.propensities[fixed:], strict=True):
            j = ids.index(item)
            served[j] += 1
            prop[j] = p
    greedy = np.argsort(-policy.score(ctx, ids)[fixed:], kind="stable")[:slots] + fixed
    expected = np.full(n, eps * slots / m)
    expected[greedy] += 1 - eps
    expected[:fixed] = 0
    np.testing.assert_allclose(prop[fixed:], expected[fixed:])
    assert expected.sum() == pytest.approx(slots)
    freq = served / trials
    np.testing.assert_allclose(freq[fixed:], expected[fixed:], atol=0.03)


def test_epsilon_zero_is_deterministic_with_propensity_one() -> None:
    policy = LinUCB(D, epsilon=0.0, seed=0)
    ctx = np.random.default_rng(0).normal(size=(20, D))
    ids = _ids(20)
    first = policy.select(ctx, ids, k=5, explore_slots=3)
    for _ in range(5):
        again = policy.select(ctx, ids, k=5, explore_slots=3)
        assert again.items == first.items
    assert np.all(first.propensities == 1.0)


def test_lints_inclusion_propensities_match_frequencies() -> None:
    rng = np.random.default_rng(6)
    n, slots = 8, 1
    policy = LinTS(D, v=1.0, seed=7, n_draws=2000)
    ids = _ids(n)
    ctx = rng.normal(size=(n, D)) * 0.5
    policy.update_batch(ids * 3, np.tile(ctx, (3, 1)), np.tile(np.linspace(0.6, 0.0, n), 3))
    counts = np.zeros(n)
    props = np.zeros(n)
    trials = 3000
    for _ in range(trials):
        dec = policy.select(ctx, ids, k=1, explore_slots=slots)
        j = ids.index(dec.items[0])
        counts[j] += 1
        props[j] = dec.propensities[0]
    seen = counts > 0
    np.testing.assert_allclose(props[seen], counts[seen] / trials, atol=0.04)


@pytest.mark.parametrize("make", POLICIES)
def test_state_round_trip_through_hash(make) -> None:
    rng = np.random.default_rng(8)
    src, dst = make(seed=0), make(seed=0)
    ids = _ids(5)
    policy_ctx = rng.normal(size=(5, D))
    src.update_batch(ids * 4, np.tile(policy_ctx, (4, 1)), rng.random(20))
    if isinstance(src, HybridLinUCB):
        assert dst.load_shared(src.shared_hash())
    for arm in ids:
        assert dst.load_arm(arm, src.arm_hash(arm))
    np.testing.assert_allclose(dst.score(policy_ctx, ids), src.score(policy_ctx, ids), rtol=1e-4, atol=1e-5)


def _corruptions(good: dict[str, bytes]) -> dict[str, dict]:
    state = good["state"]
    nan = np.frombuffer(state, dtype="<f4").copy()
    nan[3] = np.nan
    asym = np.frombuffer(state, dtype="<f4").copy()
    asym[1] += 5.0  # A^{-1}[0, 1] only
    return {
        "short": {**good, "state": state[:-4]},
        "nan": {**good, "state": nan.tobytes()},
        "asymmetric": {**good, "state": asym.tobytes()},
        "wrong_dim": {**good, "dim": b"7"},
        "missing_field": {k: v for k, v in good.items() if k != "n"},
        "text_state": {**good, "state": "abc"},
        "bad_format": {**good, "format": b"other-v9"},
    }


@pytest.mark.parametrize(
    "case", ["short", "nan", "asymmetric", "wrong_dim", "missing_field", "text_state", "bad_format"]
)
def test_corrupted_state_resets_arm_to_prior_with_warning(case: str, caplog) -> None:
    src = LinUCB(D)
    x = np.ones(D)
    for _ in range(5):
        src.update("a", x, 1.0)
    bad = _corruptions(src.arm_hash("a"))[case]
    dst = LinUCB(D)
    dst.load_arm("a", src.arm_hash("a"))
    assert not np.allclose(dst.a_inverse("a"), np.eye(D))
    with caplog.at_level(logging.WARNING, logger="recstack.exploration.linucb"):
        assert dst.load_arm("a", bad) is False
    assert "corrupted" in caplog.text
    np.testing.assert_allclose(dst.a_inverse("a"), np.eye(D))
    assert dst.score(x[None, :], ["a"])[0] == pytest.approx(np.sqrt(D))  # prior: mean 0, width |x|


def test_hybrid_corrupted_shared_state_resets() -> None:
    policy = HybridLinUCB(D)
    policy.update("a", np.ones(D), 1.0)
    good = policy.shared_hash()
    a0 = np.frombuffer(good["state"], dtype="<f4").copy()
    a0[: D * D] = -np.eye(D).ravel()  # symmetric but negative definite
    assert policy.load_shared({**good, "state": a0.tobytes()}) is False
    np.testing.assert_allclose(policy.a0, np.eye(D))
    assert policy.load_shared({}) is True


def test_arm_state_bytes_round_trip_and_specific_error() -> None:
    state = ArmState(np.eye(3) * 0.5, np.arange(3.0), n=4)
    back = ArmState.from_bytes(state.to_bytes(), dim=3, n=4)
    np.testing.assert_allclose(back.ainv, state.ainv)
    np.testing.assert_allclose(back.b, state.b)
    with pytest.raises(CorruptStateError, match="has 48 bytes, expected 80"):
        ArmState.from_bytes(state.to_bytes(), dim=4)
    data = encode_state(np.eye(2), np.zeros(2))
    blocks = decode_state(data, [(2, 2), (2,)], symmetric=[0])
    np.testing.assert_allclose(blocks[0], np.eye(2))
    with pytest.raises(CorruptStateError, match="bytes"):
        decode_state(data[:-1], [(2, 2), (2,)])
    with pytest.raises(CorruptStateError, match="non-positive diagonal"):
        decode_state(encode_state(np.zeros((2, 2)), np.zeros(2)), [(2, 2), (2,)], symmetric=[0])


@pytest.mark.parametrize("make", POLICIES)
def test_bad_inputs_raise_value_errors_with_reasons(make) -> None:
    policy = make(seed=0)
    ids = _ids(4)
    ctx = np.zeros((4, D))
    with pytest.raises(EmptyCandidatesError, match="empty"):
        policy.select(np.zeros((0, D)), [], k=1, explore_slots=0)
    with pytest.raises(FeatureSizeError, match=r"\(4, 8\)"):
        policy.select(np.zeros((4, D + 1)), ids, k=2, explore_slots=1)
    with pytest.raises(FeatureSizeError):
        policy.select(np.zeros((3, D)), ids, k=2, explore_slots=1)
    nan = ctx.copy()
    nan[2, 1] = np.nan
    with pytest.raises(NonFiniteInputError, match="row 2"):
        policy.select(nan, ids, k=2, explore_slots=1)
    with pytest.raises(SlateSizeError, match="larger than the number of candidates"):
        policy.select(ctx, ids, k=5, explore_slots=1)
    with pytest.raises(SlateSizeError, match="explore_slots"):
        policy.select(ctx, ids, k=2, explore_slots=3)
    with pytest.raises(SlateSizeError, match="k must be >= 1"):
        policy.select(ctx, ids, k=0, explore_slots=0)
    with pytest.raises(PolicyInputError, match="distinct"):
        policy.select(ctx, ["a", "a", "b", "c"], k=2, explore_slots=1)
    with pytest.raises(FeatureSizeError):
        policy.update("a", np.zeros(D - 1), 1.0)
    with pytest.raises(NonFiniteInputError):
        policy.update("a", np.zeros(D), float("nan"))
    with pytest.raises(FeatureSizeError):
        policy.update_batch(["a", "b"], np.zeros((2, D)), np.zeros(3))
    assert all(issubclass(e, ValueError) for e in (EmptyCandidatesError, SlateSizeError, FeatureSizeError))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(PolicyInputError, match="epsilon"):
        LinUCB(D, epsilon=1.5)
    with pytest.raises(PolicyInputError, match="ridge"):
        LinUCB(D, ridge=0.0)
    with pytest.raises(PolicyInputError, match="shared_dim"):
        HybridLinUCB(D, shared_dim=D)


def test_build_context_layout() -> None:
    vocab = ["action", "comedy", "drama", "horror"]
    x = build_context(
        {"action": 0.5, "drama": 0.2, "sci-fi": 9.0}, ["action", "drama", "xx"], vocab, 0.7, d=9
    )
    g = 3  # (9 - 3) // 2 buckets; horror (index 3) folds into bucket 0
    assert x.shape == (9,)
    assert x[0] == 1.0 and x[1] == pytest.approx(0.7)
    assert x[2] == pytest.approx((0.5 + 0.2) / 2)
    np.testing.assert_allclose(x[3 : 3 + g], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(x[3 + g : 3 + 2 * g], [0.5, 0.0, 0.2])
    assert build_context({}, [], vocab, 0.0, d=6)[2] == 0.0
    with pytest.raises(FeatureSizeError):
        build_context({}, [], vocab, 0.0, d=4)
    with pytest.raises(NonFiniteInputError):
        build_context({}, [], vocab, float("nan"), d=8)


@pytest.mark.parametrize("n", [1, 2, 4, 5])
def test_top_indices_equals_a_stable_sort(n: int) -> None:
    rng = np.random.default_rng(n)
    for score in (
        rng.normal(size=50),
        np.round(rng.normal(size=50), 1),  # many ties: lower index first
        np.r_[rng.normal(size=10), [-np.inf] * 3],
        np.r_[[np.nan], rng.normal(size=5), [np.inf, -np.inf]],
        np.full(6, -np.inf),
    ):
        np.testing.assert_array_equal(top_indices(score, n), np.argsort(-score, kind="stable")[:n])


@pytest.mark.parametrize("updates_per_arm", [0, 2, 60])
@pytest.mark.parametrize("epsilon", [0.0, 0.3])
def test_pruned_select_equals_scoring_every_candidate(updates_per_arm: int, epsilon: float) -> None:
    """``select`` scores only the pool items whose bound can reach the exploration slots; it must
    give the slate, scores and propensities of the full computation, for sparse and dense arm
    statistics, with the epsilon mix, ties and unknown arms."""
    rng = np.random.default_rng(updates_per_arm)
    d, n_arms = 8, 60
    arms = [f"a{j}" for j in range(n_arms)]
    fast = LinUCB(d, alpha=0.7, epsilon=epsilon, seed=5)
    full = LinUCB(d, alpha=0.7, epsilon=epsilon, seed=5)
    full.prune = False
    n = updates_per_arm * n_arms
    if n:
        upd = [arms[j] for j in rng.integers(0, n_arms, size=n)]
        xs, rs = rng.normal(size=(n, d)), (rng.random(n) < 0.3).astype(float)
        fast.update_batch(upd, xs, rs)
        full.update_batch(upd, xs, rs)
    for trial in range(200):
        cand = [arms[j] for j in rng.choice(n_arms, 40, replace=False)] + ["new1", "new2"]
        x = rng.normal(size=(len(cand), d))
        if trial % 10 == 0:
            x[25:] = x[24]  # identical contexts: ties among unknown arms
        k, slots = int(rng.integers(3, 12)), int(rng.integers(1, 4))
        a, b = fast.select(x, cand, k, slots), full.select(x, cand, k, slots)
        assert a.items == b.items, trial
        np.testing.assert_allclose(a.scores, b.scores, rtol=1e-12)
        np.testing.assert_allclose(a.propensities, b.propensities, rtol=1e-12)
    with pytest.raises(NonFiniteInputError, match="row 30"):
        bad = rng.normal(size=(42, d))
        bad[30, 2] = np.nan
        fast.select(bad, [f"a{j}" for j in range(42)], 5, 2)


def test_reloading_an_unchanged_arm_skips_decoding_but_never_hides_a_change(monkeypatch) -> None:
    import recstack.exploration.linucb as mod

    src = LinUCB(D)
    src.update("a", np.ones(D) / D, 1.0)
    calls = []
    real = mod.decode_state
    monkeypatch.setattr(mod, "decode_state", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    dst = LinUCB(D)
    for _ in range(3):
        assert dst.load_arm("a", src.arm_hash("a"))
    assert len(calls) == 1  # decoded once
    x = np.full((1, D), 0.3)
    np.testing.assert_allclose(dst.score(x, ["a"]), src.score(x, ["a"]), rtol=1e-6)
    dst.update("a", np.ones(D), 0.0)  # a local update: the next load must restore Redis' state
    dst.load_arm("a", src.arm_hash("a"))
    assert len(calls) == 2
    np.testing.assert_allclose(dst.score(x, ["a"]), src.score(x, ["a"]), rtol=1e-6)
    src.update("a", np.ones(D) / D, 0.0)  # Redis moved on: decoded again
    dst.load_arm("a", src.arm_hash("a"))
    assert len(calls) == 3
    np.testing.assert_allclose(dst.score(x, ["a"]), src.score(x, ["a"]), rtol=1e-6)


def test_pruned_select_rejects_duplicates_among_known_and_unknown_arms() -> None:
    policy = LinUCB(D, epsilon=0.0)
    policy.update("a", np.ones(D) / D, 1.0)
    x = np.random.default_rng(0).normal(size=(5, D))
    for ids in (["a", "b", "a", "c", "d"], ["a", "b", "c", "b", "d"]):
        with pytest.raises(PolicyInputError, match="distinct"):
            policy.select(x, ids, 3, 1)
    twin = LinUCB(D, epsilon=0.0)
    twin._arms = policy._arms  # a second policy over the same statistics: no false duplicate
    for _ in range(3):
        assert len(policy.select(x, ["a", "b", "c", "d", "e"], 3, 1).items) == 3
        assert len(twin.select(x, ["a", "b", "c", "d", "e"], 3, 1).items) == 3


def test_kernels_warm_up_compiles_every_kernel() -> None:
    """The bandit service calls warm_up before SERVING: it must match the kernels' signatures."""
    from recstack.exploration import kernels

    kernels.warm_up()
    for fn in (
        kernels.disjoint_mean_var,
        kernels.disjoint_ucb,
        kernels.disjoint_top,
        kernels.hybrid_mean_var,
        kernels.top_inclusion,
        kernels.rows_top_inclusion,
    ):
        assert fn.signatures, fn


@pytest.mark.parametrize("slots", [1, 2, 5])
def test_top_inclusion_counts_equal_repeated_argmax(slots: int) -> None:
    """LinTS's Monte Carlo inclusion kernel = argmax per draw, remove the winner, repeat."""
    from recstack.exploration import kernels

    rng = np.random.default_rng(slots)
    m, draws = 40, 300
    noise = rng.standard_normal((draws, 3 * m)).astype(np.float32)[:, m : 2 * m]  # a bank window
    mean = rng.normal(size=m).astype(np.float32)
    mean[5:9] = mean[4]  # ties (width 0): the lower index wins, as argmax
    width = rng.random(m).astype(np.float32)
    width[4:9] = 0.0
    counts = np.zeros(m, dtype=np.int64)
    kernels.top_inclusion(noise, mean, width, slots, counts)
    sims = mean + width * noise
    expected = np.zeros(m, dtype=np.int64)
    for _ in range(slots):
        top = np.argmax(sims, axis=1)
        expected += np.bincount(top, minlength=m)
        sims[np.arange(draws), top] = -np.inf
    np.testing.assert_array_equal(counts, expected)
    assert counts.sum() == draws * slots


@pytest.mark.parametrize("slots", [1, 2, 5])
def test_rows_top_inclusion_counts_equal_repeated_argmax(slots: int) -> None:
    """Thompson's kernel over cached draw rows = argmax over the pool per draw, repeated."""
    from recstack.exploration import kernels

    rng = np.random.default_rng(10 + slots)
    samples = rng.random((60, 250)).astype(np.float32)
    samples[7] = samples[3]  # an exact tie between two pool items: the lower pool index wins
    rows = rng.permutation(60)[:40]
    rows[[2, 9]] = [3, 7]
    counts = np.zeros(40, dtype=np.int64)
    kernels.rows_top_inclusion(samples, rows, slots, counts)
    sims = samples[rows].copy()
    expected = np.zeros(40, dtype=np.int64)
    for _ in range(slots):
        top = np.argmax(sims, axis=0)
        expected += np.bincount(top, minlength=40)
        sims[top, np.arange(250)] = -np.inf
    np.testing.assert_array_equal(counts, expected)
    assert counts[9] <= counts[2]  # item 9 only enters a draw together with its tie, item 2
