"""Candidate retrieval core (no grpc): two-tower user tower + exact FAISS inner-product search.

The index is ``IndexIDMap(IndexFlatIP)`` over the two-tower item vectors, with the item indices
1..n as FAISS ids, so the similarity is the inner product the model was trained with (unit vectors
when the model normalises: cosine).
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import faiss
import numpy as np
import torch

from recstack.features.types import UserFeatures
from recstack.serving.errors import UnknownModelError
from recstack.serving.features_adapter import user_features_to_arrays

logger = logging.getLogger(__name__)


class Retriever:
    """``retrieve(user, n, exclude) -> (item ids, scores)`` over a bundle's two-tower model."""

    def __init__(self, bundle, model: str = "two_tower"):
        self.bundle = bundle
        try:
            self.model = bundle.model(model)
        except KeyError as exc:
            raise UnknownModelError(
                f"bundle {bundle.version} has no retrieval model {model!r} ({exc}); retrain it with two_tower"
            ) from exc
        self.max_len = int(self.model.cfg.max_len)
        with torch.inference_mode():
            emb = self.model.item_embeddings()[1:].float().numpy()  # [n_items, D]
        self.item_vectors = np.ascontiguousarray(emb)
        self.n_items = emb.shape[0]
        self.index = faiss.IndexIDMap(faiss.IndexFlatIP(emb.shape[1]))
        self.index.add_with_ids(self.item_vectors, np.arange(1, self.n_items + 1, dtype=np.int64))
        self._ids = bundle.item_map.ids

    def user_vectors(self, users: list[UserFeatures]) -> np.ndarray:
        """User-tower vectors float32 [B, D]; unknown users get index 0 (history/genres only)."""
        u, h, g = user_features_to_arrays(users, self.bundle, self.max_len)
        with torch.inference_mode():
            vec = self.model.user_embedding(torch.from_numpy(u), torch.from_numpy(h), torch.from_numpy(g))
        return np.ascontiguousarray(vec.float().numpy())

    def retrieve(
        self, user: UserFeatures, n: int, exclude: Collection[str] = ()
    ) -> tuple[list[str], np.ndarray]:
        """Top ``n`` items by inner product, skipping ``exclude``: (ids [<= n], scores float32 [<= n]).

        Fewer than ``n`` come back only when the catalogue minus ``exclude`` is smaller than ``n``.
        """
        return self.retrieve_batch([user], n, [exclude])[0]

    def retrieve_batch(
        self, users: list[UserFeatures], n: int, excludes: list[Collection[str]] | None = None
    ) -> list[tuple[list[str], np.ndarray]]:
        """:meth:`retrieve` for a batch of users (one tower forward, one FAISS search)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        excludes = excludes if excludes is not None else [()] * len(users)
        if len(excludes) != len(users):
            raise ValueError(f"excludes has {len(excludes)} entries for {len(users)} users")
        ex_idx = [set(self.bundle.item_map.index(e).tolist()) - {0} for e in excludes]
        k = min(self.n_items, n + max((len(e) for e in ex_idx), default=0))
        scores, ids = self.index.search(self.user_vectors(users), k)
        out = []
        for row_s, row_i, ex in zip(scores, ids, ex_idx, strict=True):
            keep = [j for j, i in enumerate(row_i) if i > 0 and i not in ex][:n]
            out.append(([self._ids[row_i[j] - 1] for j in keep], row_s[keep].astype(np.float32)))
        return out
