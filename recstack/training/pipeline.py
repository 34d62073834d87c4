"""``train_bundle``: load a dataset, split it, train every model with the one trainer, configure and
evaluate the whole serving pipeline, write a versioned bundle and point CURRENT at it.

Model names: "two_tower", "multitask" (shared bottom, or MMoE with ``mmoe=True`` in its model
settings), "ncf" (NeuMF), "bpr_mf", and the sequential models "sasrec", "gru4rec", "bert4rec"
(built by ``recstack.training.sequential_tasks.build_task``).

Order of work, stage by stage as the pipeline serves:

1. the models that score every item (two_tower, bpr_mf, the sequence models), early-stopped on
   validation NDCG@10 over a fixed sample of users;
2. the retrieval stage: two_tower plus the best sequence model as a second candidate source, with
   the share of each chosen on validation recall (:func:`choose_retrieval`);
3. the pair-scoring rankers (multitask, ncf), validated and tested over those candidates (over the
   most popular unseen items when two_tower is not trained: never over users x items);
4. the final order: every stage's own order and a learned fusion of all their scores, compared on
   validation (``recstack.training.bundle_eval.select_rerank``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from recstack.models import ALL_MODELS, RANKING_MODELS, SEQUENTIAL_MODELS, TRAIN_ORDER
from recstack.training.parallel import Job, train_models
from recstack.training.plans import ModelPlan, UnknownModelNameError, apply_params
from recstack.training.trainer import FitResult, TrainerConfig, TrainingError

if TYPE_CHECKING:
    from recstack.training.distributed import Dist

logger = logging.getLogger(__name__)

RANKERS = RANKING_MODELS  # trained last, on the retrieval candidates (TRAIN_ORDER, recstack.models)
# Start order within a group when several jobs run side by side: the longest first.
COST_ORDER = ("bert4rec", "sasrec", "gru4rec", "multitask", "ncf", "two_tower", "bpr_mf")
PROFILES = ("auto", "small")
SEQUENCE_SHARES = (0.0, 0.25, 0.5, 0.75, 1.0)  # share of the sequence source in the retrieval list
DEFAULT_VALID_USERS = 10_000
DEFAULT_MAX_MINUTES = 90.0


@dataclass
class TrainConfig:
    """Which models to train and how.

    ``auto()`` (the default): plans chosen from the data when training starts
    (``recstack.training.profiles``); ``small()``: the synthetic smoke profile; or explicit
    ``models`` plans. ``valid_users``: size of the fixed validation sample used for early
    stopping (None = every user); ``max_minutes``: per-model wall-clock safety net (None = none).
    """

    models: dict[str, ModelPlan] = field(default_factory=dict)
    max_len: int = 50  # history length of the feature-based models (Redis keeps 50 recent items)
    seed: int = 0
    threads: int | None = 1  # 1: reproducible and fastest for these models on a shared CPU
    progress: bool = True
    pipeline: bool = True  # configure and evaluate the whole serving pipeline (needs two_tower)
    retrieve_n: int = 200
    profile: str = "custom"  # "auto": models are planned from the data by resolve()
    only: tuple[str, ...] | None = None  # auto: the models to train (None = all)
    valid_users: int | None = DEFAULT_VALID_USERS
    max_minutes: float | None = DEFAULT_MAX_MINUTES
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # from `recstack tune`, over the plans
    jobs: int = 1  # models trained side by side in worker processes (the result does not depend on it)
    exact_max_items: int | None = None  # retrieval searched exactly up to this many items (ann default)
    holdout_users: int = 0  # users removed from the data before the split (recstack.evaluation.holdout)

    def select(self, names: list[str]) -> TrainConfig:
        """A copy training only ``names``."""
        known = list(ALL_MODELS) if self.profile == "auto" else list(self.models)
        unknown = [n for n in names if n not in known]
        if unknown:
            raise UnknownModelNameError(f"unknown model(s) {unknown} for this profile; choose from {known}")
        if self.profile == "auto":
            return dataclasses.replace(self, only=tuple(names))
        return dataclasses.replace(self, models={n: self.models[n] for n in names})

    def resolve(self, stats) -> TrainConfig:
        """The config with its plans: ``auto`` plans every (selected) model from ``stats``; then
        ``params`` (tuned values) are applied over the plans."""
        models = self.models
        if self.profile == "auto":
            from recstack.training.profiles import auto_plans

            plans = auto_plans(stats)
            models = {n: plans[n] for n in self.only or tuple(plans)}
        models = {n: apply_params(p, n, self.params.get(n, {})) for n, p in models.items()}
        return dataclasses.replace(self, models=models)

    @classmethod
    def auto(cls) -> TrainConfig:
        """Plans chosen from the data's size when training starts (the CLI default); as many
        training jobs as CPUs, up to 2."""
        return cls(profile="auto", jobs=max(1, min(2, os.cpu_count() or 1)))

    @classmethod
    def small(cls) -> TrainConfig:
        """Quick profile for the synthetic default data (two_tower, multitask, sasrec)."""
        from recstack.training.profiles import small_plans

        return cls(models=small_plans(), max_len=20, profile="small")

    @classmethod
    def named(cls, profile: str) -> TrainConfig:
        """``auto`` or ``small``; anything else is an UnknownModelNameError naming the choices."""
        if profile == "auto":
            return cls.auto()
        if profile == "small":
            return cls.small()
        raise UnknownModelNameError(f"unknown profile {profile!r}; choose one of {list(PROFILES)}")


def trainer_config(plan: ModelPlan, cfg: TrainConfig) -> TrainerConfig:
    """The plan's TrainerConfig with the run's seed, threads, progress and wall-clock safety net."""
    if plan.trainer is not None:
        base = plan.trainer
    elif hasattr(plan.task, "trainer_overrides"):
        base = TrainerConfig(**plan.task.trainer_overrides())
    else:
        base = TrainerConfig()
    return dataclasses.replace(
        base,
        seed=cfg.seed,
        threads=cfg.threads,
        progress=cfg.progress,
        max_minutes=base.max_minutes if base.max_minutes is not None else cfg.max_minutes,
    )


def _seq_scores(records: dict) -> dict[str, float]:
    """Validation NDCG@10 of the trained sequence models (which one joins retrieval)."""
    return {m: records[m]["valid"].get("NDCG@10", 0.0) for m in SEQUENTIAL_MODELS if m in records}


def _fit_record(r: FitResult) -> dict:
    return {
        "valid": r.valid,
        "test": r.test,
        "best_epoch": r.best_epoch,
        "epochs_run": len(r.history),
        "stopped_by": r.stopped_by,
        "train_seconds": round(r.train_seconds, 2),
        "peak_rss_mb": round(r.peak_rss_mb, 1),
        "valid_seconds": round(r.valid_seconds, 2),
        "test_seconds": round(r.test_seconds, 2),
    }


def validation_sample(split, size: int | None, seed: int) -> np.ndarray | None:
    """A fixed, seeded sample of ``size`` users with a validation target (None: all of them)."""
    users = np.flatnonzero(split.valid_target > 0)
    if size is None or len(users) <= size:
        return None
    return np.sort(np.random.default_rng(seed).choice(users, size, replace=False))


def choose_retrieval(
    bundle, split, feats, n: int, users: np.ndarray | None, seq_scores: dict[str, float]
) -> dict:
    """Retrieval settings ``{"sources": {name: share}}`` with the best validation recall@n.

    Sources: two_tower and the sequence model with the best validation NDCG@10 (``seq_scores``);
    the sequence model's share is tried at each of :data:`SEQUENCE_SHARES`.
    """
    from recstack.serving.retriever import Retriever, merge_ranked
    from recstack.training.bundle_eval import stage_users

    if not seq_scores:
        return {"sources": {"two_tower": 1.0}}
    seq = max(seq_scores, key=lambda m: seq_scores[m])
    retriever = Retriever(bundle, shares={"two_tower": 1.0, seq: 1.0})
    users, feats_list, seen = stage_users(split, feats, "valid", users)
    targets = split.targets("valid")[users]
    ranked: list[dict[str, np.ndarray]] = []
    for start in range(0, len(users), 512):
        ranked += retriever.rank_sources(feats_list[start : start + 512], n, seen[start : start + 512])
    recall = {}
    for share in SEQUENCE_SHARES:
        shares = {"two_tower": 1.0 - share, seq: share}
        hits = [
            t in set(merge_ranked(r, shares, n)[0].tolist()) for t, r in zip(targets, ranked, strict=True)
        ]
        recall[share] = float(np.mean(hits)) if hits else 0.0
    best = max(SEQUENCE_SHARES, key=lambda s: (recall[s], -abs(s - 0.5)))
    logger.info(
        "retrieval: validation recall@%d by %s share %s -> %s",
        n,
        seq,
        {s: round(r, 4) for s, r in recall.items()},
        best,
    )
    return {
        "sources": {"two_tower": 1.0 - best, seq: best},
        "valid_recall": {str(k): v for k, v in recall.items()},
    }


def build_indexes(bundle, split, feats, n: int, users: np.ndarray | None, seed: int = 0,
                  exact_max: int | None = None) -> tuple[dict, dict]:  # fmt: skip
    """({source: index spec}, {source: trained index}) for the bundle's retrieval sources: exact up
    to ``exact_max`` items (``ann.EXACT_MAX_ITEMS``), else an IVF index whose nprobe reaches the
    target recall@n against exact search on validation users' vectors."""
    from recstack.serving.ann import EXACT_MAX_ITEMS, build_for_catalogue
    from recstack.serving.retriever import Retriever
    from recstack.training.bundle_eval import stage_users

    exact_max = EXACT_MAX_ITEMS if exact_max is None else exact_max
    retriever = Retriever(bundle)
    specs: dict = {}
    indexes: dict = {}
    big = [name for name, src in retriever.sources.items() if len(src.item_vectors) > exact_max]
    if not big:
        return {name: {"kind": "exact"} for name in retriever.sources}, {}
    _, feats_list, _ = stage_users(split, feats, "valid", users)
    queries = feats_list[:1000]
    for name, source in retriever.sources.items():
        if name not in big:
            specs[name] = {"kind": "exact"}
            continue
        vec, usable = source.user_vectors(queries, bundle)
        indexes[name], specs[name] = build_for_catalogue(
            source.item_vectors, vec[usable], k=n, seed=seed, exact_max=exact_max
        )
    return specs, indexes


def ranker_candidates(bundle, split, feats, n: int, valid_users: np.ndarray | None):
    """Retrieval candidates of the validation sample and of every test user (for the rankers)."""
    from recstack.training.bundle_eval import pipeline_lists
    from recstack.training.tasks import Candidates

    lists = {}
    for stage, users in (("valid", valid_users), ("test", None)):
        got = pipeline_lists(bundle, split, feats, stage, n, users=users, ranker_model=None, rerank=False)
        lists[stage] = (got.users, got.candidates)
    return Candidates(lists)


def popularity_candidates(split, n: int, valid_users: np.ndarray | None):
    """Candidates when no retrieval model was trained (rankers chosen without two_tower): each
    user's ``n`` most popular training items outside the history, so that the pair-scoring rankers
    still score users x ``n`` pairs, never users x items."""
    from recstack.evaluation.protocol import user_histories
    from recstack.training.tasks import Candidates

    counts = split.train_item_counts()
    order = np.argsort(-counts[1:], kind="stable") + 1
    lists = {}
    for stage, users in (("valid", valid_users), ("test", None)):
        targets = split.targets(stage)
        users = np.flatnonzero(targets > 0) if users is None else np.asarray(users, np.int64)
        users = users[targets[users] > 0]
        hist = user_histories(split, stage)
        cands = []
        for u in users:
            seen = np.unique(hist[u])
            top = order[: n + len(seen)]
            cands.append(top[~np.isin(top, seen)][:n])
        lists[stage] = (users, cands)
    return Candidates(lists)


@dataclass
class Catalog:
    """What the bundle records besides the models: ids, genres, titles, popularity, creation times."""

    content: dict
    user_ids: list[str]

    @classmethod
    def of(cls, dataset, split, feats) -> Catalog:
        from recstack.artifacts.bundle import catalog_dict
        from recstack.data.schema import item_created_at

        counts = split.train_item_counts()
        order = np.argsort(-counts[1:], kind="stable") + 1
        items = dataset.items.drop_duplicates("item_id").set_index("item_id")
        ids = split.item_map.ids
        content = catalog_dict(
            ids,
            {i: list(g) for i, g in zip(ids, split.item_genres[1:], strict=True)},
            {i: str(items["title"].get(i, "")) for i in ids} if "title" in items else {},
            feats.genres.genre_vocab,
            [ids[i - 1] for i in order],
            item_created_at(dataset.items),
        )
        return cls(content, split.user_map.ids)

    def bundle(self, models: dict, serving: dict | None = None, indexes: dict | None = None):
        from recstack.artifacts.bundle import Bundle

        return Bundle.in_memory(models, self.content, self.user_ids, serving, indexes=indexes)


class StageClock:
    """Wall seconds per stage of :func:`train_bundle` (``lap(name)`` closes the running stage)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(self.seconds.get(name, 0.0) + now - self._last, 2)
        self._last = now


def train_bundle(data_spec: str, out: Path, config: TrainConfig, dist: Dist | None = None) -> Path:
    """Train ``config``'s models on ``data_spec`` (leave-one-out split), configure the serving
    pipeline on validation, write a bundle under ``out``, point ``out/CURRENT`` at it and return
    the version directory.

    ``dist``: this process is one torchrun worker of several (:mod:`recstack.training.distributed`):
    the models train data-parallel over the workers, one after the other; rank 0 alone evaluates,
    configures the pipeline and writes the bundle, and every worker returns its directory."""
    from recstack.artifacts import save_bundle, write_current
    from recstack.data import load_dataset
    from recstack.evaluation import leave_one_out
    from recstack.training.bundle_eval import evaluate_pipeline
    from recstack.training.examples import build_features
    from recstack.training.profiles import DataStats

    t0 = time.perf_counter()
    stages = StageClock()
    dataset = load_dataset(data_spec)
    stages.lap("load")
    holdout: dict = {}
    if config.holdout_users:
        from recstack.evaluation.holdout import choose_holdout, without_users

        held = choose_holdout(dataset, config.holdout_users, config.seed)
        dataset = without_users(dataset, held)
        holdout = {"users": len(held), "seed": config.seed, "user_ids": held}
        logger.info("%d users held out of training (seed %d)", len(held), config.seed)
    split = leave_one_out(dataset)
    stats = DataStats.of(split)
    stages.lap("split")
    config = config.resolve(stats)
    if not config.models:
        raise TrainingError("TrainConfig.models is empty; name at least one model to train")
    feats = build_features(split, config.max_len)
    catalog = Catalog.of(dataset, split, feats)
    # One copy of the interactions from here on: the features hold the per-row event types and
    # ratings the models need; the raw frame and the split's per-row event details go (the split
    # still gives targets, histories and ids) before the split is sent to the training workers.
    del dataset
    split = dataclasses.replace(split, train_event_types=[], train_ratings=[], train_timestamps=[])
    valid_users = validation_sample(split, config.valid_users, config.seed)
    stages.lap("features")
    main = dist is None or dist.main
    logger.info(
        "%s: %d users, %d items, %d training rows; profile %s; validation on %s users",
        data_spec,
        split.n_users,
        split.n_items,
        stats.n_train,
        config.profile,
        "all" if valid_users is None else len(valid_users),
    )
    trained: dict = {}
    records: dict = {}
    serving: dict = {}
    candidates = None
    first = [n for n in TRAIN_ORDER if n in config.models and n not in RANKERS]
    rankers = [n for n in TRAIN_ORDER if n in config.models and n in RANKERS]
    indexes: dict = {}

    def configure_retrieval() -> None:
        serving["retrieval"] = choose_retrieval(
            catalog.bundle(trained), split, feats, config.retrieve_n, valid_users, _seq_scores(records)
        )
        specs, built = build_indexes(
            catalog.bundle(trained, serving), split, feats, config.retrieve_n, valid_users, config.seed,
            config.exact_max_items,
        )  # fmt: skip
        serving["retrieval"]["index"] = specs
        indexes.update(built)

    for group in (first, rankers):
        if group is rankers and rankers and "two_tower" in trained and main:
            configure_retrieval()  # the rankers' candidates serve their evaluation: rank 0 only
            stages.lap("retrieval_config")
            candidates = ranker_candidates(
                catalog.bundle(trained, serving, indexes), split, feats, config.retrieve_n, valid_users
            )
            stages.lap("ranker_candidates")
        elif group is rankers and rankers and main:
            candidates = popularity_candidates(split, config.retrieve_n, valid_users)
            stages.lap("ranker_candidates")
        jobs = [
            Job(n, config.models[n], trainer_config(config.models[n], config), candidates, dict(trained))
            for n in sorted(group, key=lambda m: COST_ORDER.index(m))
        ]
        done = train_models(
            jobs, split, feats, valid_users, config.seed, config.jobs, config.threads, dist=dist
        )
        stages.lap("train_rankers" if group is rankers else "train_full_ranking_models")
        for name in group:
            module, result = done[name]
            trained[name] = module
            records[name] = _fit_record(result)
            if name in RANKERS and candidates is not None:
                source = "retrieval" if "two_tower" in trained else "popularity"
                records[name]["over"] = f"{source} candidates ({config.retrieve_n})"
            logger.info(
                "%s test %s (%.1f s, stopped by %s)",
                name,
                result.test,
                result.train_seconds,
                result.stopped_by,
            )
    if not main:  # rank 0 configures, evaluates and writes the bundle
        return Path(dist.broadcast(None))
    if "two_tower" in trained and "retrieval" not in serving:
        configure_retrieval()
        stages.lap("retrieval_config")
    metrics: dict = {
        "data_spec": data_spec,
        "split_fingerprint": split.fingerprint(),
        "n_users": split.n_users,
        "n_items": split.n_items,
        "profile": config.profile,
        "params": config.params,
        "data_stats": stats.to_dict(),
        "models": records,
    }
    if holdout:
        metrics["holdout_users"] = holdout["users"]
    if dist is not None:
        metrics["distributed"] = dist.describe()
    warnings = [
        f"{n} was stopped by the wall-clock safety net"
        for n, r in records.items()
        if r["stopped_by"] == "wall_clock"
    ]
    if config.pipeline and "two_tower" in trained:
        t1 = time.perf_counter()
        pipe, rerank, _ = evaluate_pipeline(
            catalog.bundle(trained, serving, indexes), split, feats, config.retrieve_n
        )
        pipe["eval_seconds"] = round(time.perf_counter() - t1, 2)
        metrics["pipeline"] = pipe
        serving["rerank"] = rerank
        stages.lap("pipeline_eval")
    metrics["total_seconds"] = round(time.perf_counter() - t0, 2)
    metrics["stage_seconds"] = stages.seconds
    if warnings:
        metrics["warnings"] = warnings
    vdir = save_bundle(
        out,
        models=trained,
        item_ids=catalog.content["item_ids"],
        item_genres=catalog.content["genres"],
        titles=catalog.content["titles"],
        genre_vocab=catalog.content["genre_vocab"],
        popularity=catalog.content["popularity"],
        user_ids=catalog.user_ids,
        metrics=metrics,
        data_spec=data_spec,
        serving=serving,
        created_at=catalog.content["created_at"],
        update_current=False,
        indexes=indexes,
        training={
            "profile": config.profile,
            "params": config.params,
            "stopped_by": {n: r["stopped_by"] for n, r in records.items()},
            "warnings": warnings,
            **({"holdout": holdout} if holdout else {}),
            **({"distributed": dist.describe()} if dist is not None else {}),
        },
    )
    write_current(Path(out), vdir.name)
    if dist is not None:
        dist.broadcast(str(vdir))
    return vdir
