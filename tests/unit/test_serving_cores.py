"""Retriever and Ranker over a small bundle: exclusions, scores, order, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recstack.artifacts import load_bundle
from recstack.features.types import UserFeatures
from recstack.serving.features_adapter import user_features_to_arrays, user_features_to_tensors
from recstack.serving.ranker import Ranker
from recstack.serving.retriever import Retriever, merge_ranked
from tests.helpers import make_bundle

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
    ids, scores, components = r.retrieve(USER, 5, exclude={"i2", "i5"})
    assert len(ids) == 5 and len(set(ids)) == 5 and not {"i2", "i5"} & set(ids)
    assert np.all(np.diff(scores) < 0)  # the merged order: one source, 1 / (rank + 1)
    np.testing.assert_allclose(scores, 1.0 / np.arange(1, 6))
    np.testing.assert_allclose(components["retrieval"], scores)
    model = bundle.model("two_tower")
    u, h, g = user_features_to_tensors(USER, bundle, model.cfg.max_len)
    with torch.inference_mode():
        expected = (model.user_embedding(u, h, g) @ model.item_embeddings().T)[0].numpy()
    idx = bundle.item_map.index(ids)
    assert np.allclose(components["two_tower"], expected[idx], atol=1e-5)
    allowed = [i for i in range(1, 9) if i not in (2, 5)]
    assert set(idx) == set(sorted(allowed, key=lambda i: -expected[i])[:5])


def test_retriever_unknown_user_and_small_catalogue(bundle) -> None:
    r = Retriever(bundle)
    ids, _, _ = r.retrieve(UserFeatures("never-seen"), 100, exclude={"i1"})
    assert len(ids) == 7 and "i1" not in ids
    with pytest.raises(ValueError, match="n must be >= 1"):
        r.retrieve(USER, 0)


def test_merge_ranked_gives_each_source_its_share() -> None:
    ranked = {"a": np.array([1, 2, 3, 4, 5]), "b": np.array([9, 2, 8, 7, 6])}
    items, keys = merge_ranked(ranked, {"a": 0.5, "b": 0.5}, 6)
    # keys (rank + 1) / 0.5: a1 2, b9 2, a2 4 (b2 4 too: first appearance wins), a3 6, b8 6, a4 8
    assert items.tolist() == [1, 9, 2, 3, 8, 4]
    np.testing.assert_allclose(keys, [2, 2, 4, 6, 6, 8])
    only_b, _ = merge_ranked(ranked, {"a": 0.0, "b": 1.0}, 3)
    assert only_b.tolist() == [9, 2, 8]
    heavy_a, _ = merge_ranked(ranked, {"a": 0.75, "b": 0.25}, 4)
    assert heavy_a.tolist() == [1, 2, 3, 9]  # b's first item is always in


def test_retriever_with_a_sequence_source_returns_its_exact_top_items(tmp_path) -> None:
    from recstack.artifacts import save_bundle
    from recstack.models.sasrec import SASRec, SASRecConfig

    make_bundle(tmp_path / "a")
    base = load_bundle(tmp_path / "a")
    torch.manual_seed(1)
    sasrec = SASRec(SASRecConfig(n_items=8, max_len=5, dim=8, n_layers=1, n_heads=1))
    with torch.no_grad():
        sasrec.out_bias.normal_()  # the bias is part of the score: the index must carry it
    models = {n: base.model(n) for n in base.model_names} | {"sasrec": sasrec}
    save_bundle(
        tmp_path / "b",
        models=models,
        item_ids=base.item_map.ids,
        item_genres={},
        titles={},
        genre_vocab=base.genre_vocab,
        popularity=base.popularity,
        user_ids=base.user_ids,
        metrics={},
        data_spec="synthetic",
        serving={"retrieval": {"sources": {"two_tower": 0.0, "sasrec": 1.0}}},
    )
    bundle = load_bundle(tmp_path / "b")
    r = Retriever(bundle)
    assert r.shares == {"two_tower": 0.0, "sasrec": 1.0}
    ids, _, components = r.retrieve(USER, 4, exclude={"i3"})
    _, hist, _ = user_features_to_arrays([USER], bundle, 5)
    with torch.inference_mode():
        full = sasrec.eval().score_all(torch.from_numpy(hist))[0].numpy()
    full[[0, 3]] = -np.inf  # padding and the excluded i3
    assert bundle.item_map.index(ids).tolist() == np.argsort(-full, kind="stable")[:4].tolist()
    np.testing.assert_allclose(components["sasrec"], full[bundle.item_map.index(ids)], atol=1e-5)
    assert set(components) == {"retrieval", "two_tower", "sasrec"}  # share 0: scores, never retrieves
    cold_ids, _, cold = r.retrieve(UserFeatures("stranger"), 3)
    assert len(cold_ids) == 3 and "sasrec" not in cold  # no history: two_tower retrieves instead
    np.testing.assert_allclose(cold["two_tower"], np.sort(cold["two_tower"])[::-1])


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


def test_ranker_ranks_unknown_items_last(bundle) -> None:
    ids, scores, probs = Ranker(bundle).rank(USER, ["bogus", "i1", "i3", "new"])
    assert sorted(ids[:2]) == ["i1", "i3"] and ids[2:] == ["bogus", "new"]  # upstream order kept
    assert scores[2] == scores[3] < scores[1] and probs["click"][2:].tolist() == [0.0, 0.0]


def test_merge_ranked_matches_the_definition_on_random_lists() -> None:
    """Min over sources of (rank + 1) / share, ties by first appearance (sources in order)."""
    import math

    rng = np.random.default_rng(7)
    for _ in range(200):
        ranked = {
            s: rng.permutation(np.arange(1, 40))[: rng.integers(0, 25)]
            for s in ("a", "b", "c")[: rng.integers(1, 4)]
        }
        shares = {s: float(rng.choice([0.0, 0.25, 0.5, 1.0])) for s in ranked}
        n = int(rng.integers(1, 30))
        best: dict[int, float] = {}
        for name, items in ranked.items():
            if shares[name] <= 0:
                continue
            for r, item in enumerate(items.tolist()):
                key = (r + 1) / shares[name]
                if key < best.get(item, math.inf):
                    best[item] = key
        expected = sorted(best, key=best.__getitem__)[:n]
        items, keys = merge_ranked(ranked, shares, n)
        assert items.tolist() == expected
        np.testing.assert_allclose(keys, [best[i] for i in expected])
