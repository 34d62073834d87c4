"""Reranker core: ordering, blending, cold users, unknown ids, one scoring path with the model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recstack.features.types import UserFeatures
from recstack.models.sasrec import SASRec, SASRecConfig
from recstack.serving.errors import UnknownItemError, UnknownModelError
from recstack.serving.reranker import Reranker, blend_scores, standardize
from tests.helpers import N_ITEMS, FakeBundle, SuccessorModel


def user(*recent_newest_first: str) -> UserFeatures:
    return UserFeatures(user_id="u1", recent_items=list(recent_newest_first))


def test_orders_by_sequence_model_and_passes_history_oldest_first() -> None:
    model = SuccessorModel()
    rr = Reranker(FakeBundle({"sasrec": model}))
    cands = ["m5", "m9", "m3", "m4"]
    ids, scores = rr.rerank(user("m3", "m7", "m1"), cands, np.array([4.0, 3.0, 2.0, 1.0]))
    # newest item m3 -> successor m4 first, then m5/m3 (distance 1, upstream order kept), then m9
    assert ids == ["m4", "m5", "m3", "m9"]
    assert np.all(np.diff(scores) <= 0)
    assert model.seen[-1].tolist() == [[0, 0, 1, 7, 3]]


def test_cold_user_keeps_upstream_order() -> None:
    rr = Reranker(FakeBundle({"sasrec": SuccessorModel()}))
    cands = ["m2", "m9", "m5"]
    up = np.array([0.1, 0.9, 0.5])
    for u in (user(), user("not-in-catalogue")):
        ids, scores = rr.rerank(u, cands, up)
        assert ids == cands
        np.testing.assert_array_equal(scores, up)


def test_blend_weight_mixes_standardised_scores() -> None:
    cands = ["m4", "m9"]
    up = np.array([0.0, 10.0])  # upstream prefers m9, the model prefers m4 (successor of m3)
    only_up = Reranker(FakeBundle({"sasrec": SuccessorModel()}), blend=0.0)
    assert only_up.rerank(user("m3"), cands, up)[0] == ["m9", "m4"]
    only_seq = Reranker(FakeBundle({"sasrec": SuccessorModel()}), blend=1.0)
    assert only_seq.rerank(user("m3"), cands, up)[0] == ["m4", "m9"]
    settings = {"rerank": {"model": "gru4rec", "blend": {"gru4rec": 0.3}}}
    from_bundle = Reranker(FakeBundle({"gru4rec": SuccessorModel()}, configs=settings))
    assert from_bundle.default_model == "gru4rec"
    assert from_bundle.blend_weight("gru4rec") == 0.3
    assert from_bundle.blend_weight("sasrec") == 1.0
    none_helps = Reranker(FakeBundle({"sasrec": SuccessorModel()}, configs={"rerank": {"model": None}}))
    assert none_helps.rerank(user("m3"), cands, up)[0] == ["m9", "m4"]  # upstream order
    assert none_helps.rerank(user("m3"), cands, up, model="sasrec")[0] == ["m4", "m9"]
    ids, scores = from_bundle.rerank(user("m3"), cands, up)
    # z(seq) = [1, -1], z(up) = [-1, 1]: final = 0.3*[1,-1] + 0.7*[-1,1] = [-0.4, 0.4]
    assert ids == ["m9", "m4"]
    np.testing.assert_allclose(scores, [0.4, -0.4])


def test_unknown_candidates_go_last_and_unknown_models_raise() -> None:
    from recstack.serving.candidates import UNKNOWN_CANDIDATES

    rr = Reranker(FakeBundle({"sasrec": SuccessorModel()}))
    before = UNKNOWN_CANDIDATES.labels("rerank")._value.get()
    # an item newer than the bundle (or from the stream's popularity list) never fails the list
    ids, scores = rr.rerank(user("m1"), ["zz", "m5", "m2", "yy"], np.array([9.0, 1.0, 0.5, 8.0]))
    assert ids == ["m2", "m5", "zz", "yy"] and scores[2] == scores[3] < scores[1]
    assert UNKNOWN_CANDIDATES.labels("rerank")._value.get() == before + 2
    assert rr.rerank(user(), ["zz"], np.zeros(1))[0] == ["zz"]  # a cold user too
    with pytest.raises(UnknownModelError, match="gru4rec"):
        rr.rerank(user("m1"), ["m1"], np.zeros(1), model="gru4rec")
    with pytest.raises(UnknownModelError, match="not a sequential model"):
        Reranker(FakeBundle({"sasrec": SuccessorModel()}), default_model="ncf")
    with pytest.raises(ValueError, match="one score per candidate"):
        rr.rerank(user("m1"), ["m1", "m2"], np.zeros(3))
    assert rr.rerank(user("m1"), [], np.zeros(0))[0] == []


def test_scores_match_the_offline_scoring_path() -> None:
    """The reranker's sequence scores are the model's score_all columns for the same history."""
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=N_ITEMS, max_len=6, dim=16, n_layers=1, n_heads=2)).eval()
    rr = Reranker(FakeBundle({"sasrec": model}))
    cands = ["m1", "m2", "m3", "m6", "m10"]
    seq = rr.score(user("m5", "m8", "m2"), cands)
    with torch.no_grad():
        full = model.score_all(torch.tensor([[2, 8, 5]]))[0].numpy()
    np.testing.assert_allclose(seq, full[[1, 2, 3, 6, 10]], rtol=1e-5)
    ids, _ = rr.rerank(user("m5", "m8", "m2"), cands, np.zeros(len(cands)))
    assert ids == [cands[i] for i in np.argsort(-seq, kind="stable")]


def test_score_batch_matches_single_requests() -> None:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(n_items=N_ITEMS, max_len=6, dim=16, n_layers=1, n_heads=2)).eval()
    rr = Reranker(FakeBundle({"sasrec": model}))
    users = [user("m5", "m8"), user(), user("m1", "m2", "m3")]
    cands = [["m1", "m2", "m3"], ["m4"], ["m9", "m10"]]
    got = rr.score_batch(users, cands)
    assert got[1] is None  # cold user
    for k in (0, 2):
        np.testing.assert_allclose(got[k], rr.score(users[k], cands[k]), rtol=1e-5, atol=1e-6)
    with pytest.raises(UnknownItemError):
        rr.score_batch([user("m1")], [["nope"]])
    with pytest.raises(ValueError, match="candidate lists"):
        rr.score_batch([user("m1")], [])


def test_standardize_and_blend_bounds() -> None:
    np.testing.assert_allclose(standardize(np.array([1.0, 3.0])), [-1.0, 1.0])
    np.testing.assert_array_equal(standardize(np.array([2.0, 2.0])), [0.0, 0.0])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        blend_scores(np.zeros(2), np.zeros(2), 1.5)
