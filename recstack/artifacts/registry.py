"""Model classes a bundle can rebuild from ``<model>.json``: class name -> (module class, config class)."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch


class UnknownModelClassError(ValueError):
    """A bundle names a model class this recstack cannot build."""


def _classes() -> dict[str, tuple[type[torch.nn.Module], type]]:
    from recstack.models.bert4rec import BERT4Rec, BERT4RecConfig
    from recstack.models.gru4rec import GRU4Rec, GRU4RecConfig
    from recstack.models.mf import BPRMF, BPRMFConfig
    from recstack.models.multitask import MMoERanker, MultiTaskConfig, MultiTaskRanker
    from recstack.models.ncf import NeuMF, NeuMFConfig
    from recstack.models.sasrec import SASRec, SASRecConfig
    from recstack.models.two_tower import TwoTower, TwoTowerConfig

    return {
        "TwoTower": (TwoTower, TwoTowerConfig),
        "MultiTaskRanker": (MultiTaskRanker, MultiTaskConfig),
        "MMoERanker": (MMoERanker, MultiTaskConfig),
        "NeuMF": (NeuMF, NeuMFConfig),
        "BPRMF": (BPRMF, BPRMFConfig),
        "SASRec": (SASRec, SASRecConfig),
        "GRU4Rec": (GRU4Rec, GRU4RecConfig),
        "BERT4Rec": (BERT4Rec, BERT4RecConfig),
    }


def model_spec(model: torch.nn.Module) -> dict[str, Any]:
    """``{"class": name, "config": {...}}`` describing how to rebuild ``model`` (JSON-serialisable)."""
    cls = type(model).__name__
    if cls not in _classes():
        raise UnknownModelClassError(f"cannot save model class {cls!r}; known classes: {sorted(_classes())}")
    cfg = getattr(model, "cfg", None)
    if cfg is None or not dataclasses.is_dataclass(cfg):
        raise UnknownModelClassError(f"{cls} has no config dataclass in .cfg; cannot save it")
    return {"class": cls, "config": dataclasses.asdict(cfg)}


def build_model(spec: dict[str, Any]) -> torch.nn.Module:
    """A fresh module (random weights) from ``{"class", "config"}``; JSON lists become tuples."""
    classes = _classes()
    cls = spec.get("class")
    if cls not in classes:
        raise UnknownModelClassError(f"unknown model class {cls!r}; known classes: {sorted(classes)}")
    module_cls, cfg_cls = classes[cls]
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in spec["config"].items()}
    return module_cls(cfg_cls(**kwargs))
