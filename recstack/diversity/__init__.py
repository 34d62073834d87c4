"""Diversity re-ranking of a final candidate list: MMR and greedy DPP, plus list metrics."""

from recstack.diversity.dpp import dpp_greedy, dpp_kernel
from recstack.diversity.metrics import (
    catalogue_coverage,
    cosine_similarity,
    intra_list_diversity,
    jaccard_similarity,
    novelty,
)
from recstack.diversity.mmr import mmr

__all__ = [
    "catalogue_coverage",
    "cosine_similarity",
    "dpp_greedy",
    "dpp_kernel",
    "intra_list_diversity",
    "jaccard_similarity",
    "mmr",
    "novelty",
]
