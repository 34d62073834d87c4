"""Score fusion: the final order of a candidate list from every stage's scores (no grpc).

Each stage leaves a score per candidate: the retrieval sources (``two_tower``, a sequence model
used as a second candidate source), the ranker's task probabilities (``p_click``, ``p_like``,
``p_purchase``) and combined score (``ranking``), the sequence models of the rerank stage
(``sasrec``, ``gru4rec``, ``bert4rec``) and the item's popularity (``popularity``). A
:class:`Fusion` is a linear model over two views of each score within the request's list, its
standardised value z(s) and its rank feature -log2(1 + rank(s)), trained listwise (softmax
cross-entropy of the target item against the other candidates, L2-regularised) on the validation
split. Scores that are missing for a request (a cold user has no sequence score) contribute 0.

:func:`fit_fusion` trains one; :func:`cross_validated` measures it on folds of users it was not
fitted on, so that training can compare it fairly with every single stage's own order
(``recstack.training.fusion_select``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

FUSION_FORMAT = 1
SEQUENTIAL_SOURCES = ("sasrec", "gru4rec", "bert4rec")


def standardize(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the last axis, float64; rows with zero spread become zeros."""
    x = np.asarray(x, dtype=np.float64)
    centered = x - x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    return np.divide(centered, std, out=np.zeros_like(centered), where=std > 1e-12)


def rank_feature(x: np.ndarray) -> np.ndarray:
    """-log2(1 + rank) of each entry of ``x`` (C,) sorted descending (rank 0 = best). Equal scores
    share their mean rank, so the feature depends on the candidate set, never on its order (the
    gateway hands the rerank stage the ranker's order, the offline evaluation retrieval's)."""
    x = np.asarray(x, dtype=np.float64)
    n = len(x)
    order = np.argsort(-x, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(x[order]) != 0])
    ends = np.r_[starts[1:], n]
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends - 1) / 2.0, ends - starts)
    return -np.log2(1.0 + ranks)


def design_matrix(scores: Mapping[str, np.ndarray | None], features: Sequence[str], n: int) -> np.ndarray:
    """Inputs (C, 2F) of a list of ``n`` candidates: [z(s), rank(s)] per feature, 0 where missing."""
    x = np.zeros((n, 2 * len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        s = scores.get(name)
        if s is None or len(s) != n or n == 0:
            continue
        s = np.asarray(s, dtype=np.float64)
        finite = np.isfinite(s)
        if not finite.all():  # a non-finite score ranks last
            s = np.where(finite, s, s[finite].min() - 1.0 if finite.any() else 0.0)
        x[:, 2 * j] = standardize(s)
        x[:, 2 * j + 1] = rank_feature(s)
    return x


@dataclass
class Fusion:
    """final(c) = sum_f w_z[f] * z(s_f)(c) + w_r[f] * rank(s_f)(c) over ``features``."""

    features: list[str]
    weights: np.ndarray  # (2F,) float64: [w_z, w_r] per feature, in ``features`` order
    l2: float = 0.0

    def score(self, scores: Mapping[str, np.ndarray | None], n: int) -> np.ndarray:
        """Final scores (n,) float64 of a list of ``n`` candidates."""
        return design_matrix(scores, self.features, n) @ self.weights

    def needs(self) -> list[str]:
        """Features with a non-zero weight (the ones worth computing online)."""
        w = self.weights.reshape(-1, 2)
        return [f for f, row in zip(self.features, w, strict=True) if np.any(row != 0)]

    def to_dict(self) -> dict:
        return {
            "format": FUSION_FORMAT,
            "features": list(self.features),
            "weights": [float(w) for w in self.weights],
            "l2": self.l2,
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> Fusion:
        """Inverse of :meth:`to_dict`; ValueError naming the bad field."""
        if not isinstance(d, Mapping):
            raise ValueError(f"fusion settings must be a mapping, got {type(d).__name__}")
        if d.get("format") != FUSION_FORMAT:
            raise ValueError(f"fusion format {d.get('format')!r} is not {FUSION_FORMAT}; retrain the bundle")
        features = d.get("features")
        weights = d.get("weights")
        if not isinstance(features, list) or not all(isinstance(f, str) for f in features):
            raise ValueError("fusion.features must be a list of score names")
        if not isinstance(weights, list) or len(weights) != 2 * len(features):
            raise ValueError(f"fusion.weights must hold {2 * len(features)} numbers (2 per feature)")
        w = np.asarray(weights, dtype=np.float64)
        if not np.isfinite(w).all():
            raise ValueError("fusion.weights must be finite")
        return cls(features=list(features), weights=w, l2=float(d.get("l2", 0.0)))


@dataclass
class FusionData:
    """Training lists: inputs (N, C_max, 2F) zero-padded, valid (N, C_max) bool, target (N,) position."""

    x: np.ndarray
    valid: np.ndarray
    target: np.ndarray

    @classmethod
    def build(
        cls,
        lists: Sequence[Mapping[str, np.ndarray | None]],
        sizes: Sequence[int],
        targets: Sequence[int],
        features: Sequence[str],
    ) -> FusionData:
        """From per-list scores, list sizes and the target's position (-1 = target not in the list:
        such lists teach nothing and are dropped)."""
        keep = [k for k, t in enumerate(targets) if t >= 0]
        width = max((sizes[k] for k in keep), default=1)
        x = np.zeros((len(keep), width, 2 * len(features)), dtype=np.float32)
        valid = np.zeros((len(keep), width), dtype=bool)
        for row, k in enumerate(keep):
            x[row, : sizes[k]] = design_matrix(lists[k], features, sizes[k])
            valid[row, : sizes[k]] = True
        return cls(x=x, valid=valid, target=np.asarray([targets[k] for k in keep], dtype=np.int64))

    def subset(self, rows: np.ndarray) -> FusionData:
        return FusionData(self.x[rows], self.valid[rows], self.target[rows])


def fit_fusion(data: FusionData, features: Sequence[str], l2: float = 1e-2, max_iter: int = 200) -> Fusion:
    """Listwise softmax regression on ``data`` (deterministic: L-BFGS in float64 from zeros).

    Loss = mean over lists of -log softmax(x w)[target] + l2 * |w|^2. With no usable list the
    weights stay 0 (every candidate ties; callers then keep a single stage's order).
    """
    n_w = 2 * len(features)
    w = torch.zeros(n_w, dtype=torch.float64, requires_grad=True)
    if len(data.target) == 0:
        return Fusion(list(features), np.zeros(n_w), l2)
    x = torch.from_numpy(data.x).double()
    pad = torch.from_numpy(~data.valid)
    target = torch.from_numpy(data.target)
    rows = torch.arange(len(target))
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")  # fmt: skip

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = (x @ w).masked_fill(pad, -math.inf)
        loss = -(logits[rows, target] - torch.logsumexp(logits, dim=1)).mean() + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return Fusion(list(features), w.detach().numpy().copy(), l2)


def ndcg_at(scores: np.ndarray, valid: np.ndarray, target: np.ndarray, k: int = 10) -> np.ndarray:
    """NDCG@k per list of the target's position under ``scores`` (N, C) (pessimistic ties)."""
    s = np.where(valid, scores, -np.inf)
    t = s[np.arange(len(target)), target]
    rank = 1 + (s > t[:, None]).sum(axis=1) + ((s == t[:, None]).sum(axis=1) - 1)
    return np.where(rank <= k, 1.0 / np.log2(rank + 1.0), 0.0)


def cross_validated(
    data: FusionData, features: Sequence[str], l2: float, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Out-of-fold NDCG@10 per list: each fold scored by a fusion fitted on the other folds."""
    n = len(data.target)
    out = np.zeros(n)
    if n == 0:
        return out
    fold_of = np.random.default_rng(seed).permutation(n) % max(2, min(folds, n))
    for f in np.unique(fold_of):
        test = np.flatnonzero(fold_of == f)
        train = np.flatnonzero(fold_of != f)
        model = fit_fusion(data.subset(train), features, l2)
        part = data.subset(test)
        out[test] = ndcg_at(part.x.astype(np.float64) @ model.weights, part.valid, part.target)
    return out
