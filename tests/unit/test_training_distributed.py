"""Distributed training pieces: user shards cover every training row once, with 1/world batches;
the gradient all-reduce gives every worker the gradient of the union of their batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recstack.evaluation import Split, leave_one_out
from recstack.training.distributed import Dist, GradSync, user_shard
from recstack.training.examples import build_features
from recstack.training.plans import ModelPlan, build_task
from recstack.training.sequential_tasks import SASRecTaskConfig
from recstack.training.tasks import PairTaskConfig, RankerTaskConfig, TwoTowerTaskConfig
from tests.helpers import planted_dataset


@pytest.fixture(scope="module")
def split() -> Split:
    return leave_one_out(planted_dataset())


def test_user_shards_partition_the_users() -> None:
    shards = [user_shard(10, r, 3) for r in range(3)]
    assert np.array_equal(np.sum(shards, axis=0), np.ones(11, dtype=int))
    assert [int(s.sum()) for s in shards] == [4, 4, 3]


def _rows(task) -> list[tuple]:
    """The positive training rows one pass of ``task`` draws: (user, item), or a window's targets."""
    out: list[tuple] = []
    for batch in task.batches(0, np.random.default_rng(0)):
        if not isinstance(batch, dict):  # sequence windows (inputs, targets), padding trimmed per batch
            out += [tuple(x for x in row if x) for row in batch[1].tolist()]
            continue
        if "label" in batch:  # NeuMF: one row per (user, item), label 1 for the positive
            keep = batch["label"] == 1
            user, item = batch["user"][keep], batch["item"][keep]
        elif "pos" in batch:  # BPR
            user, item = batch["user"], batch["pos"]
        else:  # two-tower [B], ranker [B, 1 + negatives] with the positive first
            user, item = batch["user"], batch["item"]
            item = item[:, 0] if item.dim() == 2 else item
        out += list(zip(user.tolist(), item.tolist(), strict=True))
    return out


@pytest.mark.parametrize(
    ("name", "task_cfg"),
    [
        ("two_tower", TwoTowerTaskConfig(batch_size=64, user_dropout=0.0)),
        ("multitask", RankerTaskConfig(batch_size=64)),
        ("bpr_mf", PairTaskConfig(batch_size=64)),
        ("ncf", PairTaskConfig(batch_size=64, n_negatives=2)),
        ("sasrec", SASRecTaskConfig(max_len=10, dim=8, n_layers=1, n_heads=1, batch_size=64)),
    ],
)
def test_shards_cover_every_training_row_once_with_smaller_batches(split: Split, name, task_cfg) -> None:
    feats = build_features(split, 10)
    plan = ModelPlan(task=task_cfg)
    whole = _rows(build_task(name, plan, split, feats))
    parts = []
    for rank in range(2):
        task = build_task(name, plan, split, feats)
        task.shard(user_shard(split.n_users, rank, 2), 2)
        size = task.batch_size if hasattr(task, "batch_size") else task.cfg.batch_size
        assert size == 32
        parts.append(_rows(task))
    assert sorted(parts[0] + parts[1]) == sorted(whole)
    assert parts[0] and parts[1]


def _worker(rank: int, path: str, out: str) -> None:
    import torch.distributed as td

    td.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1)
        x = torch.arange(15, dtype=torch.float32).reshape(5, 3) / 10
        rows = [slice(0, 3), slice(3, 5)][rank]  # 3 rows on rank 0, 2 on rank 1
        loss = ((model(x[rows]) - 1) ** 2).mean()
        loss.backward()
        sync = GradSync(list(model.parameters()), Dist(rank, 2, rank, "gloo"))
        total, mean_loss = sync.reduce(float(rows.stop - rows.start), float(loss))
        torch.save({"grads": [p.grad for p in model.parameters()], "total": total}, f"{out}.{rank}")
    finally:
        td.destroy_process_group()


def test_grad_sync_gives_the_gradient_of_the_union_batch(tmp_path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path / "out")), nprocs=2, join=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    x = torch.arange(15, dtype=torch.float32).reshape(5, 3) / 10
    ((model(x) - 1) ** 2).mean().backward()
    for rank in range(2):
        got = torch.load(tmp_path / f"out.{rank}")
        assert got["total"] == 5
        for g, p in zip(got["grads"], model.parameters(), strict=True):
            assert torch.allclose(g, p.grad, atol=1e-6)
