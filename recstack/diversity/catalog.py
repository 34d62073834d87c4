"""Item similarities for online diversification, from a bundle's catalogue and two-tower embeddings.

``CatalogSimilarity`` holds the two sources the gateway's diversity stage can use:

- "jaccard": genre Jaccard similarity from ``catalog.json`` genres (always available);
- "cosine": cosine similarity of the two-tower item embeddings [n_items + 1, D] (only when the
  bundle has a ``two_tower`` model; row 0 is padding).

Items outside the catalogue have no genres / a zero embedding: similar to nothing but themselves.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from recstack.diversity.dpp import dpp_greedy
from recstack.diversity.metrics import (
    cosine_similarity,
    intra_list_diversity,
    jaccard_similarity,
)
from recstack.diversity.mmr import mmr

SIMILARITIES = ("jaccard", "cosine")
METHODS = ("mmr", "dpp")


class SimilarityUnavailableError(RuntimeError):
    """The requested similarity cannot be computed with what the bundle holds."""


class CatalogSimilarity:
    """Similarity matrices over arbitrary item-id lists.

    genres: item id -> genre list; embeddings: [n_items + 1, D] rows indexed by ``item_index``
    (item id -> row, 0 = unknown); both optional.
    """

    def __init__(
        self,
        genres: Mapping[str, Sequence[str]],
        embeddings: np.ndarray | None = None,
        item_index: Mapping[str, int] | None = None,
    ):
        self.genres = {str(k): list(v) for k, v in genres.items()}
        # the catalogue's binary genre matrix [n + 1, G] (uint8), built once; row 0 (no genres)
        # stands for items outside the catalogue
        self._genre_row = {item: row for row, item in enumerate(self.genres, start=1)}
        self._genre_matrix = _binary_genres(self.genres.values())
        self.embeddings = None if embeddings is None else np.asarray(embeddings, dtype=np.float64)
        self.item_index = dict(item_index or {})
        if self.embeddings is not None and self.embeddings.ndim != 2:
            raise ValueError(f"embeddings must be [n_items + 1, D], got shape {self.embeddings.shape}")

    @classmethod
    def from_bundle(cls, bundle: Any, embeddings: bool = True) -> CatalogSimilarity:
        """Genres from the bundle catalogue; two-tower item embeddings when ``embeddings`` and the
        bundle has a ``two_tower`` model (builds the model once, on the calling thread)."""
        genres = bundle.catalog.get("genres", {})
        emb = None
        index: dict[str, int] = {}
        if embeddings and "two_tower" in bundle.model_names:
            import torch

            with torch.no_grad():
                emb = bundle.model("two_tower").item_embeddings().detach().cpu().numpy()
            index = {str(item): i + 1 for i, item in enumerate(bundle.catalog["item_ids"])}
        return cls(genres, emb, index)

    def matrix(self, items: Sequence[str], kind: str = "jaccard") -> np.ndarray:
        """Similarity [N, N] of ``items`` with ``kind`` "jaccard" or "cosine"."""
        if kind == "jaccard":
            rows = np.fromiter(map(self._genre_row.get, items, repeat(0)), dtype=np.int64, count=len(items))
            return jaccard_similarity(self._genre_matrix[rows])
        if kind == "cosine":
            if self.embeddings is None:
                raise SimilarityUnavailableError(
                    "diversity.similarity 'cosine' needs the bundle's two_tower item embeddings; "
                    "the bundle has none: use similarity 'jaccard' or retrain with two_tower"
                )
            rows = np.asarray([self.item_index.get(x, 0) for x in items], dtype=np.int64)
            vecs = self.embeddings[rows]
            vecs[rows == 0] = 0.0
            return cosine_similarity(vecs)
        raise ValueError(f"similarity must be one of {SIMILARITIES}, got {kind!r}")

    def list_diversity(self, items: Sequence[str]) -> float:
        """Genre-Jaccard intra-list diversity (mean pairwise 1 - similarity) of one list."""
        if len(items) < 2:
            return 0.0
        return intra_list_diversity(np.arange(len(items)), self.matrix(items, "jaccard"))


def _binary_genres(genre_lists: Iterable[Sequence[str]]) -> np.ndarray:
    """[1 + N, G] uint8: row 0 zeros, row i + 1 the genres of the i-th list (G >= 1)."""
    lists = list(genre_lists)
    column: dict[str, int] = {}
    rows, cols = [], []
    for row, genres in enumerate(lists, start=1):
        for g in genres:
            rows.append(row)
            cols.append(column.setdefault(g, len(column)))
    out = np.zeros((len(lists) + 1, max(len(column), 1)), dtype=np.uint8)
    out[rows, cols] = 1
    return out


def diversify(scores: np.ndarray, sim: np.ndarray, k: int, method: str, lam: float) -> np.ndarray:
    """Indices of the k items chosen by ``method`` ("mmr": lam = relevance weight; "dpp": lam =
    theta, clipped below 1), in selection order."""
    if method == "mmr":
        return mmr(scores, sim, k=k, lam=lam)
    if method == "dpp":
        return dpp_greedy(scores, sim, k=k, theta=min(lam, 0.99))
    raise ValueError(f"diversity method must be one of {METHODS}, got {method!r}")
