"""Retriever and Ranker over a small bundle: exclusions, scores, order, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recstack.artifacts import load_bundle
from recstack.features.types import UserFeatures
from recstack.serving.errors import UnknownItemError
from recstack.serving.features_adapter import user_features_to_arrays, user_features_to_tensors
from recstack.serving.ranker import Ranker
from recstack.serving.retriever import Retriever
from tests.unit.test_artifacts_bundle import make_bundle

USER = UserFeatures("u2", recent_items=["i3", "i1", "unknown-item"], genre_scores={"A": 0.4, "Z": 9.0})


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bundle")
    make_bundle(root)
    return load_bundle(root)


def test_features_adapter(bundle) -> None:
    u, h, g = user_features_to_arrays([USER, UserFeatures("stranger")], bundle, 4)
    assert u.tolist() == [2, 0]
    assert h.tolist() == [[0, 0, 1, 3], [0, 0, 0, 0]]  # newest first in Redis -> oldest first, padded
    assert g.tolist() == [[pytest.approx(0.4), 0.0], [0.0, 0.0]]  # unknown genre "Z" ignored
    ut, ht, gt = user_features_to_tensors(USER, bundle, 4)
    assert ut.shape == (1,) and ht.shape == (1, 4) and gt.shape == (1, 2)


def test_retriever_excludes_and_scores_are_inner_products(bundle) -> None:
    r = Retriever(bundle)
    ids, scores = r.retrieve(USER, 5, exclude={"i2", "i5"})
    assert len(ids) == 5 and len(set(ids)) == 5 and not {"i2", "i5"} & set(ids)
    assert np.all(np.diff(scores) <= 1e-6)
    model = bundle.model("two_tower")
    u, h, g = user_features_to_tensors(USER, bundle, model.cfg.max_len)
    with torch.inference_mode():
        expected = (model.user_embedding(u, h, g) @ model.item_embeddings().T)[0].numpy()
    idx = bundle.item_map.index(ids)
    assert np.allclose(scores, expected[idx], atol=1e-5)
    allowed = [i for i in range(1, 9) if i not in (2, 5)]
    assert set(idx) == set(sorted(allowed, key=lambda i: -expected[i])[:5])


def test_retriever_unknown_user_and_small_catalogue(bundle) -> None:
    r = Retriever(bundle)
    ids, _ = r.retrieve(UserFeatures("never-seen"), 100, exclude={"i1"})
    assert len(ids) == 7 and "i1" not in ids
    with pytest.raises(ValueError, match="n must be >= 1"):
        r.retrieve(USER, 0)


@pytest.mark.parametrize("model", ["multitask", "ncf"])
def test_ranker_sorts_candidates(bundle, model: str) -> None:
    cands = ["i4", "i1", "i7", "i2"]
    ids, scores, probs = Ranker(bundle).rank(USER, cands, model=model)
    assert sorted(ids) == sorted(cands)
    assert np.all(np.diff(scores) <= 0)
    assert all(len(p) == 4 and np.all((p >= 0) & (p <= 1)) for p in probs.values())
    if model == "multitask":
        assert set(probs) == {"click", "like", "purchase"}
        assert np.allclose(scores, 0.5 * probs["click"] + 0.3 * probs["like"] + 0.2 * probs["purchase"])
        _, s2, p2 = Ranker(bundle).rank(USER, cands, weights={"like": 1.0})
        assert np.allclose(s2, p2["like"]) and np.all(np.diff(p2["like"]) <= 0)


def test_ranker_unknown_items(bundle) -> None:
    with pytest.raises(UnknownItemError, match="'bogus'") as err:
        Ranker(bundle).rank(USER, ["i1", "bogus"])
    assert isinstance(err.value, ValueError) and err.value.item_ids == ["bogus"]
