"""Popularity and ItemKNN baselines."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.data import load_dataset
from recstack.evaluation import evaluate_scores, leave_one_out
from recstack.models.baselines import ItemKNN, ItemKNNConfig, NotFittedError, Popularity
from tests.datasets import ML100K
from tests.helpers import make_dataset


@pytest.fixture
def split():
    # items a..e = 1..5; training: u1 [a, b, a], u2 [a, b], u3 [a, c], u4 [d]; valid/test targets after
    rows = [("1", "a", 1), ("1", "b", 2), ("1", "a", 3), ("1", "c", 4), ("1", "e", 5),
            ("2", "a", 1), ("2", "b", 2), ("2", "d", 3), ("2", "c", 4),
            ("3", "a", 1), ("3", "c", 2), ("3", "b", 3), ("3", "e", 4),
            ("4", "d", 1)]  # fmt: skip
    return leave_one_out(make_dataset(rows))


def test_popularity_counts_training_rows(split):
    pop = Popularity().fit(split)
    scores = pop.score_all(np.array([1, 2]), "test")
    assert scores.shape == (2, 6)
    assert scores[0, 1:].tolist() == [4, 2, 1, 1, 0]  # a: 2 (u1) + 1 + 1, b: 2, c: 1, d: 1, e: 0
    assert np.array_equal(scores[0], scores[1])


def test_not_fitted():
    with pytest.raises(NotFittedError):
        Popularity().score_all(np.array([1]))
    with pytest.raises(NotFittedError):
        ItemKNN().score_all(np.array([1]))


def test_itemknn_cosine_by_hand(split):
    knn = ItemKNN(ItemKNNConfig(k=10)).fit(split)
    w = knn.weights.toarray()
    # binary train matrix: a {1,2,3}, b {1,2}, c {3}, d {4}
    assert w[1, 2] == pytest.approx(2 / np.sqrt(3 * 2), rel=1e-5)
    assert w[1, 3] == pytest.approx(1 / np.sqrt(3), rel=1e-5)
    assert w[1, 4] == 0 and w[1, 1] == 0 and w[0].sum() == 0 and w[:, 0].sum() == 0
    # user 2 at stage valid: history {a, b} -> score(c) = sim(a, c) + sim(b, c) = 1/sqrt(3) + 0
    s = knn.score_all(np.array([2]), "valid")[0]
    assert s[3] == pytest.approx(1 / np.sqrt(3), rel=1e-5)
    # at stage test the valid target d joins the history: d has no co-occurrence, scores unchanged
    assert np.allclose(knn.score_all(np.array([2]), "test")[0], s)


def test_itemknn_topk_and_shrink(split):
    knn1 = ItemKNN(ItemKNNConfig(k=1)).fit(split)
    w = knn1.weights.toarray()
    assert ((w > 0).sum(axis=0) <= 1).all()
    assert w[2, 1] > 0 and w[3, 1] == 0  # a keeps its best neighbour b only
    shrunk = ItemKNN(ItemKNNConfig(k=10, shrink=10.0)).fit(split).weights.toarray()
    assert shrunk[1, 2] == pytest.approx(2 / (np.sqrt(6) + 10), rel=1e-5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        ItemKNN(ItemKNNConfig(k=0))


def test_itemknn_beats_popularity_on_synthetic():
    s = leave_one_out(load_dataset("synthetic"))
    pop = evaluate_scores(Popularity().fit(s).scorer("test"), s, "test")
    knn = evaluate_scores(ItemKNN().fit(s).scorer("test"), s, "test")
    assert knn["NDCG@10"] > pop["NDCG@10"]
    assert pop["HR@10"] > 0.05  # popularity carries signal by construction


@pytest.mark.skipif(not (ML100K / "u.data").is_file(), reason="MovieLens 100K not present")
def test_ml100k_reference_numbers():
    s = leave_one_out(load_dataset(f"ml-100k:{ML100K}"))
    knn = ItemKNN().fit(s)
    # RecBole's ItemKNN (k=100, shrink=0) scores from the training matrix only: 0.1124 / 0.0619
    ref = evaluate_scores(knn.scorer("valid"), s, "test")
    assert ref["HR@10"] == pytest.approx(0.1124, abs=0.002)
    assert ref["NDCG@10"] == pytest.approx(0.0619, abs=0.002)
    pop = evaluate_scores(Popularity().fit(s).scorer("test"), s, "test")
    assert 0.06 < pop["HR@10"] < 0.09
