"""The models recstack trains and serves, by name: the one registry of model names (torch-free;
the classes are in the modules of this package, the class registry of bundles is
recstack/artifacts/registry.py).

Used by the servicers (which names a request may ask for), the serving cores, the experiments
schema (recstack/experiments/config.py) and training (plans, pipeline, tuning).
"""

from __future__ import annotations

RANKING_MODELS = ("multitask", "ncf")
"""Models that score (user, item) pairs: the ranking stage (``multitask`` is the default)."""
DEFAULT_RANKING_MODEL = RANKING_MODELS[0]
SEQUENTIAL_MODELS = ("sasrec", "gru4rec", "bert4rec")
"""Sequential models: the re-ranking stage (``RERANK_MODELS``)."""
RERANK_MODELS = SEQUENTIAL_MODELS
OWN_MODELS = ("two_tower", "multitask", "ncf", "bpr_mf")
"""The models that are not sequential (each has its own training plan)."""
ALL_MODELS = OWN_MODELS + SEQUENTIAL_MODELS
TRAIN_ORDER = ("two_tower", *SEQUENTIAL_MODELS, "bpr_mf", *RANKING_MODELS)
"""The order training (and tuning) goes through the models: the rankers last (they train on the
retrieval candidates), ``bpr_mf`` before ``ncf`` (its GMF branch starts from it)."""

__all__ = [
    "ALL_MODELS",
    "DEFAULT_RANKING_MODEL",
    "OWN_MODELS",
    "RANKING_MODELS",
    "RERANK_MODELS",
    "SEQUENTIAL_MODELS",
    "TRAIN_ORDER",
]
