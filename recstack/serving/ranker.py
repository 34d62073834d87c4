"""Ranking core (no grpc): multi-task p(click/like/purchase) or NeuMF scores for candidate lists.

``rank(user, candidates, model="multitask", weights=None)`` scores all candidates of a request in
one forward pass and returns them sorted by the combined score (for "multitask": the weighted sum
of task probabilities, default weights from the model config; for "ncf": p(click) = sigmoid(logit)).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from recstack.features.types import UserFeatures
from recstack.models.multitask import MultiTaskRanker, combine
from recstack.models.ncf import NeuMF
from recstack.serving.errors import UnknownItemError, UnknownModelError
from recstack.serving.features_adapter import user_features_to_arrays

logger = logging.getLogger(__name__)

RANKING_MODELS = ("multitask", "ncf")


class Ranker:
    """Ranks candidate item ids for one user with a bundle's ranking model."""

    def __init__(self, bundle, default_model: str = "multitask"):
        self.bundle = bundle
        self.default_model = default_model
        self.model(default_model)  # fail at start, not at the first request

    def model(self, name: str) -> torch.nn.Module:
        try:
            module = self.bundle.model(name)
        except KeyError as exc:
            raise UnknownModelError(
                f"bundle {self.bundle.version} has no ranking model {name!r}; it holds "
                f"{getattr(self.bundle, 'model_names', [])}; use one of {RANKING_MODELS} or retrain"
            ) from exc
        if not isinstance(module, MultiTaskRanker | NeuMF):
            raise UnknownModelError(f"model {name!r} ({type(module).__name__}) is not a ranking model")
        return module

    def candidate_indices(self, candidates: Sequence[str]) -> np.ndarray:
        """Item indices int64 [C]; raises UnknownItemError listing ids the bundle does not know."""
        idx = self.bundle.item_map.index(candidates)
        if (idx == 0).any():
            raise UnknownItemError(
                [c for c, i in zip(candidates, idx, strict=True) if i == 0], self.bundle.version
            )
        return idx

    def score(
        self,
        user: UserFeatures,
        candidates: Sequence[str],
        model: str | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(combined scores float64 [C], {task: probabilities [C]}) in candidate order."""
        module = self.model(model or self.default_model)
        idx = torch.from_numpy(self.candidate_indices(candidates))
        if len(idx) == 0:
            return np.zeros(0), {}
        u, h, g = user_features_to_arrays([user], self.bundle, getattr(module.cfg, "max_len", 1))
        with torch.inference_mode():
            if isinstance(module, NeuMF):
                p = torch.sigmoid(module.score_matrix(torch.from_numpy(u), idx)[0]).double().numpy()
                return p, {"click": p}
            logits = module.score_matrix(torch.from_numpy(u), torch.from_numpy(h), torch.from_numpy(g), idx)
            probs = {t: torch.sigmoid(v[0]).double().numpy() for t, v in logits.items()}
        w = (
            module.cfg.task_weights
            if not weights
            else {k.removeprefix("p_"): float(v) for k, v in weights.items()}
        )
        return np.asarray(combine(probs, w), dtype=np.float64), probs

    def rank(
        self,
        user: UserFeatures,
        candidates: list[str],
        model: str = "multitask",
        weights: Mapping[str, float] | None = None,
    ) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
        """(ids sorted by combined score desc, combined scores, {task: probabilities}) all in that order.

        Ties keep the candidates' input order. Unknown ids raise UnknownItemError; task weights
        naming an unknown task raise TaskWeightError (a ValueError).
        """
        scores, probs = self.score(user, candidates, model, weights)
        order = np.argsort(-scores, kind="stable")
        return [candidates[i] for i in order], scores[order], {t: p[order] for t, p in probs.items()}
