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
from recstack.models import RANKING_MODELS
from recstack.models.multitask import MultiTaskRanker, combine
from recstack.models.ncf import NeuMF
from recstack.serving.candidates import floor_score, known_positions
from recstack.serving.errors import UnknownItemError, UnknownModelError
from recstack.serving.features_adapter import user_features_to_arrays

logger = logging.getLogger(__name__)


def ranking_components(scores: np.ndarray, per_task: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The ranker's named scores for later stages: "ranking" (combined) and "p_<task>" per task."""
    out = {"ranking": np.asarray(scores, dtype=np.float64)}
    out.update(
        {t if t.startswith("p_") else f"p_{t}": np.asarray(v, np.float64) for t, v in per_task.items()}
    )
    return out


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
        return self.score_batch([user], [candidates], model, weights)[0]

    def score_batch(
        self,
        users: Sequence[UserFeatures],
        candidates: Sequence[Sequence[str]],
        model: str | None = None,
        weights: Mapping[str, float] | None = None,
    ) -> list[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """:meth:`score` for many requests in one forward pass (lists may differ in length)."""
        if len(users) != len(candidates):
            raise ValueError(f"{len(users)} users but {len(candidates)} candidate lists")
        module = self.model(model or self.default_model)
        idx = [self.candidate_indices(c) for c in candidates]
        width = max((len(i) for i in idx), default=0)
        if width == 0:
            return [(np.zeros(0), {}) for _ in idx]
        grid = np.ones((len(idx), width), dtype=np.int64)  # padding rows score item 1, sliced off below
        for row, i in enumerate(idx):
            grid[row, : len(i)] = i
        items = torch.from_numpy(grid)
        u, h, g = user_features_to_arrays(list(users), self.bundle, getattr(module.cfg, "max_len", 1))
        with torch.inference_mode():
            if isinstance(module, NeuMF):
                users_t = torch.from_numpy(u).repeat_interleave(width)
                logit = module(users_t, items.reshape(-1)).view(len(idx), width)
                probs = {"click": torch.sigmoid(logit).double().numpy()}
            else:
                logits = module.score_grid(
                    torch.from_numpy(u), torch.from_numpy(h), torch.from_numpy(g), items
                )
                probs = {t: torch.sigmoid(v).double().numpy() for t, v in logits.items()}
        if isinstance(module, NeuMF):
            w: Mapping[str, float] = {"click": 1.0}
        elif weights:
            w = {k.removeprefix("p_"): float(v) for k, v in weights.items()}
        else:
            w = module.cfg.task_weights
        combined = np.asarray(combine(probs, w), dtype=np.float64)
        return [
            (combined[row, : len(i)].copy(), {t: p[row, : len(i)].copy() for t, p in probs.items()})
            for row, i in enumerate(idx)
        ]

    def warm_up(self) -> None:
        """One request (see Retriever.warm_up)."""
        ids = self.bundle.item_map.ids
        self.rank(UserFeatures("warm-up", recent_items=list(ids[:5])), list(ids[:50]), self.default_model)

    def rank_many(
        self, requests: Sequence[tuple[UserFeatures, list[str], str | None, Mapping[str, float] | None]]
    ) -> list[tuple[list[str], np.ndarray, dict[str, np.ndarray]]]:
        """:meth:`rank` for requests (user, candidates, model, weights): one forward pass per
        (model, weights) group."""
        groups: dict[tuple, list[int]] = {}
        for k, (_, _, model, weights) in enumerate(requests):
            key = (model or self.default_model, tuple(sorted((weights or {}).items())))
            groups.setdefault(key, []).append(k)
        split = [known_positions(self.bundle.item_map, r[1], "ranking") for r in requests]
        known = [[r[1][i] for i in pos] for r, (pos, _) in zip(requests, split, strict=True)]
        out: list = [None] * len(requests)
        for (model, weights), ks in groups.items():
            scored = self.score_batch(
                [requests[k][0] for k in ks], [known[k] for k in ks], model, dict(weights) or None
            )
            for k, (scores, probs) in zip(ks, scored, strict=True):
                order = np.argsort(-scores, kind="stable")
                ids = [known[k][i] for i in order]
                unknown = [requests[k][1][i] for i in split[k][1]]  # ranked last, upstream order kept
                tail = np.full(len(unknown), floor_score(scores))
                probs = {t: np.concatenate([p[order], np.zeros(len(unknown))]) for t, p in probs.items()}
                out[k] = (ids + unknown, np.concatenate([scores[order], tail]), probs)
        return out

    def rank(
        self,
        user: UserFeatures,
        candidates: list[str],
        model: str = "multitask",
        weights: Mapping[str, float] | None = None,
    ) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
        """(ids sorted by combined score desc, combined scores, {task: probabilities}) all in that order.

        Ties keep the candidates' input order. Ids the bundle does not know come last (in their
        input order, scored below the rest; ``recstack.serving.candidates``); task weights
        naming an unknown task raise TaskWeightError (a ValueError).
        """
        return self.rank_many([(user, candidates, model, weights)])[0]
