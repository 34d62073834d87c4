"""Re-ranking core (no grpc): the final order of a request's candidates.

``Reranker(bundle).rerank(user, candidates, upstream, components=...)`` orders the candidates by
the method training chose on the validation split (the bundle's ``serving.rerank``):

- ``"fusion"``: a learned :class:`~recstack.serving.fusion.Fusion` over every stage's scores: the
  retrieval sources' and the ranker's (``components``, carried along the chain), the sequence
  models' (computed here from ``user.recent_items``, newest first as in Redis, with the shared
  features adapter and the model's ``score_candidates``, the function offline evaluation uses
  through ``score_all``) and the items' popularity;
- ``"order"``: one of those scores alone (``serving.rerank.order``), e.g. ``"retrieval"`` when no
  later stage beat the first one on validation;
- ``"blend"`` (bundles written before fusion, and requests that name a sequence model): the
  blend of one sequence model with the upstream score,

      final(c) = w * z(seq)(c) + (1 - w) * z(upstream)(c)

  where z standardises over the request's candidates (a constant vector becomes zeros) and ``w``
  is the bundle's per-model weight (1 = the sequence model alone, 0 = the upstream order).

Ties keep the upstream order. A user without a known recent item has no sequence scores: fusion
uses the other scores, the blend keeps the upstream order.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from recstack.features.types import UserFeatures
from recstack.models import SEQUENTIAL_MODELS
from recstack.serving.candidates import floor_score, known_positions
from recstack.serving.errors import UnknownItemError, UnknownModelError
from recstack.serving.features_adapter import user_features_to_arrays
from recstack.serving.fusion import Fusion, standardize

logger = logging.getLogger(__name__)

RERANK_METHODS = ("fusion", "order", "blend")
Scores = dict[str, np.ndarray]


def blend_scores(seq: np.ndarray, upstream: np.ndarray, weight: float) -> np.ndarray:
    """w * z(seq) + (1 - w) * z(upstream) over the last axis (see the module docstring)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"blend weight must lie in [0, 1], got {weight}")
    return weight * standardize(seq) + (1.0 - weight) * standardize(upstream)


def popularity_feature(bundle: Any) -> np.ndarray:
    """-log(1 + popularity rank) per item index (n_items + 1,), float64; unranked items rank last."""
    n = len(bundle.item_map)
    ranks = np.full(n + 1, float(n))
    order = bundle.item_map.index(getattr(bundle, "popularity", []) or [])
    order = order[order > 0]
    ranks[order] = np.arange(len(order), dtype=np.float64)
    return -np.log1p(ranks)


class Reranker:
    """Orders candidate lists (see the module docstring).

    bundle: a loaded bundle (``model(name)``, ``item_map``, ``configs``, ``version``, ``popularity``,
    plus what the features adapter reads: ``user_map``, ``genre_vocab``).
    default_model: sequence model of the blend when ``rerank(model=None)``; None reads
    ``bundle.configs["rerank"]["model"]`` when set, else "sasrec"; when that setting is present but
    null, the blend keeps the upstream order. Naming ``default_model`` selects the blend method.
    max_len: history length fed to the sequence models; None = each model's ``max_len``.
    blend: sequence-score weight of the blend, a float for every model or {model: weight}; None
    reads ``bundle.configs["rerank"]["blend"]`` when present, else 1.0 (sequence model only).
    settings: rerank settings to use instead of the bundle's ``serving.rerank`` (offline evaluation
    of a method before it is written to the bundle).
    """

    def __init__(
        self,
        bundle: Any,
        default_model: str | None = None,
        max_len: int | None = None,
        blend: float | Mapping[str, float] | None = None,
        settings: Mapping[str, Any] | None = None,
    ):
        if max_len is not None and max_len < 1:
            raise ValueError(f"max_len must be >= 1, got {max_len}")
        self.bundle = bundle
        settings = self._rerank_settings() if settings is None else settings
        self.method = "blend" if default_model is not None else settings.get("method", "blend")
        if self.method not in RERANK_METHODS:
            raise ValueError(f"serving.rerank.method must be one of {RERANK_METHODS}, got {self.method!r}")
        self.fusion = Fusion.from_dict(settings.get("fusion")) if self.method == "fusion" else None
        self.order_by = str(settings.get("order", "")) if self.method == "order" else ""
        if self.method == "order" and not self.order_by:
            raise ValueError("serving.rerank.order must name the score to order by")
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
        self._popularity: np.ndarray | None = None
        if self.method != "blend":
            check = [m for m in self.needed_scores() if m in SEQUENTIAL_MODELS]
        else:
            check = [] if self.passthrough_default else [self.default_model]
        for name in check:
            self.model(name)  # fail at start, not at the first request

    def needed_scores(self) -> list[str]:
        """The scores the default method reads (fusion features, the order's score, or none)."""
        if self.fusion is not None:
            return self.fusion.needs()
        return [self.order_by] if self.order_by else []

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

    def popularity(self, idx: np.ndarray) -> np.ndarray:
        """The popularity feature (C,) of item indices."""
        if self._popularity is None:
            self._popularity = popularity_feature(self.bundle)
        return self._popularity[idx]

    def stage_scores(
        self,
        users: Sequence[UserFeatures],
        candidates: Sequence[Sequence[str]],
        components: Sequence[Mapping[str, np.ndarray]],
        names: Sequence[str],
    ) -> list[Scores]:
        """Per request, the scores ``names`` of its candidates: a sequence model's from the request's
        ``components`` when the retrieval stage already computed them for every candidate (the same
        function: the model's score of the recent items), else computed here (one forward per model
        for the whole batch; absent for a user without a known recent item); ``popularity`` from
        the bundle; anything else from ``components``."""
        out: list[Scores] = [{} for _ in users]
        for name in names:
            if name in SEQUENTIAL_MODELS:
                given = [
                    k
                    for k, comp in enumerate(components)
                    if name in comp and np.isfinite(np.asarray(comp[name], dtype=np.float64)).all()
                ]
                for k in given:
                    out[k][name] = np.asarray(components[k][name], dtype=np.float64)
                rest = [k for k in range(len(users)) if k not in set(given)]
                if rest:
                    scored = self.score_batch([users[k] for k in rest], [candidates[k] for k in rest], name)
                    for k, seq in zip(rest, scored, strict=True):
                        if seq is not None:
                            out[k][name] = seq
            elif name == "popularity":
                for row, cand in enumerate(candidates):
                    out[row][name] = self.popularity(self.candidate_indices(cand))
            else:
                for row, comp in enumerate(components):
                    if name in comp:
                        out[row][name] = np.asarray(comp[name], dtype=np.float64)
        return out

    def final_scores(self, scores: Scores, upstream: np.ndarray) -> np.ndarray:
        """The default method's final scores (C,) from ``stage_scores`` of one request."""
        if self.fusion is not None:
            return self.fusion.score(scores, len(upstream))
        return scores.get(self.order_by, upstream)

    def warm_up(self) -> None:
        """One request with the bundle's method (see Retriever.warm_up)."""
        ids = self.bundle.item_map.ids
        if self.method == "blend" and self.passthrough_default:
            return
        cands = list(ids[:50])
        self.rerank(UserFeatures("warm-up", recent_items=list(ids[:5])), cands, np.linspace(1, 0, len(cands)))

    def rerank(
        self,
        user: UserFeatures,
        candidates: list[str],
        upstream: np.ndarray,
        model: str | None = None,
        components: Mapping[str, np.ndarray] | None = None,
    ) -> tuple[list[str], np.ndarray]:
        """(candidates sorted by final score desc, final scores (C,) float64).

        upstream: the previous stage's scores (C,), aligned with candidates; components: the
        earlier stages' named scores, each (C,) aligned with candidates (NaN where missing).
        ``model`` names a sequence model for the blend; None uses the bundle's method.
        """
        return self.rerank_many([(user, candidates, upstream, model, components)])[0]

    def rerank_many(self, requests: Sequence[RerankRequest]) -> list[tuple[list[str], np.ndarray]]:
        """:meth:`rerank` for many requests (user, candidates, upstream, model, components), with
        one forward pass per sequence model for all of them."""
        full = [_checked(*r) for r in requests]
        split = [known_positions(self.bundle.item_map, r[1], "rerank") for r in full]
        checked = [
            (u, [c[i] for i in pos], up[pos], m, {n: v[pos] for n, v in comps.items()})
            for (u, c, up, m, comps), (pos, _) in zip(full, split, strict=True)
        ]
        finals: list[np.ndarray | None] = [None] * len(checked)
        fused = [k for k, r in enumerate(checked) if r[1] and r[3] is None and self.method != "blend"]
        if fused:
            part = [checked[k] for k in fused]
            scores = self.stage_scores(
                [r[0] for r in part], [r[1] for r in part], [r[4] for r in part], self.needed_scores()
            )
            for k, r, sc in zip(fused, part, scores, strict=True):
                finals[k] = self.final_scores(sc, r[2])
        blended: dict[str, list[int]] = {}
        for k, (_, cands, upstream, model, _) in enumerate(checked):
            if k in fused:
                continue
            if model is None and self.passthrough_default:
                finals[k] = upstream
                continue
            name = model or self.default_model
            if not cands:
                self.model(name)
                continue
            blended.setdefault(name, []).append(k)
        keep: set[int] = set()  # returned as given: no candidates, or no known recent item to blend with
        for name, ks in blended.items():
            seqs = self.score_batch([checked[k][0] for k in ks], [checked[k][1] for k in ks], name)
            for k, seq in zip(ks, seqs, strict=True):
                if seq is None:
                    keep.add(k)
                else:
                    finals[k] = blend_scores(seq, checked[k][2], self.blend_weight(name))
        out = []
        for k, ((_, cands, upstream, _, _), final) in enumerate(zip(checked, finals, strict=True)):
            if final is None or k in keep:
                ids, scores = list(cands), upstream
            else:
                order = np.argsort(-final, kind="stable")
                ids, scores = [cands[i] for i in order], final[order]
            unknown = [full[k][1][i] for i in split[k][1]]  # ranked last, upstream order kept
            out.append((ids + unknown, np.concatenate([scores, np.full(len(unknown), floor_score(scores))])))
        return out


RerankRequest = tuple[
    UserFeatures, Sequence[str], np.ndarray, "str | None", "Mapping[str, np.ndarray] | None"
]


def _checked(user, candidates, upstream, model=None, components=None):
    """One rerank request, validated: ValueError naming what is wrong."""
    upstream = np.asarray(upstream, dtype=np.float64)
    if upstream.shape != (len(candidates),):
        raise ValueError(
            f"upstream must have one score per candidate: shape {upstream.shape}, "
            f"{len(candidates)} candidates"
        )
    if not np.isfinite(upstream).all():
        raise ValueError("upstream scores must be finite")
    for name, values in (components or {}).items():
        if np.shape(values) != (len(candidates),):
            raise ValueError(f"component {name!r} must have one score per candidate")
    return user, list(candidates), upstream, model, dict(components or {})
