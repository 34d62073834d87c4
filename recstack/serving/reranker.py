"""Sequential re-ranking core (no grpc): scores candidates with SASRec / GRU4Rec / BERT4Rec.

``Reranker(bundle).rerank(user, candidates, upstream)`` builds the user's history from
``user.recent_items`` (newest first, as in Redis) with the shared features adapter, scores the
candidates with the model's ``score_candidates`` (the same function the offline evaluation uses
through ``score_all``) and returns the candidates sorted by the final score.

Blend: with weight ``w`` (``blend``), the final score of candidate c is

    final(c) = w * z(seq)(c) + (1 - w) * z(upstream)(c)

where z standardises a score vector over the request's candidates (mean 0, standard deviation 1;
a constant vector becomes all zeros), so that model logits and upstream scores of any scale mix
in a fixed proportion. ``w = 1`` (the default) ranks by the sequence model alone, ``w = 0`` keeps
the upstream order. :func:`select_blend_weight` picks ``w`` on validation lists. Ties keep the
upstream order.

Users without a known recent item get the upstream order unchanged (candidates as given, upstream
scores as given).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from recstack.features.types import UserFeatures
from recstack.serving.errors import UnknownItemError, UnknownModelError
from recstack.serving.features_adapter import user_features_to_arrays

logger = logging.getLogger(__name__)

SEQUENTIAL_MODELS = ("sasrec", "gru4rec", "bert4rec")


def standardize(x: np.ndarray) -> np.ndarray:
    """(x - mean) / std over the last axis, float64; rows with zero spread become zeros."""
    x = np.asarray(x, dtype=np.float64)
    centered = x - x.mean(axis=-1, keepdims=True)
    std = x.std(axis=-1, keepdims=True)
    return np.divide(centered, std, out=np.zeros_like(centered), where=std > 1e-12)


def blend_scores(seq: np.ndarray, upstream: np.ndarray, weight: float) -> np.ndarray:
    """w * z(seq) + (1 - w) * z(upstream) over the last axis (see the module docstring)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"blend weight must lie in [0, 1], got {weight}")
    return weight * standardize(seq) + (1.0 - weight) * standardize(upstream)


def select_blend_weight(
    seq: Sequence[np.ndarray],
    upstream: Sequence[np.ndarray],
    target_pos: Sequence[int],
    grid: Sequence[float] = tuple(np.linspace(0.0, 1.0, 11)),
    k: int = 10,
) -> tuple[float, dict[float, float]]:
    """Blend weight with the best mean NDCG@k over validation candidate lists.

    seq[n], upstream[n]: scores (C_n,) of list n's candidates; target_pos[n]: index of the
    validation target in list n, or -1 when it is not among the candidates (counts as 0).
    Returns (best weight, {weight: NDCG@k}); ties go to the larger weight.
    """
    if not (len(seq) == len(upstream) == len(target_pos)) or not len(seq):
        raise ValueError("seq, upstream and target_pos must be non-empty and of equal length")
    result: dict[float, float] = {}
    for w in grid:
        gains = []
        for s, u, t in zip(seq, upstream, target_pos, strict=True):
            if t < 0:
                gains.append(0.0)
                continue
            final = blend_scores(s, u, float(w))
            # pessimistic rank: ties with the target count against it
            rank = int((final > final[t]).sum()) + int((final == final[t]).sum())
            gains.append(1.0 / np.log2(rank + 1) if rank <= k else 0.0)
        result[float(w)] = float(np.mean(gains))
    best = max(result, key=lambda w: (result[w], w))
    return best, result


class Reranker:
    """Re-ranks candidate lists with a sequential model of a bundle.

    bundle: a loaded bundle (``model(name)``, ``item_map``, ``configs``, ``version``, plus what
    the features adapter reads: ``user_map``, ``genre_vocab``).
    default_model: model used when ``rerank(model=None)``; None reads
    ``bundle.configs["rerank"]["model"]`` (chosen on validation by training) when set, else "sasrec";
    when that setting is present but null, ``rerank(model=None)`` keeps the upstream order.
    max_len: history length fed to the model; None = the model's configured ``max_len``.
    blend: sequence-score weight, a float for every model or {model: weight}; None reads
    ``bundle.configs["rerank"]["blend"]`` when present, else 1.0 (sequence model only).
    """

    def __init__(
        self,
        bundle: Any,
        default_model: str | None = None,
        max_len: int | None = None,
        blend: float | Mapping[str, float] | None = None,
    ):
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.bundle = bundle
        settings = self._rerank_settings()
        self.default_model = default_model or settings.get("model") or "sasrec"
        # Training found that no sequence model improves the ranking on validation ("model": None):
        # requests without an explicit model then keep the upstream order (weight 0).
        self.passthrough_default = default_model is None and "model" in settings and not settings["model"]
        self.max_len = max_len
        self._blend = settings.get("blend", 1.0) if blend is None else blend
        for w in self._blend.values() if isinstance(self._blend, Mapping) else [self._blend]:
            if not 0.0 <= float(w) <= 1.0:
                raise ValueError(f"blend weight must lie in [0, 1], got {w}")
        self._models: dict[str, torch.nn.Module] = {}
        self._lock = threading.Lock()
        self.model(self.default_model)  # fail at start, not at the first request

    def _rerank_settings(self) -> Mapping[str, Any]:
        """The bundle's serving settings for rerank: {"model": name | None, "blend": w | {name: w}}."""
        configs = getattr(self.bundle, "configs", None) or {}
        rerank = configs.get("rerank") if isinstance(configs, Mapping) else None
        return rerank if isinstance(rerank, Mapping) else {}

    def blend_weight(self, model: str) -> float:
        """Sequence-score weight used for ``model``."""
        if isinstance(self._blend, Mapping):
            return float(self._blend.get(model, 1.0))
        return float(self._blend)

    def model(self, name: str) -> torch.nn.Module:
        """The bundle's sequential model ``name`` (built once, eval mode)."""
        with self._lock:
            if name not in self._models:
                if name not in SEQUENTIAL_MODELS:
                    raise UnknownModelError(
                        f"rerank model {name!r} is not a sequential model; choose one of {SEQUENTIAL_MODELS}"
                    )
                try:
                    module = self.bundle.model(name)
                except (KeyError, FileNotFoundError) as exc:
                    raise UnknownModelError(
                        f"bundle {getattr(self.bundle, 'version', '')} has no model {name!r} ({exc}); "
                        "retrain the bundle with it"
                    ) from exc
                module.eval()
                self._models[name] = module
            return self._models[name]

    def history(self, user: UserFeatures, model: torch.nn.Module) -> np.ndarray:
        """The user's history (1, L) int64, oldest first, left-padded; unknown recent items dropped."""
        length = self.max_len if self.max_len is not None else int(model.max_len)
        _, hist, _ = user_features_to_arrays([user], self.bundle, length)
        return hist

    def candidate_indices(self, candidates: Sequence[str]) -> np.ndarray:
        """Item indices (C,) of candidate ids; raises UnknownItemError for ids the bundle lacks."""
        idx = self.bundle.item_map.index(candidates)
        if (idx == 0).any():
            unknown = [c for c, i in zip(candidates, idx, strict=True) if i == 0]
            raise UnknownItemError(unknown, str(getattr(self.bundle, "version", "")))
        return idx

    def score(
        self, user: UserFeatures, candidates: Sequence[str], model: str | None = None
    ) -> np.ndarray | None:
        """Sequence-model scores (C,) of the candidates, or None when the user has no known recent item."""
        name = model or self.default_model
        module = self.model(name)
        idx = self.candidate_indices(candidates)
        hist = self.history(user, module)
        if not hist.any():
            return None
        with torch.inference_mode():
            scores = module.score_candidates(torch.from_numpy(hist), torch.from_numpy(idx[None, :]))
        return scores[0].double().numpy()

    def score_batch(
        self,
        users: Sequence[UserFeatures],
        candidates: Sequence[Sequence[str]],
        model: str | None = None,
    ) -> list[np.ndarray | None]:
        """``score`` for many requests in one forward pass: per request, scores (C_n,) or None.

        Candidate lists may differ in length (padded with index 0 internally).
        """
        if len(users) != len(candidates):
            raise ValueError(f"{len(users)} users but {len(candidates)} candidate lists")
        if not users:
            return []
        name = model or self.default_model
        module = self.model(name)
        idx = [self.candidate_indices(c) for c in candidates]
        length = self.max_len if self.max_len is not None else int(module.max_len)
        _, hist, _ = user_features_to_arrays(list(users), self.bundle, length)
        width = max(1, max(len(i) for i in idx))
        cand = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            cand[row, : len(i)] = i
        warm = hist.any(axis=1)
        out: list[np.ndarray | None] = [None] * len(users)
        if warm.any():
            with torch.inference_mode():
                scores = module.score_candidates(torch.from_numpy(hist[warm]), torch.from_numpy(cand[warm]))
            scores = scores.double().numpy()
            for row, k in enumerate(np.flatnonzero(warm)):
                out[k] = scores[row, : len(idx[k])].copy()
        return out

    def rerank(
        self,
        user: UserFeatures,
        candidates: list[str],
        upstream: np.ndarray,
        model: str | None = None,
    ) -> tuple[list[str], np.ndarray]:
        """(candidates sorted by final score desc, final scores (C,) float64).

        upstream: the previous stage's scores (C,), aligned with candidates. Without a known recent
        item the candidates come back as given with the upstream scores.
        """
        upstream = np.asarray(upstream, dtype=np.float64)
        if upstream.shape != (len(candidates),):
            raise ValueError(
                f"upstream must have one score per candidate: shape {upstream.shape}, "
                f"{len(candidates)} candidates"
            )
        if not np.isfinite(upstream).all():
            raise ValueError("upstream scores must be finite")
        name = model or self.default_model
        if not candidates:
            self.model(name)
            return [], upstream
        seq = self.score(user, candidates, name)
        if seq is None:
            logger.debug("user %s has no known recent item: upstream order kept", user.user_id)
            return list(candidates), upstream
        weight = 0.0 if model is None and self.passthrough_default else self.blend_weight(name)
        final = blend_scores(seq, upstream, weight)
        order = np.argsort(-final, kind="stable")
        return [candidates[i] for i in order], final[order]
