"""Model names, training plans and the one place a task is built from a plan.

``ModelPlan`` says how to train one model (model-config overrides, task settings, trainer
settings); :func:`build_task` turns a plan into the TrainTask the trainer runs; :func:`apply_params`
sets tuned values (``recstack tune``) on a plan. Used by training (pipeline, profiles, the worker
processes) and by hyper-parameter search alike.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from recstack.models import ALL_MODELS, SEQUENTIAL_MODELS
from recstack.training.trainer import TrainerConfig

logger = logging.getLogger(__name__)


class UnknownModelNameError(ValueError):
    """A model name that train_bundle cannot train."""


@dataclass
class ModelPlan:
    """How to train one model: model-config overrides, task settings, trainer settings.

    For the sequential models ``task`` is their task config (e.g. ``SASRecTaskConfig.small()``)
    and ``trainer`` is built from its ``trainer_overrides()`` when left None.
    """

    model: dict[str, Any] = field(default_factory=dict)
    task: Any = None
    trainer: TrainerConfig | None = None
    init_from: str | None = None  # ncf: initialise the GMF branch from this trained MF model ("bpr_mf")


class ParamsError(ValueError):
    """A parameter file names an unknown model or field, or a value of the wrong kind."""


def apply_params(plan, name: str, params: Mapping[str, Any]):
    """A copy of ``plan`` (a ModelPlan) with ``params`` set on whichever of the model settings, the
    task config or the trainer config has that field; ParamsError naming the field otherwise."""
    model = dict(plan.model)
    task = plan.task
    trainer = plan.trainer
    fields_of_model = model_fields(name)
    for key, value in params.items():
        if task is not None and dataclasses.is_dataclass(task) and key in field_names(task):
            task = dataclasses.replace(task, **{key: value})
        elif key in fields_of_model:
            model[key] = value
        elif trainer is not None and key in field_names(TrainerConfig):
            trainer = dataclasses.replace(trainer, **{key: value})
        else:
            known = sorted(fields_of_model | (field_names(task) if dataclasses.is_dataclass(task) else set()))
            raise ParamsError(
                f"{name}: unknown parameter {key!r}; known: {known + sorted(field_names(TrainerConfig))}"
            )
    return ModelPlan(model=model, task=task, trainer=trainer, init_from=plan.init_from)


def field_names(obj) -> set[str]:
    return {f.name for f in dataclasses.fields(obj)}


def model_fields(name: str) -> set[str]:
    from recstack.models.mf import BPRMFConfig
    from recstack.models.multitask import MultiTaskConfig
    from recstack.models.ncf import NeuMFConfig
    from recstack.models.two_tower import TwoTowerConfig

    classes = {
        "two_tower": TwoTowerConfig,
        "multitask": MultiTaskConfig,
        "ncf": NeuMFConfig,
        "bpr_mf": BPRMFConfig,
    }
    return field_names(classes[name]) - {"n_users", "n_items", "n_genres"} if name in classes else set()


def build_task(name: str, plan: ModelPlan, split, feats, trained: dict | None = None, candidates=None):
    """The TrainTask for model ``name`` (``trained``: models trained earlier in this run;
    ``candidates``: retrieval candidates the rankers are validated over)."""
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
        return tasks.RankerTask(model, feats, plan.task, name=name, candidates=candidates)
    if name == "ncf":
        model = NeuMF(NeuMFConfig(nu, ni, **m))
        source = (trained or {}).get(plan.init_from) if plan.init_from else None
        if source is not None:
            model.init_gmf_from(source.user_emb.weight, source.item_emb.weight)
        elif plan.init_from:
            logger.warning(
                "ncf: %s was not trained in this run; NeuMF starts from random weights", plan.init_from
            )
        return tasks.NeuMFTask(model, feats, plan.task, candidates=candidates)
    if name == "bpr_mf":
        return tasks.BPRTask(BPRMF(BPRMFConfig(nu, ni, **m)), feats, plan.task)
    if name in SEQUENTIAL_MODELS:
        from recstack.training.sequential_tasks import build_task as build_sequential

        return build_sequential(name, split, feats.genres, plan.task)
    raise UnknownModelNameError(f"unknown model {name!r}; choose from {list(ALL_MODELS)}")
