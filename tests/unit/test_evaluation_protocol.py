"""Full-ranking metrics, masking, tie rule and histories."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.evaluation import (
    EvaluationError,
    beyond_accuracy,
    evaluate_sampled,
    evaluate_scores,
    history_matrix,
    leave_one_out,
    ndcg,
    target_ranks,
    top_k,
    user_histories,
)
from recstack.evaluation.split import Split
from tests.helpers import make_dataset


@pytest.fixture
def split() -> Split:
    # items a..f = indices 1..6. user 1: train [a, b], valid c, test d; user 2: train [e], test a
    rows = [("1", "a", 1), ("1", "b", 2), ("1", "c", 3), ("1", "d", 4), ("2", "e", 1), ("2", "a", 2),
            ("3", "f", 1)]  # fmt: skip
    return leave_one_out(make_dataset(rows))


def table(split: Split, values: dict[int, list[float]]):
    def fn(users: np.ndarray) -> np.ndarray:
        return np.array([values[int(u)] for u in users], dtype=np.float64)

    return fn


def test_valid_masks_training_items(split):
    #          pad  a   b   c   d   e   f
    scores = {1: [9, 10, 9, 5, 1, 0, 0]}
    users, ranks = target_ranks(table(split, scores), split, "valid")
    assert users.tolist() == [1]  # only user 1 has a valid target
    assert ranks.tolist() == [1]  # a and b (train) are masked, c beats d, e, f


def test_test_masks_train_and_valid(split):
    scores = {1: [0, 10, 9, 8, 1, 0, 2], 2: [0, 1, 2, 3, 4, 5, 6]}
    users, ranks = target_ranks(table(split, scores), split, "test")
    assert users.tolist() == [1, 2]
    # user 1: a, b, c masked; f (2) beats d (1) -> rank 2. user 2: e masked; b, c, d, f beat a -> rank 5
    assert ranks.tolist() == [2, 5]
    res = evaluate_scores(table(split, scores), split, "test", ks=(1, 2, 10))
    assert res["users"] == 2
    assert res["HR@1"] == 0.0 and res["HR@2"] == 0.5 and res["HR@10"] == 1.0
    assert res["NDCG@10"] == pytest.approx((1 / np.log2(3) + 1 / np.log2(6)) / 2)


def test_target_in_history_is_not_masked():
    rows = [("1", "a", 1), ("1", "b", 2), ("1", "c", 3), ("1", "a", 4)]  # test target a is also in train
    s = leave_one_out(make_dataset(rows))
    scores = {1: [0, 5, 9, 9]}  # pad, a, b, c: a is the target, b and c are masked
    _, ranks = target_ranks(table(s, scores), s, "test")
    assert ranks.tolist() == [1]


def test_ties_are_pessimistic(split):
    scores = {1: [0, 0, 0, 3, 3, 3, 1]}  # c ties with d and e
    _, ranks = target_ranks(table(split, scores), split, "valid")
    assert ranks.tolist() == [3]
    constant = {1: [0.0] * 7, 2: [0.0] * 7}
    _, ranks = target_ranks(table(split, constant), split, "test")
    assert ranks.tolist() == [3, 5]  # last among the unmasked items (6 - 3 masked, 6 - 1 masked)


def test_column_zero_is_ignored(split):
    scores = {1: [100, 0, 0, 5, 1, 0, 0]}
    _, ranks = target_ranks(table(split, scores), split, "valid")
    assert ranks.tolist() == [1]


def test_user_subset(split):
    scores = {1: [0] * 7, 2: [0, 9, 0, 0, 0, 0, 0]}
    res = evaluate_scores(table(split, scores), split, "test", users=[2, 3])
    assert res["users"] == 1 and res["HR@10"] == 1.0 and res["NDCG@10"] == 1.0
    with pytest.raises(ValueError, match="user indices must lie in 1..3"):
        evaluate_scores(table(split, scores), split, "test", users=[0])


def test_bad_score_fn(split):
    with pytest.raises(EvaluationError, match=r"expected \(1, 7\)"):
        evaluate_scores(lambda u: np.zeros((len(u), 6)), split, "valid")
    with pytest.raises(EvaluationError, match="NaN"):
        evaluate_scores(lambda u: np.full((len(u), 7), np.nan), split, "valid")
    with pytest.raises(ValueError, match="stage must be 'valid' or 'test'"):
        evaluate_scores(lambda u: np.zeros((len(u), 7)), split, "train")


def test_histories(split):
    assert user_histories(split, "valid")[1].tolist() == [1, 2]
    assert user_histories(split, "test")[1].tolist() == [1, 2, 3]
    assert user_histories(split, "test")[2].tolist() == [5]  # no valid target
    m = history_matrix(split, "test", max_len=2)
    assert m.dtype == np.int64 and m.shape == (4, 2)
    assert m.tolist() == [[0, 0], [2, 3], [0, 5], [0, 6]]
    assert history_matrix(split, "valid", max_len=4, users=np.array([1])).tolist() == [[0, 0, 1, 2]]


def test_ndcg_values():
    assert ndcg(np.array([1, 2, 11]), 10).tolist() == pytest.approx([1.0, 1 / np.log2(3), 0.0])


def test_oracle_and_speed():
    rows = [(str(u), str(i), i) for u in range(943) for i in range(u % 53, 1682, 53)]
    s = leave_one_out(make_dataset(rows))
    assert s.n_items == 1682
    rng = np.random.default_rng(0)
    fixed = rng.random((s.n_users + 1, s.n_items + 1))

    def oracle(users):
        out = fixed[users].copy()
        out[np.arange(len(users)), s.test_target[users]] = 2.0
        return out

    res = evaluate_scores(oracle, s, "test")
    assert res["users"] == 943 and res["HR@10"] == 1.0 and res["NDCG@10"] == 1.0
    rand = evaluate_scores(lambda u: fixed[u], s, "test")
    assert rand["HR@50"] < 0.1  # 50 of ~1650 candidates


def test_sampled_is_labelled_and_easier(split):
    scores = {1: [0, 0, 0, 8, 1, 9, 0], 2: [0, 2, 1, 1, 1, 1, 3]}
    res = evaluate_sampled(table(split, scores), split, "test", ks=(1,), n_negatives=1, seed=0)
    assert set(res) == {"sampled_HR@1", "sampled_NDCG@1", "users"}
    full = evaluate_scores(table(split, scores), split, "test", ks=(1,))
    assert res["sampled_HR@1"] >= full["HR@1"]


def test_top_k_masks_history_and_orders(split):
    scores = {1: [0, 10, 9, 8, 1, 5, 5], 2: [0, 1, 2, 3, 4, 5, 6]}
    users, lists = top_k(table(split, scores), split, "test", k=3, users=[1, 2])
    assert users.tolist() == [1, 2]
    # user 1 test history a, b, c masked; e and f tie at 5 -> lower index first
    assert lists.tolist() == [[5, 6, 4], [6, 4, 3]]


def test_beyond_accuracy_by_hand():
    rows = [("1", "a", 1), ("1", "b", 2), ("2", "a", 1), ("2", "c", 2), ("3", "d", 1)]
    s = leave_one_out(make_dataset(rows, {"a": ["X"], "b": ["X"], "c": ["Y"]}))
    # a..d = 1..4; training: u1 [a], u2 [a], u3 [d]
    res = beyond_accuracy(np.array([[1, 2], [1, 3]]), s)
    assert res["coverage@2"] == pytest.approx(3 / 4)
    assert res["diversity@2"] == pytest.approx(0.5)  # (a, b) same genre: 0; (a, c): 1
    p = {1: 3 / 4, 2: 1 / 4, 3: 1 / 4}  # (users with the item in training + 1) / (n_users + 1)
    assert res["novelty@2"] == pytest.approx(np.mean([-np.log2(p[i]) for i in (1, 2, 1, 3)]))
