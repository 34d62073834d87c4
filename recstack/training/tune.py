"""Hyper-parameter search within a time budget (``recstack tune``), with Optuna.

For each model, a TPE study (seeded) searches the model's key parameters (:data:`SPACES`) on the
validation split: a trial trains the model from the auto profile's plan with the trial's values
and scores its best validation NDCG@10 on the same fixed user sample as ``recstack train``; the
median pruner stops trials whose validation curve lags the others'. The budget is split over the
models in proportion to :data:`WEIGHTS`; a trial still running at its model's deadline is cut by
the trainer's wall-clock cap (a search is budgeted in minutes by design; the final training
stays deterministic). The rankers are searched over the candidates of a two-tower model trained
with the auto plan.

The result, ``{"data_spec", "params": {model: {field: value}}, "valid": {...}, "trials": {...}}``,
is written as JSON; ``recstack train --params FILE`` trains with it (the bundle's manifest records
the parameters it was trained with).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

from recstack.models import ALL_MODELS, TRAIN_ORDER
from recstack.training.plans import ParamsError, apply_params, field_names

logger = logging.getLogger(__name__)

TUNABLE = TRAIN_ORDER  # every model, in training order (recstack.models)
WEIGHTS = {
    "two_tower": 1.0,
    "sasrec": 2.0,
    "gru4rec": 1.5,
    "bert4rec": 2.0,
    "bpr_mf": 0.5,
    "multitask": 1.0,
    "ncf": 1.0,
}
# name -> ("float", low, high, log) | ("int", low, high) | ("cat", choices)
Space = dict[str, tuple]

SPACES: dict[str, Space] = {
    "two_tower": {
        "lr": ("float", 3e-4, 3e-3, True),
        "dim": ("cat", (32, 64, 128)),
        "temperature": ("float", 0.02, 0.2, True),
        "user_dropout": ("float", 0.0, 0.5, False),
    },
    "sasrec": {
        "lr": ("float", 3e-4, 3e-3, True),
        "dropout": ("float", 0.1, 0.6, False),
        "n_layers": ("int", 1, 3),
        "dim": ("cat", (32, 64, 128)),
    },
    "gru4rec": {
        "lr": ("float", 5e-4, 5e-3, True),
        "dropout": ("float", 0.1, 0.6, False),
        "hidden": ("cat", (64, 128, 256)),
    },
    "bert4rec": {
        "lr": ("float", 3e-4, 3e-3, True),
        "dropout": ("float", 0.1, 0.6, False),
        "mask_prob": ("float", 0.1, 0.5, False),
        "n_layers": ("int", 1, 3),
    },
    "bpr_mf": {
        "lr": ("float", 1e-3, 2e-2, True),
        "dim": ("cat", (32, 64, 128)),
        "weight_decay": ("float", 1e-8, 1e-4, True),
    },
    "multitask": {
        "lr": ("float", 5e-4, 5e-3, True),
        "dim": ("cat", (16, 32, 64)),
        "n_negatives": ("int", 2, 16),
    },
    "ncf": {
        "lr": ("float", 3e-4, 3e-3, True),
        "mf_dim": ("cat", (32, 64)),
        "n_negatives": ("int", 2, 8),
    },
}


def suggest(trial, name: str, spec: tuple) -> Any:
    """The trial's value of one parameter of a :data:`SPACES` entry."""
    kind = spec[0]
    if kind == "float":
        return trial.suggest_float(name, spec[1], spec[2], log=spec[3])
    if kind == "int":
        return trial.suggest_int(name, spec[1], spec[2])
    return trial.suggest_categorical(name, list(spec[1]))


def in_space(value: Any, spec: tuple) -> bool:
    """Whether ``value`` (a plan's default) lies in the searched range."""
    if spec[0] == "cat":
        return value in spec[1]
    return isinstance(value, int | float) and spec[1] <= value <= spec[2]


def read_params(path: Path | str) -> dict[str, dict[str, Any]]:
    """The ``params`` of a ``recstack tune`` result file (or a bare {model: {field: value}} map)."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ParamsError(f"{path}: cannot read the parameter file ({exc})") from exc
    params = raw.get("params", raw) if isinstance(raw, dict) else None
    if not isinstance(params, dict) or not all(isinstance(v, dict) for v in params.values()):
        raise ParamsError(f"{path}: expected {{'params': {{model: {{field: value}}}}}}")
    unknown = [m for m in params if m not in ALL_MODELS]
    if unknown:
        raise ParamsError(f"{path}: unknown model(s) {unknown}; choose from {list(ALL_MODELS)}")
    return params


def tune(
    data_spec: str,
    budget_minutes: float,
    models: list[str] | None = None,
    seed: int = 0,
    valid_users: int | None = None,
) -> dict:
    """Search each model's parameters within ``budget_minutes`` in all; returns the result dict."""
    import optuna

    from recstack.data import load_dataset
    from recstack.evaluation import leave_one_out
    from recstack.training.examples import build_features
    from recstack.training.pipeline import (
        DEFAULT_VALID_USERS,
        RANKERS,
        Catalog,
        TrainConfig,
        choose_retrieval,
        ranker_candidates,
        trainer_config,
        validation_sample,
    )
    from recstack.training.profiles import DataStats, auto_plans

    if budget_minutes <= 0:
        raise ValueError(f"budget_minutes must be > 0, got {budget_minutes}")
    unknown = [m for m in (models or []) if m not in TUNABLE]
    if unknown:
        raise ParamsError(f"cannot tune {unknown}; choose from {list(TUNABLE)}")
    names = [m for m in TRAIN_ORDER if m in (models or TUNABLE)]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dataset = load_dataset(data_spec)
    split = leave_one_out(dataset)
    plans = auto_plans(DataStats.of(split))
    config = dataclasses.replace(TrainConfig.auto(), progress=False, seed=seed)
    sample = validation_sample(split, valid_users or DEFAULT_VALID_USERS, seed)
    feats = build_features(split, config.max_len)
    total = sum(WEIGHTS[m] for m in names)
    result: dict = {
        "data_spec": data_spec,
        "budget_minutes": budget_minutes,
        "params": {},
        "valid": {},
        "trials": {},
    }
    start = time.monotonic()
    support: dict = {}  # models the rankers need: two_tower (candidates), bpr_mf (ncf's start)
    candidates = None
    for name in names:
        if name in RANKERS and candidates is None:
            for dep in ("two_tower", "bpr_mf"):
                plan = apply_params(plans[dep], dep, result["params"].get(dep, {}))
                support[dep] = _train(dep, plan, split, feats, config, sample, support, None, seed).model
            catalog = Catalog.of(dataset, split, feats)
            serving = {
                "retrieval": choose_retrieval(
                    catalog.bundle(support), split, feats, config.retrieve_n, sample, {}
                )
            }
            candidates = ranker_candidates(
                catalog.bundle(support, serving), split, feats, config.retrieve_n, sample
            )
        deadline = time.monotonic() + 60 * budget_minutes * WEIGHTS[name] / total
        space = SPACES[name]

        def objective(trial, name=name, space=space, deadline=deadline, candidates=candidates) -> float:
            plan = apply_params(plans[name], name, {f: suggest(trial, f, spec) for f, spec in space.items()})
            remaining = (deadline - time.monotonic()) / 60
            if remaining <= 0.05:
                raise optuna.TrialPruned("budget spent")
            trainer = dataclasses.replace(trainer_config(plan, config), max_minutes=remaining)

            def report(epoch: int, ndcg: float) -> None:
                trial.report(ndcg, epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {epoch}: valid NDCG@10 {ndcg:.4f}")

            cands = candidates if name in RANKERS else None
            return float(
                _train(name, plan, split, feats, trainer, sample, support, cands, seed, report).valid[
                    "NDCG@10"
                ]
            )

        study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=3),
            study_name=name,
        )
        defaults = {f: _default(plans[name], name, f) for f in space}
        study.enqueue_trial(
            {f: v for f, v in defaults.items() if in_space(v, space[f])}
        )  # the auto plan first
        study.optimize(objective, timeout=max(1.0, deadline - time.monotonic()), gc_after_trial=True)
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        result["trials"][name] = {"complete": len(done), "pruned": len(study.trials) - len(done)}
        if done:
            result["params"][name] = dict(study.best_params)
            result["valid"][name] = float(study.best_value)
            logger.info(
                "tune %s: best valid NDCG@10 %.4f with %s (%d trials)",
                name,
                study.best_value,
                study.best_params,
                len(study.trials),
            )
    result["seconds"] = round(time.monotonic() - start, 1)
    return result


def _train(name, plan, split, feats, trainer_or_config, sample, trained, candidates, seed, on_eval=None):
    """One training run (a trial, or a model the rankers need); TrainingError prunes a trial."""
    import optuna

    from recstack.training.pipeline import TrainConfig, trainer_config
    from recstack.training.plans import build_task
    from recstack.training.trainer import TrainingError, fit, seed_everything

    trainer = (
        trainer_config(plan, trainer_or_config)
        if isinstance(trainer_or_config, TrainConfig)
        else trainer_or_config
    )
    seed_everything(seed)
    task = build_task(name, plan, split, feats, trained, candidates)
    try:
        result = fit(task, split, trainer, sample, on_eval=on_eval)
    except TrainingError as exc:  # a diverging trial (e.g. a too high learning rate)
        raise optuna.TrialPruned(str(exc)) from exc
    result.model = task.model
    return result


def _default(plan, name: str, field: str) -> Any:
    """The auto plan's value of ``field`` (the first trial of every study)."""
    for obj in (plan.task, plan.trainer):
        if obj is not None and dataclasses.is_dataclass(obj) and field in field_names(obj):
            return getattr(obj, field)
    if field in plan.model:
        return plan.model[field]
    from recstack.models import mf, multitask, ncf, two_tower

    classes = {
        "two_tower": two_tower.TwoTowerConfig,
        "multitask": multitask.MultiTaskConfig,
        "ncf": ncf.NeuMFConfig,
        "bpr_mf": mf.BPRMFConfig,
    }
    return {f.name: f.default for f in dataclasses.fields(classes[name])}[field]
