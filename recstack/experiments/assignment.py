"""A/B assignment: a stable hash of (experiment salt, user id) picks a variant by weight.

bucket(user) = first 8 bytes of sha256(f"{salt}:{user_id}") / 2**64, uniform in [0, 1); the
variants own consecutive intervals of [0, 1) proportional to their weights. The same user
always lands in the same variant of the same experiment; a new salt reshuffles everyone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field


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


@dataclass(frozen=True)
class Variant:
    name: str
    weight: float
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)


@dataclass(frozen=True)
class Experiment:
    """An experiment: id, hashing salt and weighted variants (weights need not sum to 1)."""

    experiment_id: str
    salt: str
    variants: tuple[Variant, ...]

    def __post_init__(self) -> None:
        if not self.variants:
            raise ExperimentConfigError(f"experiment {self.experiment_id!r} has no variants")
        names = [v.name for v in self.variants]
        if len(set(names)) != len(names):
            raise ExperimentConfigError(f"experiment {self.experiment_id!r} has duplicate variants {names}")
        if any(v.weight < 0 for v in self.variants) or sum(v.weight for v in self.variants) <= 0:
            raise ExperimentConfigError(
                f"experiment {self.experiment_id!r}: weights must be >= 0 with a positive sum"
            )

    @property
    def by_name(self) -> Mapping[str, Variant]:
        return {v.name: v for v in self.variants}


def bucket(salt: str, user_id: str) -> float:
    """The user's position in [0, 1) for this salt."""
    digest = hashlib.sha256(f"{salt}:{user_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign(experiment: Experiment, user_id: str, force_variant: str = "") -> Variant:
    """The user's variant; ``force_variant`` (QA) overrides the hash and must name a variant."""
    if force_variant:
        variant = experiment.by_name.get(force_variant)
        if variant is None:
            raise UnknownVariantError(
                f"force_variant {force_variant!r} is not a variant of experiment "
                f"{experiment.experiment_id!r}; use one of {sorted(experiment.by_name)}"
            )
        return variant
    total = sum(v.weight for v in experiment.variants)
    point = bucket(experiment.salt, user_id) * total
    acc = 0.0
    for variant in experiment.variants:
        acc += variant.weight
        if point < acc:
            return variant
    return experiment.variants[-1]


DEFAULT_EXPERIMENT = Experiment(
    experiment_id="explore-slots-v1",
    salt="explore-slots-v1",
    variants=(
        Variant("control", 0.5, PipelineConfig(explore_slots=1)),
        Variant("treatment", 0.5, PipelineConfig(explore_slots=2)),
    ),
)
"""The experiment the gateway runs until experiments are configured outside the code:
treatment opens two bandit slots instead of one."""
