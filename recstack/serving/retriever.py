"""Candidate retrieval core (no grpc): exact FAISS inner-product search over one or more sources.

A source is a model that scores items by an inner product of a user vector and item vectors:

- ``two_tower``: the user tower over (user id, recent items, genre profile) and the item tower;
- a sequence model (``sasrec``, ``gru4rec``, ``bert4rec``): its representation of the recent items
  against its output item embeddings, with the per-item bias as one more dimension (user side 1),
  so that the index returns exactly the model's top items.

Each index is exact (``IndexIDMap(IndexFlatIP)``) unless the bundle holds a trained approximate
index for the source (large catalogues, ``recstack.serving.ann``); FAISS ids are the item indices.
The bundle's ``serving.retrieval.sources`` gives every source a share of the list (``{"two_tower": 0.5,
"sasrec": 0.5}``; without it, two_tower alone). The lists are merged by :func:`merge_ranked`: a
candidate at rank r (0-based) of a source with share s has the key (r + 1) / s, and the n smallest
keys win, so each source places about ``share * n`` of its best items and its first item is always
in. A source with share 0 retrieves nothing but still scores every candidate; it retrieves only
for a user that no source with a share can serve (a sequence source needs recent items). Every candidate
comes back with its merged score (1 / key, also ``components["retrieval"]``) and each source's own
score (``components[source]``): later stages fuse them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence

import faiss
import numpy as np
import torch

from recstack.features.types import UserFeatures
from recstack.serving.ann import exact_index
from recstack.serving.errors import UnknownModelError
from recstack.serving.features_adapter import user_features_to_arrays

logger = logging.getLogger(__name__)

SEQUENTIAL_SOURCES = ("sasrec", "gru4rec", "bert4rec")
Retrieved = tuple[list[str], np.ndarray, dict[str, np.ndarray]]


def merge_ranked(
    ranked: Mapping[str, np.ndarray], shares: Mapping[str, float], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-source ranked item arrays into at most ``n`` distinct items, best first.

    ranked[s]: item indices best first (no duplicates within a source). An item's key is the
    minimum over sources with share > 0 of (rank + 1) / share; equal keys keep the order of first
    appearance (sources in ``ranked`` order). Returns (items int64 [<= n], keys float64 [<= n]).
    """
    parts = [
        (np.asarray(items, dtype=np.int64), float(shares.get(name, 0.0))) for name, items in ranked.items()
    ]
    parts = [(items, share) for items, share in parts if share > 0 and len(items)]
    if not parts:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float64)
    if len(parts) == 1:  # one source: its own order, keys (rank + 1) / share
        items, share = parts[0]
        items = items[:n]
        return items.copy(), np.arange(1, len(items) + 1, dtype=np.float64) / share
    every = np.concatenate([items for items, _ in parts])
    keys = np.concatenate([np.arange(1, len(items) + 1, dtype=np.float64) / share for items, share in parts])
    unique, first, inverse = np.unique(every, return_index=True, return_inverse=True)
    best = np.full(len(unique), np.inf)
    np.minimum.at(best, inverse, keys)
    order = np.lexsort((first, best))[:n]  # by key, ties by first appearance
    return unique[order], best[order]


def merged_score(keys: np.ndarray) -> np.ndarray:
    """The retrieval score of merged candidates: 1 / key (decreasing along the merged order)."""
    return 1.0 / np.asarray(keys, dtype=np.float64)


class _Source:
    """User vectors and an inner-product index over item vectors (FAISS ids = item indices): exact
    unless the bundle holds a trained index for the source (``recstack.serving.ann``)."""

    def __init__(self, name: str, item_vectors: np.ndarray):
        self.name = name
        self.item_vectors = np.ascontiguousarray(item_vectors, dtype=np.float32)  # [n_items, D]
        self.index: faiss.Index | None = None

    def use_index(self, index: faiss.Index | None) -> None:
        self.index = index if index is not None else exact_index(self.item_vectors)

    def user_vectors(self, users: list[UserFeatures], bundle) -> tuple[np.ndarray, np.ndarray]:
        """(vectors float32 [B, D], usable bool [B])."""
        raise NotImplementedError


class _TwoTowerSource(_Source):
    def __init__(self, model):
        self.model = model
        self.max_len = int(model.cfg.max_len)
        with torch.inference_mode():
            super().__init__("two_tower", model.item_embeddings()[1:].float().numpy())

    def user_vectors(self, users, bundle):
        u, h, g = user_features_to_arrays(users, bundle, self.max_len)
        with torch.inference_mode():
            vec = self.model.user_embedding(torch.from_numpy(u), torch.from_numpy(h), torch.from_numpy(g))
        return np.ascontiguousarray(vec.float().numpy()), np.ones(len(users), dtype=bool)


class _SequenceSource(_Source):
    """A sequence model's scores rep . emb + bias as an inner product of [rep, 1] and [emb, bias]."""

    def __init__(self, name: str, model):
        self.model = model
        with torch.inference_mode():
            emb = model.output_embeddings()[1:].float()
            bias = model.out_bias[1:].float()[:, None]
            super().__init__(name, torch.cat([emb, bias], dim=1).numpy())

    def user_vectors(self, users, bundle):
        _, hist, _ = user_features_to_arrays(users, bundle, int(self.model.max_len))
        usable = hist.any(axis=1)
        out = np.zeros((len(users), self.item_vectors.shape[1]), dtype=np.float32)
        if usable.any():
            with torch.inference_mode():
                rep = self.model.represent(torch.from_numpy(hist[usable])).float().numpy()
            out[usable, :-1] = rep
            out[usable, -1] = 1.0
        return out, usable


def retrieval_shares(bundle, default: str = "two_tower") -> dict[str, float]:
    """The bundle's ``serving.retrieval.sources`` ({source: share}), else ``{default: 1.0}``."""
    configs = getattr(bundle, "configs", None) or {}
    settings = configs.get("retrieval") if isinstance(configs, Mapping) else None
    sources = settings.get("sources") if isinstance(settings, Mapping) else None
    if not sources:
        return {default: 1.0}
    if not isinstance(sources, Mapping) or not all(
        isinstance(v, int | float) and v >= 0 and math.isfinite(v) for v in sources.values()
    ):
        raise ValueError(f"serving.retrieval.sources must map source names to shares >= 0, got {sources!r}")
    if not any(v > 0 for v in sources.values()):
        raise ValueError("serving.retrieval.sources gives no source a share > 0")
    return {str(k): float(v) for k, v in sources.items()}


class Retriever:
    """``retrieve(user, n, exclude) -> (item ids, scores, {source: scores})`` over a bundle's sources."""

    def __init__(self, bundle, model: str = "two_tower", shares: Mapping[str, float] | None = None):
        self.bundle = bundle
        self.shares = dict(shares) if shares is not None else retrieval_shares(bundle, model)
        self.sources: dict[str, _Source] = {}
        for name in self.shares:
            try:
                module = bundle.model(name)
            except KeyError as exc:
                raise UnknownModelError(
                    f"bundle {bundle.version} has no retrieval model {name!r} ({exc}); retrain it"
                ) from exc
            if name == "two_tower":
                self.sources[name] = _TwoTowerSource(module)
            elif name in SEQUENTIAL_SOURCES:
                self.sources[name] = _SequenceSource(name, module)
            else:
                raise UnknownModelError(
                    f"{name!r} cannot be a retrieval source; use two_tower or one of {SEQUENTIAL_SOURCES}"
                )
            index = bundle.index(name) if hasattr(bundle, "index") else None
            self.sources[name].use_index(index)
        self.n_items = len(bundle.item_map)
        self._ids = bundle.item_map.ids

    def _row_shares(self, usable: Mapping[str, bool]) -> dict[str, float]:
        """The shares for one user: the configured ones, or, when no source with a share can serve
        the user (a sequence source without recent items), equal shares of the usable sources."""
        shares = {n: s for n, s in self.shares.items() if usable[n] and s > 0}
        return shares or {n: 1.0 for n, ok in usable.items() if ok}

    def warm_up(self) -> None:
        """One request through every source (first calls allocate and load kernels): the service
        reports SERVING with its first real request as fast as the next."""
        recent = self._ids[: min(5, len(self._ids))]
        self.retrieve(UserFeatures("warm-up", recent_items=list(recent)), min(200, self.n_items))

    def retrieve(self, user: UserFeatures, n: int, exclude: Collection[str] = ()) -> Retrieved:
        """Top ``n`` items skipping ``exclude``: (ids [<= n], scores float32 [<= n], {source: scores}).

        Fewer than ``n`` come back only when the catalogue minus ``exclude`` is smaller than ``n``.
        """
        return self.retrieve_batch([user], n, [exclude])[0]

    def retrieve_batch(
        self, users: list[UserFeatures], n: int, excludes: Sequence[Collection[str]] | None = None
    ) -> list[Retrieved]:
        """:meth:`retrieve` for a batch of users (one forward and one FAISS search per source)."""
        vectors, ranked, row_shares = self._rank(users, n, excludes, every_source=False)
        out = []
        for row in range(len(users)):
            cand, keys = merge_ranked(ranked[row], row_shares[row], n)
            score = merged_score(keys)
            components = {"retrieval": score}
            for name, (vec, usable) in vectors.items():
                if usable[row] and len(cand):
                    components[name] = self.sources[name].item_vectors[cand - 1] @ vec[row]
            ids = [self._ids[i - 1] for i in cand.tolist()]
            out.append((ids, score.astype(np.float32), components))
        return out

    def retrieve_many(self, requests: Sequence[tuple[UserFeatures, int, Collection[str]]]) -> list[Retrieved]:
        """:meth:`retrieve` for requests (user, n, exclude) with different n: one search at the
        largest n, each list cut to its own n (the merged top n does not depend on the rest)."""
        if not requests:
            return []
        n_max = max(n for _, n, _ in requests)
        got = self.retrieve_batch([u for u, _, _ in requests], n_max, [e for _, _, e in requests])
        return [
            (ids[:n], scores[:n], {k: v[:n] for k, v in comps.items()})
            for (_, n, _), (ids, scores, comps) in zip(requests, got, strict=True)
        ]

    def rank_sources(
        self, users: list[UserFeatures], n: int, excludes: Sequence[Collection[str]] | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Per user, every usable source's own top ``n`` item indices (before any merge): what
        training compares shares on."""
        return self._rank(users, n, excludes, every_source=True)[1]

    def _rank(self, users, n, excludes, every_source: bool):
        """(user vectors by source, per-user {source: ranked item indices}, per-user shares)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        excludes = excludes if excludes is not None else [()] * len(users)
        if len(excludes) != len(users):
            raise ValueError(f"excludes has {len(excludes)} entries for {len(users)} users")
        ex_idx = [np.unique(idx[idx > 0]) for idx in (self.bundle.item_map.index(e) for e in excludes)]
        k = min(self.n_items, n + max((len(e) for e in ex_idx), default=0))
        vectors = {name: source.user_vectors(users, self.bundle) for name, source in self.sources.items()}
        row_shares = [
            self._row_shares({name: bool(u[row]) for name, (_, u) in vectors.items()})
            for row in range(len(users))
        ]
        ranked: list[dict[str, np.ndarray]] = [{} for _ in users]
        for name, source in self.sources.items():
            vec, usable = vectors[name]
            rows = np.flatnonzero(
                usable if every_source else [row_shares[r].get(name, 0.0) > 0 for r in range(len(users))]
            )
            if not len(rows):
                continue
            _, ids = source.index.search(vec[rows], k)
            for row, found in zip(rows.tolist(), ids, strict=True):
                keep = found > 0
                if len(ex_idx[row]):
                    keep &= ~np.isin(found, ex_idx[row])
                ranked[row][name] = found[keep][:n].astype(np.int64, copy=False)
        return vectors, ranked, row_shares
