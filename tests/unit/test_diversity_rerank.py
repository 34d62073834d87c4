"""MMR and greedy DPP against brute-force references on small inputs."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.diversity import cosine_similarity, dpp_greedy, dpp_kernel, jaccard_similarity, mmr
from recstack.diversity.dpp import quality_alpha
from recstack.diversity.metrics import normalize_scores


def naive_mmr(scores: np.ndarray, sim: np.ndarray, k: int, lam: float) -> list[int]:
    rel = normalize_scores(scores)
    chosen: list[int] = []
    for _ in range(k):
        best, best_val = -1, -np.inf
        for i in range(len(rel)):
            if i in chosen:
                continue
            penalty = max(sim[i, j] for j in chosen) if chosen else 0.0
            val = lam * rel[i] - (1 - lam) * penalty
            if val > best_val:
                best, best_val = i, val
        chosen.append(best)
    return chosen


def brute_dpp(kernel: np.ndarray, k: int) -> list[int]:
    """Greedy MAP by definition: add the item maximising log det of the enlarged submatrix."""
    chosen: list[int] = []
    for _ in range(k):
        best, best_val = -1, -np.inf
        for i in range(len(kernel)):
            if i in chosen:
                continue
            idx = [*chosen, i]
            sign, logdet = np.linalg.slogdet(kernel[np.ix_(idx, idx)])
            val = logdet if sign > 0 else -np.inf
            if val > best_val:
                best, best_val = i, val
        chosen.append(best)
    return chosen


def logdet(kernel: np.ndarray, idx: np.ndarray) -> float:
    sign, val = np.linalg.slogdet(kernel[np.ix_(idx, idx)])
    return val if sign > 0 else -np.inf


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("lam", [0.0, 0.3, 0.7, 1.0])
def test_mmr_matches_naive_loop(seed: int, lam: float) -> None:
    rng = np.random.default_rng(seed)
    scores = rng.normal(size=25)
    sim = cosine_similarity(rng.normal(size=(25, 6)))
    assert mmr(scores, sim, 8, lam).tolist() == naive_mmr(scores, sim, 8, lam)


def test_mmr_from_genres_matches_precomputed_similarity() -> None:
    genres = [["a"], ["a", "b"], ["c"], ["a"], ["b", "c"], []]
    scores = np.array([5.0, 4.0, 3.0, 4.5, 1.0, 0.5])
    from_features = mmr(scores, k=4, lam=0.5, features=genres, metric="jaccard")
    assert from_features.tolist() == naive_mmr(scores, jaccard_similarity(genres), 4, 0.5)
    # the duplicate of the top item ("a") is pushed below a different genre
    assert from_features[0] == 0 and from_features[1] != 3


def test_mmr_lambda_one_is_relevance_order() -> None:
    rng = np.random.default_rng(3)
    scores = rng.normal(size=40)
    sim = cosine_similarity(rng.normal(size=(40, 5)))
    assert mmr(scores, sim, 10, 1.0).tolist() == np.argsort(-scores)[:10].tolist()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("theta", [0.0, 0.5, 0.7, 0.9])
def test_dpp_greedy_is_argmax_of_logdet_increments(seed: int, theta: float) -> None:
    rng = np.random.default_rng(seed)
    n, k = 20, 7
    scores = rng.normal(size=n)
    sim = cosine_similarity(rng.normal(size=(n, 10)))  # rank 10 >= k: no early stop
    expected = brute_dpp(dpp_kernel(scores, sim, theta), k)
    assert dpp_greedy(scores, sim, k, theta).tolist() == expected


def test_dpp_theta_controls_relevance_weight() -> None:
    alpha = quality_alpha(0.5)
    assert alpha == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    scores = rng.normal(size=30)
    sim = cosine_similarity(rng.normal(size=(30, 30)))
    # theta -> 1: relevance dominates, the list is the relevance order
    assert dpp_greedy(scores, sim, 5, 0.999).tolist() == np.argsort(-scores)[:5].tolist()


def test_dpp_determinant_at_least_mmr() -> None:
    # three clusters of near-duplicates; the most relevant items all sit in cluster 0
    rng = np.random.default_rng(7)
    centers = np.eye(3)
    emb = np.repeat(centers, 6, axis=0) + 0.05 * rng.normal(size=(18, 3))
    scores = np.concatenate([np.linspace(1.0, 0.9, 6), np.linspace(0.6, 0.5, 6), np.linspace(0.3, 0.2, 6)])
    sim = cosine_similarity(emb)
    theta = 0.7
    kernel = dpp_kernel(scores, sim, theta)
    d = dpp_greedy(scores, sim, 3, theta)
    m = mmr(scores, sim, 3, 0.7)
    assert logdet(kernel, d) >= logdet(kernel, m) - 1e-12
    assert sorted(set(d // 6)) == [0, 1, 2]  # one item per cluster


def test_dpp_stops_when_kernel_is_spanned_then_fills_by_relevance() -> None:
    genres = [["a"], ["a"], ["b"], ["b"], ["a"], ["b"]]  # two distinct genre sets: rank 2
    scores = np.array([6.0, 5.0, 4.0, 3.0, 2.0, 1.0])
    out = dpp_greedy(scores, k=5, theta=0.5, features=genres, metric="jaccard")
    assert out.tolist()[:2] == [0, 2]  # one per genre set, best first
    assert out.tolist()[2:] == [1, 3, 4]  # then by relevance
    assert len(set(out.tolist())) == 5


def test_dpp_min_gain_zero_is_unconstrained_map_rule() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(size=30)
    sim = cosine_similarity(rng.normal(size=(30, 4)) + 2.0)  # highly similar items
    kernel = dpp_kernel(scores, sim, 0.3)
    out = dpp_greedy(scores, sim, 10, 0.3, min_gain=0.0)
    assert len(out) == 10
    # the greedy part is the prefix while log det increases; find it by brute force
    prefix = brute_dpp(kernel, 10)
    n_greedy = 0
    for t in range(1, 11):
        if logdet(kernel, np.array(prefix[:t])) <= (
            logdet(kernel, np.array(prefix[: t - 1])) if t > 1 else 0.0
        ):
            break
        n_greedy = t
    assert 1 <= n_greedy < 10
    assert out[:n_greedy].tolist() == prefix[:n_greedy]


def test_k_larger_than_candidates_returns_all() -> None:
    scores = np.array([0.1, 0.5, 0.3])
    sim = np.eye(3)
    assert sorted(mmr(scores, sim, 10).tolist()) == [0, 1, 2]
    assert sorted(dpp_greedy(scores, sim, 10).tolist()) == [0, 1, 2]
    assert mmr(scores, sim, 0).tolist() == []


def test_bad_inputs_raise_clear_errors() -> None:
    scores = np.array([1.0, 2.0])
    with pytest.raises(ValueError, match="lam must be between 0 and 1"):
        mmr(scores, np.eye(2), 1, 1.5)
    with pytest.raises(ValueError, match=r"theta must be in \[0, 1\)"):
        dpp_greedy(scores, np.eye(2), 1, 1.0)
    with pytest.raises(ValueError, match=r"similarity must be \[N, N\]"):
        mmr(scores, np.eye(3), 1)
    with pytest.raises(ValueError, match="exactly one of sim"):
        mmr(scores, k=1)
    with pytest.raises(ValueError, match="finite"):
        dpp_greedy(np.array([1.0, np.nan]), np.eye(2), 1)
    with pytest.raises(ValueError, match="metric must be"):
        mmr(scores, k=1, features=np.eye(2), metric="euclid")
