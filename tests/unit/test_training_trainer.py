"""The one trainer: early stopping, best-weight restore, determinism; two-tower learns planted structure."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from recstack.evaluation import Split, evaluate_scores, leave_one_out
from recstack.models.mf import BPRMF, BPRMFConfig
from recstack.models.two_tower import TwoTower, TwoTowerConfig
from recstack.training.examples import build_features
from recstack.training.tasks import BPRTask, TwoTowerTask, TwoTowerTaskConfig
from recstack.training.trainer import TrainerConfig, TrainingError, fit, seed_everything
from tests.helpers import planted_dataset


@pytest.fixture(scope="module")
def planted_split() -> Split:
    return leave_one_out(planted_dataset())


class ScriptedTask:
    """A task whose validation quality follows a script: epoch e scores like ``quality[e]``."""

    def __init__(self, split: Split, quality: list[float]):
        self.name = "scripted"
        self.model = torch.nn.Linear(1, 1)
        self.split = split
        self.quality = quality
        self.epoch = -1

    def on_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch
        with torch.no_grad():
            self.model.weight.fill_(float(epoch))

    def batches(self, epoch: int, rng: np.random.Generator) -> Iterator[torch.Tensor]:
        yield torch.ones(2, 1)

    def loss(self, batch: torch.Tensor) -> torch.Tensor:
        return (self.model(batch) * 0.0).sum()

    def score_all(self, user_indices: np.ndarray, stage: str) -> np.ndarray:
        # a perfect scorer mixed with a constant one: quality 1 ranks every target first
        q = self.quality[int(round(self.model.weight.item()))]
        targets = self.split.targets(stage)[user_indices]
        scores = np.zeros((len(user_indices), self.split.n_items + 1))
        good = np.arange(len(user_indices)) < q * len(user_indices)
        scores[np.arange(len(user_indices))[good], targets[good]] = 1.0
        return scores


def test_early_stopping_restores_best_epoch(planted_split: Split) -> None:
    task = ScriptedTask(planted_split, [0.2, 0.9, 0.5, 0.4, 0.3, 0.95, 0.1])
    res = fit(task, planted_split, TrainerConfig(epochs=7, lr=0.0 + 1e-9, patience=3, progress=False))
    assert res.best_epoch == 2  # epochs 3, 4, 5 did not improve -> stop before epoch 6 (0.95)
    assert len(res.history) == 5
    assert task.model.weight.item() == pytest.approx(1.0)  # the weights of epoch index 1 (epoch 2)
    assert res.test["NDCG@10"] == pytest.approx(0.9, abs=0.03)
    assert res.train_seconds > 0 and res.peak_rss_mb > 10


def test_eval_every_skips_evaluations(planted_split: Split) -> None:
    task = ScriptedTask(planted_split, [0.1, 0.2, 0.3, 0.4])
    res = fit(task, planted_split, TrainerConfig(epochs=4, lr=1e-9, eval_every=2, progress=False))
    assert ["valid" in h for h in res.history] == [False, True, False, True]
    assert res.best_epoch == 4


def test_bad_config_is_rejected(planted_split: Split) -> None:
    with pytest.raises(TrainingError, match="patience"):
        fit(ScriptedTask(planted_split, [0.1]), planted_split, TrainerConfig(patience=0, progress=False))


def _bpr_fit(split: Split, seed: int) -> dict:
    seed_everything(seed)  # the initial weights come from torch's global generator
    feats = build_features(split, 10)
    task = BPRTask(BPRMF(BPRMFConfig(split.n_users, split.n_items, dim=8)), feats)
    return fit(task, split, TrainerConfig(epochs=3, lr=1e-2, seed=seed, progress=False, threads=1)).test


def test_same_seed_same_metrics(planted_split: Split) -> None:
    first = _bpr_fit(planted_split, 3)
    assert first == _bpr_fit(planted_split, 3)
    assert first != _bpr_fit(planted_split, 4)


def test_two_tower_learns_planted_groups(planted_split: Split) -> None:
    torch.manual_seed(0)
    feats = build_features(planted_split, 10)
    cfg = TwoTowerConfig(
        planted_split.n_users, planted_split.n_items, feats.genres.n_genres, dim=16, hidden=32, max_len=10
    )
    task = TwoTowerTask(TwoTower(cfg, feats.genres.matrix), feats, TwoTowerTaskConfig(batch_size=64))
    res = fit(task, planted_split, TrainerConfig(epochs=15, lr=1e-2, patience=15, progress=False, threads=1))
    rng = np.random.default_rng(0)
    random = evaluate_scores(lambda u: rng.random((len(u), planted_split.n_items + 1)), planted_split, "test")
    # in-group targets: ~10 of ~21 remaining in-group items -> HR@10 ~ 0.45; random ~ 10/51
    assert res.test["HR@10"] > 0.35
    assert res.test["HR@10"] > random["HR@10"] + 0.1


def test_time_budget_and_checkpoint(planted_split: Split, tmp_path) -> None:
    task = ScriptedTask(planted_split, [0.3, 0.6, 0.9])
    cfg = TrainerConfig(epochs=3, lr=1e-9, max_minutes=1e-9, checkpoint_dir=tmp_path, progress=False)
    res = fit(task, planted_split, cfg)
    assert len(res.history) == 1 and res.best_epoch == 1
    state = torch.load(tmp_path / "scripted.best.pt", weights_only=True)
    assert state["weight"].item() == pytest.approx(0.0)
