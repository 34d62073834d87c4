"""``train_bundle``: load a dataset, split it, train every model with the one trainer, evaluate the
models and the whole serving pipeline, write a versioned bundle and point CURRENT at it.

Model names: "two_tower", "multitask" (shared bottom, or MMoE with ``mmoe=True`` in its model
settings), "ncf" (NeuMF), "bpr_mf", and the sequential models "sasrec", "gru4rec", "bert4rec"
(built by ``recstack.training.sequential_tasks.build_task``).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from recstack.training.trainer import FitResult, TrainerConfig, TrainingError, fit, seed_everything

logger = logging.getLogger(__name__)

OWN_MODELS = ("two_tower", "multitask", "ncf", "bpr_mf")
SEQUENTIAL_MODELS = ("sasrec", "gru4rec", "bert4rec")
ALL_MODELS = OWN_MODELS + SEQUENTIAL_MODELS


class UnknownModelNameError(ValueError):
    """A model name that train_bundle cannot train."""


@dataclass
class ModelPlan:
    """How to train one model: model-config overrides, task settings, trainer settings.

    For the sequential models ``task`` is their task config (e.g. ``SASRecTaskConfig.full()``)
    and ``trainer`` is built from its ``trainer_overrides()`` when left None.
    """

    model: dict[str, Any] = field(default_factory=dict)
    task: Any = None
    trainer: TrainerConfig | None = None
    init_from: str | None = None  # ncf: initialise the GMF branch from this trained MF model ("bpr_mf")


@dataclass
class TrainConfig:
    """Which models to train and how. ``small()``: synthetic data, < 60 s; ``full()``: MovieLens-size."""

    models: dict[str, ModelPlan] = field(default_factory=dict)
    max_len: int = 50  # history length of the feature-based models (Redis keeps 50 recent items)
    seed: int = 0
    threads: int | None = (
        1  # 1 is fastest for these small models on a shared 2-core CPU; None = torch's default
    )
    progress: bool = True
    pipeline: bool = True  # evaluate the whole serving pipeline (needs two_tower + multitask)
    retrieve_n: int = 200

    def select(self, names: list[str]) -> TrainConfig:
        """A copy training only ``names`` (each must be in this config)."""
        unknown = [n for n in names if n not in self.models]
        if unknown:
            raise UnknownModelNameError(
                f"unknown model(s) {unknown} for this profile; choose from {list(self.models)}"
            )
        return dataclasses.replace(self, models={n: self.models[n] for n in names})

    @classmethod
    def small(cls) -> TrainConfig:
        """Quick profile for the synthetic default data (two_tower, multitask, sasrec)."""
        from recstack.training.tasks import RankerTaskConfig, TwoTowerTaskConfig

        plans = {
            "two_tower": ModelPlan(
                {"dim": 32, "hidden": 64, "pooling": "attention"},
                TwoTowerTaskConfig(batch_size=256),
                TrainerConfig(epochs=15, lr=3e-3, patience=3, max_minutes=0.3),
            ),
            "multitask": ModelPlan(
                {"dim": 16, "bottom": (64, 32), "tower": 16, "pooling": "attention"},
                RankerTaskConfig(batch_size=512, n_negatives=4, neg_power=0.75, softmax_weight=1.0),
                TrainerConfig(epochs=8, lr=3e-3, patience=2, max_minutes=0.2),
            ),
        }
        plans.update(_sequential_plans(["sasrec"], "small"))
        return cls(models=plans, max_len=20)

    @classmethod
    def full(cls) -> TrainConfig:
        """Profile for MovieLens-size data (ml-100k .. ml-1m), all models, budgeted per model."""
        from recstack.training.tasks import PairTaskConfig, RankerTaskConfig, TwoTowerTaskConfig

        plans = {
            "two_tower": ModelPlan(
                {"dim": 64, "hidden": 128, "pooling": "attention"},
                TwoTowerTaskConfig(batch_size=512),
                TrainerConfig(epochs=40, lr=1e-3, patience=3, max_minutes=1.5),
            ),
            "multitask": ModelPlan(
                {"dim": 32, "bottom": (128, 64), "tower": 32, "pooling": "attention"},
                # popularity^0.75 negatives: the ranker sees retrieval candidates, which lean popular
                RankerTaskConfig(batch_size=1024, n_negatives=8, neg_power=0.75, softmax_weight=1.0),
                TrainerConfig(epochs=30, lr=3e-3, patience=3, eval_every=2, max_minutes=2.5),
            ),
            "bpr_mf": ModelPlan(
                {"dim": 64},
                PairTaskConfig(batch_size=2048, n_negatives=1),
                TrainerConfig(epochs=80, lr=5e-3, patience=5, eval_every=2, max_minutes=1.0),
            ),
            "ncf": ModelPlan(  # GMF branch pre-trained from bpr_mf (He et al. 2017, sec. 3.4.1)
                {"mf_dim": 64, "mlp_dims": (128, 64)},
                PairTaskConfig(batch_size=2048, n_negatives=4, loss="bce"),
                TrainerConfig(epochs=30, lr=1e-3, patience=3, max_minutes=2.0),
                init_from="bpr_mf",
            ),
        }
        plans.update(_sequential_plans(list(SEQUENTIAL_MODELS), "full"))
        # keep the whole profile under ~17 min of wall clock on 2 cores (the caps are per model)
        for name, minutes in (("sasrec", 4.0), ("gru4rec", 2.5), ("bert4rec", 2.5)):
            if name in plans and hasattr(plans[name].task, "max_minutes"):
                plans[name].task.max_minutes = minutes
        return cls(models=plans)


def _sequential_plans(names: list[str], profile: str) -> dict[str, ModelPlan]:
    """Plans for the sequential models that ``recstack.training.sequential_tasks`` provides."""
    try:
        from recstack.training import sequential_tasks
    except ImportError as exc:  # the module is another team's; train without it and say so
        logger.warning("sequential models unavailable (%s); training without %s", exc, names)
        return {}
    return {n: ModelPlan(task=getattr(sequential_tasks.CONFIGS[n], profile)()) for n in names}


def _trainer_config(name: str, plan: ModelPlan, cfg: TrainConfig) -> TrainerConfig:
    if plan.trainer is not None:
        base = plan.trainer
    elif hasattr(plan.task, "trainer_overrides"):
        base = TrainerConfig(**plan.task.trainer_overrides())
    else:
        base = TrainerConfig()
    return dataclasses.replace(base, seed=cfg.seed, threads=cfg.threads, progress=cfg.progress)


def build_task(name: str, plan: ModelPlan, split, feats, trained: dict | None = None):
    """The TrainTask for model ``name`` (``trained``: models trained earlier in this run)."""
    from recstack.models.mf import BPRMF, BPRMFConfig
    from recstack.models.multitask import MultiTaskConfig, build_ranker
    from recstack.models.ncf import NeuMF, NeuMFConfig
    from recstack.models.two_tower import TwoTower, TwoTowerConfig
    from recstack.training import tasks

    nu, ni, g = feats.n_users, feats.n_items, feats.genres.n_genres
    m = dict(plan.model)
    max_len = m.pop("max_len", feats.examples.max_len)
    if name == "two_tower":
        model = TwoTower(TwoTowerConfig(nu, ni, g, max_len=max_len, **m), feats.genres.matrix)
        return tasks.TwoTowerTask(model, feats, plan.task)
    if name == "multitask":
        model = build_ranker(MultiTaskConfig(nu, ni, g, max_len=max_len, **m), feats.genres.matrix)
        return tasks.RankerTask(model, feats, plan.task, name=name)
    if name == "ncf":
        model = NeuMF(NeuMFConfig(nu, ni, **m))
        source = (trained or {}).get(plan.init_from) if plan.init_from else None
        if source is not None:
            model.init_gmf_from(source.user_emb.weight, source.item_emb.weight)
        elif plan.init_from:
            logger.warning(
                "ncf: %s was not trained in this run; NeuMF starts from random weights", plan.init_from
            )
        return tasks.NeuMFTask(model, feats, plan.task)
    if name == "bpr_mf":
        return tasks.BPRTask(BPRMF(BPRMFConfig(nu, ni, **m)), feats, plan.task)
    if name in SEQUENTIAL_MODELS:
        from recstack.training.sequential_tasks import build_task as build_sequential

        return build_sequential(name, split, feats.genres, plan.task)
    raise UnknownModelNameError(f"unknown model {name!r}; choose from {list(ALL_MODELS)}")


def _fit_record(r: FitResult) -> dict:
    return {
        "valid": r.valid,
        "test": r.test,
        "best_epoch": r.best_epoch,
        "epochs_run": len(r.history),
        "train_seconds": round(r.train_seconds, 2),
        "peak_rss_mb": round(r.peak_rss_mb, 1),
    }


def train_bundle(data_spec: str, out: Path, config: TrainConfig) -> Path:
    """Train ``config.models`` on ``data_spec`` (leave-one-out split), write a bundle under ``out``,
    point ``out/CURRENT`` at it and return the version directory."""
    from recstack.artifacts import load_bundle, save_bundle, write_current
    from recstack.data import load_dataset
    from recstack.data.schema import item_created_at
    from recstack.evaluation import leave_one_out
    from recstack.training.bundle_eval import evaluate_pipeline
    from recstack.training.examples import build_features

    if not config.models:
        raise TrainingError("TrainConfig.models is empty; name at least one model to train")
    t0 = time.perf_counter()
    dataset = load_dataset(data_spec)
    split = leave_one_out(dataset)
    feats = build_features(split, config.max_len)
    logger.info(
        "%s: %d users, %d items, %d training rows",
        data_spec,
        split.n_users,
        split.n_items,
        len(feats.examples),
    )
    trained, records = {}, {}
    for name, plan in config.models.items():
        seed_everything(config.seed)  # initial weights are drawn from the seeded global generator
        task = build_task(name, plan, split, feats, trained)
        result = fit(task, split, _trainer_config(name, plan, config))
        trained[name] = task.model
        records[name] = _fit_record(result)
        logger.info("%s test %s (%.1f s)", name, result.test, result.train_seconds)
    counts = split.train_item_counts()
    order = np.argsort(-counts[1:], kind="stable") + 1
    items = dataset.items.drop_duplicates("item_id").set_index("item_id")
    ids = split.item_map.ids
    metrics = {
        "data_spec": data_spec,
        "split_fingerprint": split.fingerprint(),
        "n_users": split.n_users,
        "n_items": split.n_items,
        "models": records,
    }
    vdir = save_bundle(
        out,
        models=trained,
        item_ids=ids,
        item_genres={i: list(g) for i, g in zip(ids, split.item_genres[1:], strict=True)},
        titles={i: str(items["title"].get(i, "")) for i in ids} if "title" in items else {},
        genre_vocab=feats.genres.genre_vocab,
        popularity=[ids[i - 1] for i in order],
        user_ids=split.user_map.ids,
        metrics=metrics,
        data_spec=data_spec,
        created_at=item_created_at(dataset.items),
        update_current=False,
    )
    if config.pipeline and {"two_tower", "multitask"} <= set(trained):
        t1 = time.perf_counter()
        pipe, rerank = evaluate_pipeline(load_bundle(vdir), split, feats, config.retrieve_n)
        pipe["eval_seconds"] = round(time.perf_counter() - t1, 2)
        metrics["pipeline"] = pipe
        _update_bundle_json(vdir, metrics, {"rerank": rerank})
    metrics["total_seconds"] = round(time.perf_counter() - t0, 2)
    _update_bundle_json(vdir, metrics, None)
    write_current(Path(out), vdir.name)
    return vdir


def _update_bundle_json(vdir: Path, metrics: dict, serving: dict | None) -> None:
    """Rewrite metrics.json (and merge ``serving`` into the manifest) before CURRENT points here."""
    import json

    (vdir / "metrics.json").write_text(json.dumps(metrics, indent=1, default=float))
    if serving:
        manifest = json.loads((vdir / "manifest.json").read_text())
        manifest.setdefault("serving", {}).update(serving)
        (vdir / "manifest.json").write_text(json.dumps(manifest, indent=1))
