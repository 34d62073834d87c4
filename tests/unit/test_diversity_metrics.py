"""Similarity kernels and list metrics on hand-computed examples, and the benchmark's seed parity."""

from __future__ import annotations

import math

import numpy as np
import pytest

from recstack.bench.diversity import latency
from recstack.diversity import (
    catalogue_coverage,
    cosine_similarity,
    intra_list_diversity,
    jaccard_similarity,
    novelty,
)
from recstack.diversity.metrics import genre_matrix, mean_intra_list_diversity


def test_jaccard_known_values() -> None:
    sim = jaccard_similarity([["a", "b"], ["b", "c"], ["a", "b"], []])
    assert sim[0, 1] == pytest.approx(1 / 3)
    assert sim[0, 2] == 1.0
    assert sim[3].tolist() == [0.0, 0.0, 0.0, 1.0]  # no genres: similar only to itself
    assert np.allclose(sim, sim.T)
    assert np.linalg.eigvalsh(sim).min() > -1e-12  # PSD: usable as a DPP kernel


def test_cosine_known_values_and_zero_rows() -> None:
    sim = cosine_similarity(np.array([[1.0, 0.0], [1.0, 1.0], [-2.0, 0.0], [0.0, 0.0]]))
    assert sim[0, 1] == pytest.approx(1 / math.sqrt(2))
    assert sim[0, 2] == pytest.approx(-1.0)
    assert sim[3, :3].tolist() == [0.0, 0.0, 0.0] and sim[3, 3] == 1.0


def test_intra_list_diversity_and_vectorised_version_agree() -> None:
    genres = [["a"], ["a", "b"], ["c"], ["b"]]
    sim = jaccard_similarity(genres)
    # pairs: (0,1) 1 - 1/2, (0,2) 1, (1,2) 1 -> mean distance 2.5 / 3
    assert intra_list_diversity(np.array([0, 1, 2]), sim) == pytest.approx(2.5 / 3)
    assert intra_list_diversity(np.array([2]), sim) == 0.0
    g = genre_matrix(genres)
    lists = np.array([[0, 1, 2], [1, 3, 0]])
    expected = np.mean([intra_list_diversity(row, sim) for row in lists])
    assert mean_intra_list_diversity(lists, g) == pytest.approx(expected)


def test_coverage_and_novelty() -> None:
    assert catalogue_coverage(np.array([[1, 2], [2, 3]]), 10) == pytest.approx(0.3)
    item_users = np.array([0, 9, 1])  # item 1 seen by 9 of 9 users, item 2 by 1
    assert novelty(np.array([[1, 2]]), item_users, 9) == pytest.approx((0.0 + math.log2(5)) / 2)
    with pytest.raises(ValueError, match="n_items"):
        catalogue_coverage([[1]], 0)
    with pytest.raises(ValueError, match="vocabulary"):
        genre_matrix([["x"]], vocab=["a"])


def test_bench_seed_implementations_agree_with_fast_ones() -> None:
    out = latency(n=40, ks=(5, 10), dim=16, repeats=1)
    assert out["selections_match"] is True
    assert len(out["dpp_ms"]) == 2 and all(x > 0 for x in out["dpp_seed_ms"])
