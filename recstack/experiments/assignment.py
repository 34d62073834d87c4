"""A/B assignment: a stable hash of (experiment salt, user id) picks a variant by weight.

bucket(user) = first 8 bytes of sha256(f"{salt}:{user_id}") / 2**64, uniform in [0, 1); the
variants own consecutive intervals of [0, 1) proportional to their weights. The same user
always lands in the same variant of the same experiment; a new salt reshuffles everyone.

The experiments model is the pydantic one in ``recstack.experiments.config`` (``assign`` takes
its ``ExperimentConfig``); ``PipelineConfig`` is the flat view of a resolved pipeline that the
gateway chain reads.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class UnknownVariantError(ValueError):
    """A forced variant is not one of the experiment's variants."""


class ExperimentConfigError(ValueError):
    """An experiment definition is invalid."""


@dataclass(frozen=True)
class PipelineConfig:
    """What a variant changes in the gateway chain.

    ranking_model: "multitask" or "ncf"; task_weights: multi-task score weights as
    ((task, weight), ...) (empty: the model's defaults); rerank_enabled / rerank_model ("" for the
    bundle default); explore_slots: slate positions the bandit may explore; policy: bandit policy
    name; segment_by: how the request's Thompson segment is chosen ("" none, "top_genre",
    "attribute:NAME"; recstack/exploration/segments.py); diversity: "none", "mmr" or "dpp" with
    diversity_lambda (MMR relevance weight, DPP theta) over diversity_similarity ("jaccard": item
    genres, "cosine": two-tower item embeddings).
    """

    ranking_model: str = "multitask"
    rerank_model: str = ""
    explore_slots: int = 1
    policy: str = "thompson"
    rerank_enabled: bool = True
    task_weights: tuple[tuple[str, float], ...] = ()
    diversity: str = "none"
    diversity_lambda: float = 0.7
    diversity_similarity: str = "jaccard"
    segment_by: str = ""


class _Weighted(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def weight(self) -> float: ...


V_co = TypeVar("V_co", bound=_Weighted, covariant=True)


class HashedExperiment(Protocol[V_co]):
    """What ``assign`` reads of an experiment (``recstack.experiments.config.ExperimentConfig``)."""

    @property
    def id(self) -> str: ...

    @property
    def hash_salt(self) -> str: ...

    @property
    def variants(self) -> Sequence[V_co]: ...


def bucket(salt: str, user_id: str) -> float:
    """The user's position in [0, 1) for this salt."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiment: HashedExperiment[V_co], user_id: str, force_variant: str = "") -> V_co:
    """The user's variant; ``force_variant`` (QA) overrides the hash and must name a variant."""
    if force_variant:
        for variant in experiment.variants:
            if variant.name == force_variant:
                return variant
        raise UnknownVariantError(
            f"force_variant {force_variant!r} is not a variant of experiment "
            f"{experiment.id!r}; use one of {sorted(v.name for v in experiment.variants)}"
        )
    total = sum(v.weight for v in experiment.variants)
    point = bucket(experiment.hash_salt, user_id) * total
    acc = 0.0
    for variant in experiment.variants:
        acc += variant.weight
        if point < acc:
            return variant
    return experiment.variants[-1]
