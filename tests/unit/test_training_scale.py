"""Training at the user's scale (issue 13): the early-stopping validation sample is bounded, and the
pair-scoring rankers are evaluated over candidates (users x candidates pairs, never users x items),
with the same ranks the full users x items matrix would give."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recstack.data import load_dataset
from recstack.evaluation import Split, candidate_ranks, leave_one_out, target_ranks
from recstack.training.examples import SplitFeatures, build_features
from recstack.training.pipeline import validation_sample
from recstack.training.plans import ModelPlan, build_task
from recstack.training.tasks import Candidates, PairTaskConfig, RankerTaskConfig
from recstack.training.trainer import TrainerConfig, evaluate_task, fit

# 500 users x about 1,200 ranked items; the candidate lists hold 25 items per user
SPEC = "synthetic:n_users=500,n_items=3000,events_per_user=8,popularity_exponent=0.5,seed=4"
WIDTH = 25


@pytest.fixture(scope="module")
def data() -> tuple[Split, SplitFeatures]:
    split = leave_one_out(load_dataset(SPEC))
    return split, build_features(split, 10)


def random_candidates(split: Split, width: int, seed: int = 0) -> Candidates:
    """Per stage, ``width`` unseen items per user with a target; the target is in about half of them."""
    rng = np.random.default_rng(seed)
    lists = {}
    for stage in ("valid", "test"):
        targets = split.targets(stage)
        users = np.flatnonzero(targets > 0)
        cands = []
        for u in users:
            items = rng.choice(np.arange(1, split.n_items + 1), width, replace=False)
            if rng.random() < 0.5 and targets[u] not in items:
                items[0] = targets[u]
            cands.append(items)
        lists[stage] = (users, cands)
    return Candidates(lists)


def test_candidate_ranks_equal_the_full_matrix_ranks(data) -> None:
    split, _ = data
    cands = random_candidates(split, WIDTH)
    rng = np.random.default_rng(1)
    for stage in ("valid", "test"):
        users = cands.lists[stage][0]
        # coarse scores: many ties, which the pessimistic tie rule must count the same way
        table = {int(u): rng.integers(0, 5, WIDTH).astype(np.float64) for u in users}

        def sparse(batch: np.ndarray, stage=stage, table=table) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            items, valid = cands.grid(batch, stage)
            return items, valid, np.stack([table[int(u)] for u in batch])

        def dense(batch: np.ndarray, sparse=sparse) -> np.ndarray:
            items, valid, scores = sparse(batch)
            return cands.scatter(scores, items, valid, split.n_items)

        u_sparse, r_sparse = candidate_ranks(sparse, split, stage, users)
        u_dense, r_dense = target_ranks(dense, split, stage, users)
        assert u_sparse.tolist() == u_dense.tolist()
        assert r_sparse.tolist() == r_dense.tolist()
        assert (r_sparse <= 10).any() and (r_sparse == split.n_items + 2).any()  # hits and misses


class PairCounter:
    """Counts the (user, item) pairs a ranker's model scores (wraps its forward/score_grid)."""

    def __init__(self) -> None:
        self.pairs = 0
        self.widest = 0

    def wrap(self, fn):
        def counted(*args):
            items = args[-1] if len(args) > 2 else args[1]
            self.pairs += int(items.numel())
            self.widest = max(self.widest, int(items.shape[-1]) if items.dim() > 1 else 0)
            return fn(*args)

        return counted


@pytest.mark.parametrize("name", ["multitask", "ncf"])
def test_pair_scoring_rankers_score_only_candidates(data, name: str, monkeypatch) -> None:
    split, feats = data
    cands = random_candidates(split, WIDTH)
    t = TrainerConfig(epochs=1, patience=1, progress=False, threads=1)
    if name == "multitask":
        plan = ModelPlan({"dim": 4, "bottom": (8,), "tower": 4}, RankerTaskConfig(batch_size=256), t)
    else:
        plan = ModelPlan({"mf_dim": 4, "mlp_dims": (8,)}, PairTaskConfig(batch_size=256, n_negatives=2), t)
    task = build_task(name, plan, split, feats, {}, cands)
    counter = PairCounter()
    if name == "multitask":
        monkeypatch.setattr(task.model, "score_grid", counter.wrap(task.model.score_grid))
    else:
        monkeypatch.setattr(task.model, "forward", counter.wrap(task.model.forward))
    monkeypatch.setattr(Candidates, "scatter", lambda *a: pytest.fail("a users x items matrix was built"))
    res = evaluate_task(task, split, "test")
    n_users = len(cands.lists["test"][0])
    assert res["users"] == n_users
    assert counter.pairs == n_users * WIDTH  # exactly the candidates
    assert counter.pairs * 40 < n_users * split.n_items  # far below users x items
    assert 0.0 <= res["NDCG@10"] <= 1.0


def test_validation_sample_is_bounded_and_fixed(data) -> None:
    split, _ = data
    with_target = np.flatnonzero(split.valid_target > 0)
    sample = validation_sample(split, 100, seed=3)
    assert len(sample) == 100 and len(set(sample.tolist())) == 100
    assert set(sample.tolist()) <= set(with_target.tolist())
    assert sample.tolist() == validation_sample(split, 100, seed=3).tolist()  # same users every run
    assert validation_sample(split, len(with_target), seed=3) is None  # all users: no sampling


def test_early_stopping_validates_only_the_sample(data, monkeypatch) -> None:
    split, feats = data
    seen: list[int] = []
    t = TrainerConfig(epochs=2, patience=2, progress=False, threads=1)
    plan = ModelPlan({"dim": 4}, PairTaskConfig(batch_size=512), t)
    task = build_task("bpr_mf", plan, split, feats)
    score_all = task.score_all
    monkeypatch.setattr(
        task, "score_all", lambda u, stage: seen.append((stage, len(u))) or score_all(u, stage)
    )
    sample = validation_sample(split, 64, seed=0)
    torch.manual_seed(0)
    result = fit(task, split, t, valid_users=sample)
    valid_rows = sum(n for stage, n in seen if stage == "valid")
    assert valid_rows == 2 * 64  # two validations, 64 users each
    assert result.valid["users"] == 64
    assert result.valid_seconds > 0 and result.test_seconds > 0


def test_rankers_without_retrieval_rank_popular_candidates(tmp_path, monkeypatch) -> None:
    """--models multitask alone: no two-tower to retrieve with, still never users x items."""
    import json

    from recstack.models.multitask import MultiTaskRanker
    from recstack.training import TrainConfig, train_bundle

    monkeypatch.setattr(MultiTaskRanker, "score_matrix", lambda *a: pytest.fail("scored every item"))
    t = TrainerConfig(epochs=1, patience=1, progress=False, threads=1)
    config = TrainConfig(
        models={
            "multitask": ModelPlan(
                {"dim": 4, "bottom": (8,), "tower": 4}, RankerTaskConfig(batch_size=256), t
            )
        },
        max_len=5,
        progress=False,
        threads=1,
        retrieve_n=20,
    )
    vdir = train_bundle("synthetic:n_users=80,n_items=300,events_per_user=8", tmp_path, config)
    rec = json.loads((vdir / "metrics.json").read_text())["models"]["multitask"]
    assert rec["over"] == "popularity candidates (20)"
    assert rec["test"]["users"] > 0
    stages = json.loads((vdir / "metrics.json").read_text())["stage_seconds"]
    assert {"load", "split", "features", "ranker_candidates", "train_rankers"} <= set(stages)
