"""Training profiles: what each model is trained with.

- ``auto`` (the default of ``recstack train``): sizes, batch sizes and budgets chosen from the
  data (:class:`DataStats`). Every model stops by early stopping on validation NDCG@10 within an
  epoch budget, so the same data and seed give the same bundle on an idle and on a busy machine;
  the per-model wall-clock cap (``TrainConfig.max_minutes``) is only a safety net that warns.
- ``small``: seconds on the synthetic demo data (smoke runs, tests, ``make demo``); also budgeted
  in epochs, never in minutes.

The rules of ``auto`` (no dataset-specific numbers): the sequence models see the last 50 items
(what Redis keeps), train with a full softmax up to 16,384 items and a sampled one (4,096
negatives) beyond, and validate every 200 optimiser steps whatever the size of the data, for at
most 100 validations, stopping after 8 without improvement; the other models validate once per
pass. Batches grow with the data (more rows per step where steps are plentiful). Regularisation
grows as the data gets sparser: dropout 0.5 when the median history is under 20 items, else 0.3.
BERT4Rec trains on random crops of the histories (every prefix ends a window now and then: its
masked-item task then also sees the serving situation often); the next-item models already
predict at every position and keep the fixed windows (crops measured worse for them on ml-100k).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from recstack.evaluation import Split
    from recstack.training.plans import ModelPlan

FULL_SOFTMAX_MAX_ITEMS = 16_384
SAMPLED_NEGATIVES = 4_096
SEQ_STEPS_PER_EVAL = 200


@dataclass(frozen=True)
class DataStats:
    """The shape of a split that the auto profile adapts to."""

    n_users: int
    n_items: int
    n_train: int  # training rows
    median_len: float  # median training history length over users with one
    n_genres: int
    feedback: bool  # ratings or like/purchase events: the multi-task labels carry signal

    @classmethod
    def of(cls, split: Split) -> DataStats:
        lengths = np.asarray([len(s) for s in split.train_seqs[1:]], dtype=np.int64)
        lengths = lengths[lengths > 0]
        ratings = np.concatenate(
            [np.asarray(r, np.float64) for r in split.train_ratings[1:]] or [np.zeros(0)]
        )
        events = {str(e) for seq in split.train_event_types[1:] for e in np.unique(seq)}
        return cls(
            n_users=split.n_users,
            n_items=split.n_items,
            n_train=int(lengths.sum()),
            median_len=float(np.median(lengths)) if len(lengths) else 0.0,
            n_genres=len(split.genre_vocab),
            feedback=bool(np.isfinite(ratings).any()) or bool(events & {"like", "purchase"}),
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def auto_plans(stats: DataStats) -> dict[str, ModelPlan]:
    """Plans for every model, chosen from ``stats`` (see the module docstring)."""
    from recstack.training import sequential_tasks as st
    from recstack.training.plans import ModelPlan
    from recstack.training.tasks import PairTaskConfig, RankerTaskConfig, TwoTowerTaskConfig
    from recstack.training.trainer import TrainerConfig

    big = stats.n_train > 500_000
    sparse = stats.median_len < 20
    dropout = 0.5 if sparse else 0.3
    loss_items = FULL_SOFTMAX_MAX_ITEMS if stats.n_items <= FULL_SOFTMAX_MAX_ITEMS else SAMPLED_NEGATIVES
    seq = {
        "steps_per_epoch": SEQ_STEPS_PER_EVAL,
        "epochs": 100,
        "patience": 8,
        "loss_items": loss_items,
        "max_minutes": None,
        "batch_size": 128 if big else 64,
        "max_len": 50,
    }
    plans = {
        "two_tower": ModelPlan(
            {"dim": 64, "hidden": 128, "pooling": "attention"},
            TwoTowerTaskConfig(batch_size=1024 if big else 512),
            TrainerConfig(epochs=40, lr=1e-3, patience=3),
        ),
        "multitask": ModelPlan(
            {"dim": 32, "bottom": (128, 64), "tower": 32, "pooling": "attention"},
            # popularity^0.75 negatives: the ranker sees retrieval candidates, which lean popular
            RankerTaskConfig(
                batch_size=2048 if big else 1024, n_negatives=8, neg_power=0.75, softmax_weight=1.0
            ),
            TrainerConfig(epochs=30, lr=3e-3, patience=3),
        ),
        "bpr_mf": ModelPlan(
            {"dim": 64},
            PairTaskConfig(batch_size=4096 if big else 2048, n_negatives=1),
            TrainerConfig(epochs=80, lr=5e-3, patience=5, eval_every=2),
        ),
        "ncf": ModelPlan(  # GMF branch pre-trained from bpr_mf (He et al. 2017, sec. 3.4.1)
            {"mf_dim": 64, "mlp_dims": (128, 64)},
            PairTaskConfig(batch_size=4096 if big else 2048, n_negatives=4, loss="bce"),
            TrainerConfig(epochs=30, lr=1e-3, patience=3),
            init_from="bpr_mf",
        ),
        "sasrec": ModelPlan(task=st.SASRecTaskConfig(lr=1e-3, dropout=dropout, attn_dropout=dropout, **seq)),
        "gru4rec": ModelPlan(task=st.GRU4RecTaskConfig(lr=2e-3, dropout=dropout, **seq)),
        "bert4rec": ModelPlan(
            task=st.BERT4RecTaskConfig(
                lr=1e-3, ffn_mult=2, mask_prob=0.3, last_mask_prob=0.2, dropout=dropout, crop=True, **seq
            )
        ),
    }
    return plans


def small_plans() -> dict[str, ModelPlan]:
    """The synthetic smoke profile: two_tower, multitask, sasrec in seconds, budgeted in epochs."""
    from recstack.training import sequential_tasks as st
    from recstack.training.plans import ModelPlan
    from recstack.training.tasks import RankerTaskConfig, TwoTowerTaskConfig
    from recstack.training.trainer import TrainerConfig

    return {
        "two_tower": ModelPlan(
            {"dim": 32, "hidden": 64, "pooling": "attention"},
            TwoTowerTaskConfig(batch_size=256),
            TrainerConfig(epochs=8, lr=3e-3, patience=3),
        ),
        "multitask": ModelPlan(
            {"dim": 16, "bottom": (64, 32), "tower": 16, "pooling": "attention"},
            RankerTaskConfig(batch_size=512, n_negatives=4, neg_power=0.75, softmax_weight=1.0),
            TrainerConfig(epochs=4, lr=3e-3, patience=2),
        ),
        "sasrec": ModelPlan(task=st.SASRecTaskConfig.small()),
    }
