"""train_bundle end to end on tiny synthetic data; evaluate_bundle reproduces the recorded metrics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from recstack.artifacts import load_bundle
from recstack.data import DataError, load_dataset
from recstack.data.schema import item_created_at
from recstack.evaluation import evaluate_scores, leave_one_out
from recstack.models.baselines import ItemKNN, Popularity
from recstack.training import ModelPlan, TrainConfig, TrainerConfig, train_bundle
from recstack.training.bundle_eval import evaluate_bundle
from recstack.training.pipeline import UnknownModelNameError
from recstack.training.tasks import PairTaskConfig, RankerTaskConfig, TwoTowerTaskConfig

SPEC = "synthetic:n_users=60,n_items=50,events_per_user=15"


def tiny_config() -> TrainConfig:
    t = TrainerConfig(epochs=2, lr=3e-3, patience=2)
    return TrainConfig(
        models={
            "two_tower": ModelPlan({"dim": 8, "hidden": 8}, TwoTowerTaskConfig(batch_size=64), t),
            "multitask": ModelPlan(
                {"dim": 4, "bottom": (8,), "tower": 4}, RankerTaskConfig(batch_size=128), t
            ),
            "bpr_mf": ModelPlan({"dim": 4}, PairTaskConfig(batch_size=128), t),
        },
        max_len=5,
        progress=False,
        threads=1,
        retrieve_n=20,
    )


def test_train_bundle_writes_a_loadable_bundle(tmp_path: Path) -> None:
    vdir = train_bundle(SPEC, tmp_path, tiny_config())
    assert (tmp_path / "CURRENT").read_text().strip() == vdir.name
    b = load_bundle(tmp_path)
    assert set(b.model_names) == {"two_tower", "multitask", "bpr_mf"}
    metrics = json.loads((vdir / "metrics.json").read_text())
    for name in b.model_names:
        rec = metrics["models"][name]
        assert rec["train_seconds"] > 0 and rec["peak_rss_mb"] > 0 and 0 <= rec["test"]["NDCG@10"] <= 1
    assert "pipeline" in metrics and metrics["pipeline"]["test"]["users"] > 0
    assert b.configs["rerank"]["method"] in ("fusion", "order")
    assert b.configs["retrieval"]["sources"] == {"two_tower": 1.0}  # no sequence model trained
    # the pipeline is at least as good as every single stage's order on validation (by construction)
    valid = metrics["pipeline"]["valid"]
    assert valid["NDCG@10"] >= max(valid["orders"].values())
    assert valid["orders"].keys() >= {"retrieval", "two_tower", "ranking", "p_click", "popularity"}
    # catalog.json created_at: every catalogue item of the synthetic data has a creation time
    created = item_created_at(load_dataset(SPEC).items)
    assert b.created_at == {i: created[i] for i in b.item_map.ids} and len(b.created_at) == len(b.item_map)
    results = evaluate_bundle(SPEC, tmp_path)
    for name in b.model_names:
        assert results[name]["NDCG@10"] == pytest.approx(metrics["models"][name]["test"]["NDCG@10"], abs=1e-6)
    assert results["pipeline"]["NDCG@10"] == pytest.approx(metrics["pipeline"]["test"]["NDCG@10"], abs=1e-6)
    # every model is reported next to the non-neural baselines, fitted on the same split
    split = leave_one_out(load_dataset(SPEC))
    for name, baseline in (("pop", Popularity()), ("itemknn", ItemKNN())):
        expected = evaluate_scores(baseline.fit(split).scorer("test"), split, "test")
        assert results[name]["NDCG@10"] == pytest.approx(expected["NDCG@10"], abs=1e-12)


def test_bad_spec_and_model_names(tmp_path: Path) -> None:
    with pytest.raises(DataError):
        train_bundle("synthetic:nope=1", tmp_path, tiny_config())
    with pytest.raises(UnknownModelNameError, match="unknown model"):
        tiny_config().select(["two_tower", "deepfm"])
