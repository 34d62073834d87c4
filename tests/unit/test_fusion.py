"""Score fusion: design matrix, listwise fit, cross-validation, serialisation, and the reranker's
fusion / order methods."""

from __future__ import annotations

import numpy as np
import pytest

from recstack.features.types import UserFeatures
from recstack.serving.fusion import (
    Fusion,
    FusionData,
    cross_validated,
    design_matrix,
    fit_fusion,
    ndcg_at,
    rank_feature,
)
from recstack.serving.reranker import Reranker
from tests.helpers import FakeBundle, SuccessorModel


def test_design_matrix_standardises_ranks_and_zeros_missing_scores() -> None:
    x = design_matrix({"a": np.array([3.0, 1.0, 2.0]), "b": np.array([1.0, np.nan, 1.0])}, ["a", "b", "c"], 3)
    np.testing.assert_allclose(x[:, 0], (np.array([3, 1, 2]) - 2) / np.std([3, 1, 2]))
    np.testing.assert_allclose(x[:, 1], -np.log2([1, 3, 2]))
    assert x[1, 2] < x[0, 2] == x[2, 2]  # NaN ranks last
    assert (x[:, 4:] == 0).all()  # "c" missing: contributes nothing
    np.testing.assert_allclose(rank_feature(np.array([5.0, 5.0, 1.0])), -np.log2([1.5, 1.5, 3]))
    np.testing.assert_allclose(rank_feature(np.array([1.0, 5.0, 3.0])), -np.log2([3, 1, 2]))
    x = np.array([2.0, 7.0, 2.0, 7.0, 0.0, 2.0])  # ties share their mean rank, whatever the order
    perm = np.array([3, 0, 5, 1, 4, 2])
    np.testing.assert_allclose(rank_feature(x)[perm], rank_feature(x[perm]))
    np.testing.assert_allclose(rank_feature(x), -np.log2(1 + np.array([3, 0.5, 3, 0.5, 5, 3])))


def _lists(n_lists: int, rng: np.random.Generator) -> tuple[list[dict], list[int], list[int]]:
    """Lists of 20 candidates where the target has the highest "good" + noise, "bad" is noise."""
    lists, sizes, targets = [], [], []
    for _ in range(n_lists):
        t = int(rng.integers(20))
        good = rng.normal(size=20)
        good[t] += 2.5
        lists.append({"good": good, "bad": rng.normal(size=20)})
        sizes.append(20)
        targets.append(t)
    return lists, sizes, targets


def test_fit_finds_the_informative_score_and_cross_validation_measures_it() -> None:
    rng = np.random.default_rng(0)
    lists, sizes, targets = _lists(400, rng)
    data = FusionData.build(lists, sizes, targets + [], ["good", "bad"])
    fusion = fit_fusion(data, ["good", "bad"], l2=1e-3)
    w = fusion.weights.reshape(2, 2)
    assert w[0].sum() > 5 * np.abs(w[1]).sum()
    cv = cross_validated(data, ["good", "bad"], 1e-3).mean()
    only_good = ndcg_at(
        np.stack([x["good"] for x in lists]), np.ones((400, 20), bool), np.array(targets)
    ).mean()
    assert cv == pytest.approx(only_good, abs=0.03)
    # lists that miss their target teach nothing
    assert len(FusionData.build(lists[:3], sizes[:3], [-1, 0, -1], ["good"]).target) == 1


def test_fusion_round_trip_and_bad_settings() -> None:
    f = Fusion(["a", "b"], np.array([1.0, 0.0, 0.0, 0.0]), 0.01)
    g = Fusion.from_dict(f.to_dict())
    assert g.features == ["a", "b"] and np.array_equal(g.weights, f.weights)
    assert g.needs() == ["a"]
    with pytest.raises(ValueError, match="weights must hold 4"):
        Fusion.from_dict({**f.to_dict(), "weights": [1.0]})
    with pytest.raises(ValueError, match="format"):
        Fusion.from_dict({**f.to_dict(), "format": 99})


def test_reranker_fusion_uses_components_sequence_scores_and_popularity() -> None:
    cands = ["m2", "m5", "m9", "m4"]
    up = np.array([4.0, 3.0, 2.0, 1.0])
    # fusion on the sequence model only: newest m3 -> successor m4 first, then m5/m2 (distance 1, 2)
    seq_only = Fusion(["sasrec", "two_tower"], np.array([1.0, 0.0, 0.0, 0.0]))
    settings = {"rerank": {"method": "fusion", "fusion": seq_only.to_dict()}}
    rr = Reranker(FakeBundle({"sasrec": SuccessorModel()}, configs=settings))
    assert rr.rerank(UserFeatures("u1", recent_items=["m3"]), cands, up)[0] == ["m4", "m5", "m2", "m9"]
    # fusion on a component the earlier stages sent
    tt_only = Fusion(["sasrec", "two_tower"], np.array([0.0, 0.0, 1.0, 0.0]))
    rr = Reranker(
        FakeBundle(
            {"sasrec": SuccessorModel()},
            configs={"rerank": {"method": "fusion", "fusion": tt_only.to_dict()}},
        )
    )
    comps = {"two_tower": np.array([0.1, 0.9, 0.5, 0.2])}
    assert rr.rerank(UserFeatures("u1", recent_items=["m3"]), cands, up, components=comps)[0] == [
        "m5",
        "m9",
        "m4",
        "m2",
    ]
    # a cold user (no known recent item) has no sequence scores: the rest of the fusion still orders
    assert rr.rerank(UserFeatures("u1"), cands, up, components=comps)[0] == ["m5", "m9", "m4", "m2"]
    with pytest.raises(ValueError, match="one score per candidate"):
        rr.rerank(UserFeatures("u1"), cands, up, components={"two_tower": np.zeros(2)})


def test_reranker_order_method_and_explicit_model_blend() -> None:
    cands = ["m2", "m5", "m9", "m4"]
    up = np.array([4.0, 3.0, 2.0, 1.0])
    configs = {"rerank": {"method": "order", "order": "retrieval", "blend": {"sasrec": 1.0}}}
    rr = Reranker(FakeBundle({"sasrec": SuccessorModel()}, configs=configs))
    comps = {"retrieval": np.array([0.0, 1.0, 3.0, 2.0])}
    u = UserFeatures("u1", recent_items=["m3"])
    assert rr.rerank(u, cands, up, components=comps)[0] == ["m9", "m4", "m5", "m2"]
    assert rr.rerank(u, cands, up)[0] == cands  # the score is missing: the upstream order stays
    assert rr.rerank(u, cands, up, model="sasrec")[0][0] == "m4"  # a variant naming a model: the blend
    with pytest.raises(ValueError, match="method must be one of"):
        Reranker(FakeBundle({"sasrec": SuccessorModel()}, configs={"rerank": {"method": "magic"}}))


def test_sequence_scores_computed_by_retrieval_are_reused() -> None:
    model = SuccessorModel()
    seq_only = Fusion(["sasrec"], np.array([1.0, 0.0]))
    rr = Reranker(
        FakeBundle({"sasrec": model}, configs={"rerank": {"method": "fusion", "fusion": seq_only.to_dict()}})
    )
    cands, up = ["m2", "m5", "m9"], np.array([3.0, 2.0, 1.0])
    u = UserFeatures("u1", recent_items=["m3"])
    given = {"sasrec": np.array([0.0, 5.0, 1.0])}  # what the retrieval stage sent for every candidate
    assert rr.rerank(u, cands, up, components=given)[0] == ["m5", "m9", "m2"]
    assert model.seen == []  # no second forward pass
    partial = {"sasrec": np.array([0.0, np.nan, 1.0])}  # incomplete: computed here instead
    assert rr.rerank(u, cands, up, components=partial)[0][0] == "m5" and len(model.seen) == 1
