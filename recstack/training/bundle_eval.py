"""Offline evaluation of a bundle: every model, and the whole serving pipeline, under EVAL_PROTOCOL.md.

Whole pipeline (the serving cores the services call), for each user with a target:

1. ``Retriever.retrieve_batch`` (the bundle's retrieval sources, merged) -> candidates with the
   retrieval scores;
2. ``Ranker.score_batch`` (multi-task) -> ``ranking`` and ``p_click``/``p_like``/``p_purchase``;
3. ``Reranker.stage_scores`` -> every sequence model's scores and ``popularity``;
4. ``Reranker.final_scores`` with the bundle's rerank method (fusion, or one stage's order).

The method is chosen on the validation split (:func:`select_rerank`) among every single score's own
order, "retrieval" (the first stage alone) included, and a :class:`~recstack.serving.fusion.Fusion`
measured by 5-fold cross-validation over users, so the pipeline is at least as good as its best
stage on validation. Items outside the candidate list score -inf (they rank after every
candidate). The pair-scoring rankers (multi-task, NeuMF) are evaluated the way they serve: over the
retrieval candidates, never over all items.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recstack.evaluation import Split, evaluate_candidates, evaluate_scores
from recstack.evaluation.protocol import user_histories
from recstack.features.keys import RECENT_ITEMS_CAP
from recstack.features.types import UserFeatures
from recstack.models import RANKING_MODELS, SEQUENTIAL_MODELS
from recstack.models.mf import BPRMF
from recstack.models.two_tower import TwoTower
from recstack.serving.fusion import FusionData, cross_validated, fit_fusion, ndcg_at
from recstack.training.examples import SplitFeatures

logger = logging.getLogger(__name__)

PAIR_MODELS = RANKING_MODELS
FUSION_L2 = (1e-3, 1e-2, 1e-1)
FUSION_MAX_LISTS = 8_000  # validation lists (with their target) a fusion is fitted on; a seeded sample beyond


class BundleDataMismatchError(ValueError):
    """The bundle was trained on other users/items than the dataset being evaluated."""


def check_same_ids(bundle, split: Split) -> None:
    """Raise BundleDataMismatchError unless the bundle's item and user ids are the split's."""
    if bundle.item_map.ids != split.item_map.ids or bundle.user_map.ids != split.user_map.ids:
        raise BundleDataMismatchError(
            f"bundle {bundle.version} was trained on {bundle.manifest.get('data_spec')!r} "
            f"({len(bundle.item_map)} items, {len(bundle.user_map)} users), not on this dataset "
            f"({split.n_items} items, {split.n_users} users); evaluate with the --data it was trained on"
        )


def model_scorer(
    module: torch.nn.Module, feats: SplitFeatures, stage: str
) -> Callable[[np.ndarray], np.ndarray]:
    """``score_fn(users [B]) -> [B, n_items + 1]`` over all items for a bundle module at ``stage``
    (models that score every item cheaply: two-tower, BPR-MF, the sequence models)."""
    st = feats.stages[stage]

    def fn(users: np.ndarray) -> np.ndarray:
        u = torch.from_numpy(np.asarray(users, dtype=np.int64))
        with torch.inference_mode():
            if isinstance(module, TwoTower):
                h, g = st.batch(users, module.cfg.max_len)
                vec = module.user_embedding(u, torch.from_numpy(h), torch.from_numpy(g))
                return (vec @ module.item_embeddings().T).numpy()
            if isinstance(module, BPRMF):
                return module.score_all(u).numpy()
            if hasattr(module, "score_all") and hasattr(module, "max_len"):  # sequential models
                h = st.history[users][:, -min(module.max_len, st.history.shape[1]) :]
                return module.score_all(torch.from_numpy(h)).float().numpy()
        raise TypeError(f"no full-ranking scorer for {type(module).__name__}; rank it over candidates")

    return fn


def stage_users(
    split: Split, feats: SplitFeatures, stage: str, users: np.ndarray | None = None
) -> tuple[np.ndarray, list[UserFeatures], list[set]]:
    """(user indices with a target, their UserFeatures as Redis would hold them, their seen item ids).

    ``users`` restricts to those user indices (default: every user with a target at ``stage``).
    """
    targets = split.targets(stage)
    if users is None:
        users = np.flatnonzero(targets > 0)
    else:
        users = np.asarray(users, dtype=np.int64)
        users = users[targets[users] > 0]
    hist = user_histories(split, stage)
    vocab = feats.genres.genre_vocab
    ids = split.item_map.ids
    out, seen = [], []
    for u in users:
        h = hist[u]
        recent = [ids[i - 1] for i in h[::-1][:RECENT_ITEMS_CAP]]
        g = feats.stages[stage].genre[u]
        scores = {vocab[j]: float(g[j]) for j in np.flatnonzero(g)}
        out.append(UserFeatures(user_id=split.user_map.ids[u - 1], recent_items=recent, genre_scores=scores))
        seen.append({ids[i - 1] for i in h})
    return users, out, seen


@dataclass
class StageLists:
    """Per user (aligned with ``users``): candidate item indices and every stage's named scores."""

    users: np.ndarray
    candidates: list[np.ndarray] = field(default_factory=list)
    scores: list[dict[str, np.ndarray]] = field(default_factory=list)

    def upstream(self, k: int) -> np.ndarray:
        """The order the rerank stage receives for list k: the ranker's, else retrieval's."""
        s = self.scores[k]
        return s["ranking"] if "ranking" in s else s["retrieval"]

    def names(self) -> list[str]:
        return sorted({n for s in self.scores for n in s})

    def target_positions(self, split: Split, stage: str) -> np.ndarray:
        """Position of each user's target in its list, -1 when retrieval missed it."""
        t = split.targets(stage)
        out = np.full(len(self.users), -1, dtype=np.int64)
        for k, (u, cand) in enumerate(zip(self.users, self.candidates, strict=True)):
            hit = np.flatnonzero(cand == t[u])
            if len(hit):
                out[k] = hit[0]
        return out


def pipeline_lists(
    bundle,
    split: Split,
    feats: SplitFeatures,
    stage: str,
    retrieve_n: int,
    users: np.ndarray | None = None,
    ranker_model: str | None = "multitask",
    rerank: bool = True,
    batch: int = 256,
) -> StageLists:
    """Run the serving cores for every user with a target at ``stage`` (or ``users``): retrieval,
    the ranker (``ranker_model``; None or absent from the bundle: no ranking scores) and, with
    ``rerank``, the scores the rerank stage computes (every sequence model of the bundle, popularity)."""
    users, feats_list, seen = stage_users(split, feats, stage, users)
    return features_lists(bundle, users, feats_list, seen, retrieve_n, ranker_model, rerank, batch)


def features_lists(
    bundle,
    users: np.ndarray,
    feats_list: Sequence[UserFeatures],
    seen: Sequence[set],
    retrieve_n: int,
    ranker_model: str | None = "multitask",
    rerank: bool = True,
    batch: int = 256,
) -> StageLists:
    """:func:`pipeline_lists` for users given by their features (as Redis would hold them) and the
    items they consumed (never retrieved): the one path from a history to a pipeline list, used by
    the offline evaluation and by ``recstack replay``'s offline side. ``users`` labels the rows."""
    from recstack.serving.ranker import Ranker, ranking_components
    from recstack.serving.reranker import Reranker, popularity_feature
    from recstack.serving.retriever import Retriever

    retriever = Retriever(bundle)
    ranker = Ranker(bundle, ranker_model) if ranker_model in bundle.model_names else None
    seq_models = [m for m in SEQUENTIAL_MODELS if m in bundle.model_names] if rerank else []
    reranker = Reranker(bundle, default_model=seq_models[0]) if seq_models else None
    popularity = popularity_feature(bundle)
    lists = StageLists(np.asarray(users))
    for start in range(0, len(feats_list), batch):
        part = list(feats_list[start : start + batch])
        retrieved = retriever.retrieve_batch(part, retrieve_n, seen[start : start + batch])
        ids = [r[0] for r in retrieved]
        comps = [dict(r[2]) for r in retrieved]
        if ranker is not None:
            for comp, (combined, per_task) in zip(
                comps, ranker.score_batch(part, ids, ranker_model), strict=True
            ):
                comp.update(ranking_components(combined, per_task))
        if reranker is not None:
            for comp, extra in zip(comps, reranker.stage_scores(part, ids, comps, seq_models), strict=True):
                comp.update(extra)
        for cand_ids, comp in zip(ids, comps, strict=True):
            cand = bundle.item_map.index(cand_ids)
            if rerank:
                comp["popularity"] = popularity[cand]
            lists.candidates.append(cand)
            lists.scores.append(comp)
    return lists


def pipeline_top_k(bundle, lists: StageLists, k: int) -> list[list[str]]:
    """Each list's first ``k`` item ids in the bundle's final order (its rerank settings), as the
    rerank stage sorts them (descending final score, stable)."""
    from recstack.serving.reranker import Reranker

    reranker = Reranker(bundle, settings=bundle.configs.get("rerank") or {"model": None, "blend": {}})
    ids = bundle.item_map.ids
    out = []
    for row, scores in enumerate(lists.scores):
        final = np.asarray(reranker.final_scores(scores, lists.upstream(row)), dtype=np.float64)
        order = np.argsort(-final, kind="stable")[:k]
        out.append([ids[i - 1] for i in lists.candidates[row][order].tolist()])
    return out


def _lists_candidates(
    lists: StageLists, final: Sequence[np.ndarray]
) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``candidate_ranks`` score function: each user's list padded to the batch's longest."""
    row = {int(u): k for k, u in enumerate(lists.users)}

    def fn(users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        ks = [row[int(u)] for u in users]
        width = max((len(lists.candidates[k]) for k in ks), default=1) or 1
        items = np.ones((len(ks), width), dtype=np.int64)
        valid = np.zeros((len(ks), width), dtype=bool)
        scores = np.full((len(ks), width), -np.inf)
        for b, k in enumerate(ks):
            n = len(lists.candidates[k])
            items[b, :n], valid[b, :n], scores[b, :n] = lists.candidates[k], True, final[k]
        return items, valid, scores

    return fn


def evaluate_lists(lists: StageLists, final: Sequence[np.ndarray], split: Split, stage: str) -> dict:
    """Protocol metrics of the lists ordered by ``final`` (items outside a list rank last), over the
    lists only: users x list length, never users x items."""
    return evaluate_candidates(_lists_candidates(lists, final), split, stage, users=lists.users)


def order_by(lists: StageLists, name: str) -> list[np.ndarray]:
    """Final scores when ordering by score ``name`` alone (the upstream order where a list lacks it)."""
    return [s.get(name, lists.upstream(k)) for k, s in enumerate(lists.scores)]


def recall(lists: StageLists, split: Split, stage: str) -> float:
    pos = lists.target_positions(split, stage)
    return float(np.mean(pos >= 0)) if len(pos) else 0.0


def _list_ndcg(lists: StageLists, final: Sequence[np.ndarray], pos: np.ndarray) -> float:
    """Mean NDCG@10 over all lists (a list without its target counts 0)."""
    gains = np.zeros(len(pos))
    for k in np.flatnonzero(pos >= 0):
        f = np.asarray(final[k], dtype=np.float64)
        gains[k] = ndcg_at(f[None, :], np.ones((1, len(f)), bool), pos[k : k + 1])[0]
    return float(gains.mean()) if len(gains) else 0.0


def select_rerank(lists: StageLists, split: Split, stage: str = "valid", seed: int = 0) -> tuple[dict, dict]:
    """Choose the rerank method on ``lists`` (validation): (serving settings, report).

    Candidates: each score's own order (``retrieval`` = the first stage alone, the ranker, every
    sequence model, popularity...) and a fusion over all of them, whose NDCG@10 is measured out of
    fold (5-fold cross-validation over users, L2 weight chosen the same way). The best wins; a tie
    goes to the single order. The report lists every candidate's validation NDCG@10.
    """
    pos = lists.target_positions(split, stage)
    names = lists.names()
    report: dict = {"orders": {n: _list_ndcg(lists, order_by(lists, n), pos) for n in names}}
    best_name = max(names, key=lambda n: (report["orders"][n], n == "retrieval"))
    best: tuple[float, dict] = (report["orders"][best_name], {"method": "order", "order": best_name})
    rows = np.flatnonzero(pos >= 0)
    if len(rows) > FUSION_MAX_LISTS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, FUSION_MAX_LISTS, replace=False))
    if len(rows) >= 20:
        data = FusionData.build(
            [lists.scores[k] for k in rows],
            [len(lists.candidates[k]) for k in rows],
            pos[rows].tolist(),
            names,
        )
        scale = len(rows) / len(pos) * (np.sum(pos >= 0) / len(rows))  # share of all lists with a target
        cv = {l2: float(cross_validated(data, names, l2, seed=seed).mean()) * scale for l2 in FUSION_L2}
        report["fusion_cv"] = {str(k): v for k, v in cv.items()}
        l2 = max(cv, key=lambda k: (cv[k], k))
        if cv[l2] > best[0]:
            fusion = fit_fusion(data, names, l2)
            best = (cv[l2], {"method": "fusion", "fusion": fusion.to_dict()})
    report["chosen"] = best[1]["method"] if best[1]["method"] == "fusion" else f"order:{best_name}"
    report["NDCG@10"] = best[0]
    logger.info("pipeline: validation NDCG@10 %s -> %s", _fmt(report), report["chosen"])
    return best[1], report


def _fmt(report: dict) -> str:
    parts = [f"{n} {v:.4f}" for n, v in sorted(report["orders"].items(), key=lambda kv: -kv[1])]
    parts += [f"fusion(l2={k}) {v:.4f}" for k, v in report.get("fusion_cv", {}).items()]
    return ", ".join(parts)


def evaluate_pipeline(
    bundle, split: Split, feats: SplitFeatures, retrieve_n: int = 200, rerank: dict | None = None
) -> tuple[dict, dict, StageLists]:
    """(metrics, rerank settings, test lists). With ``rerank`` None the method is chosen on
    validation (:func:`select_rerank`); otherwise ``rerank`` (the bundle's settings) is used."""
    from recstack.serving.reranker import Reranker

    metrics: dict = {"retrieve_n": retrieve_n}
    if rerank is None:
        valid = pipeline_lists(bundle, split, feats, "valid", retrieve_n)
        rerank, metrics["valid"] = select_rerank(valid, split)
    reranker = Reranker(bundle, settings=rerank)
    test = pipeline_lists(bundle, split, feats, "test", retrieve_n)
    final = [reranker.final_scores(s, test.upstream(k)) for k, s in enumerate(test.scores)]
    metrics["test"] = evaluate_lists(test, final, split, "test")
    stages = {f"retrieval_recall@{retrieve_n}": recall(test, split, "test")}
    for name in test.names():
        stages[f"{name}_NDCG@10"] = evaluate_lists(test, order_by(test, name), split, "test")["NDCG@10"]
    metrics["stages_test"] = stages
    metrics["rerank"] = (
        rerank.get("method", "blend") if rerank.get("method") != "order" else f"order:{rerank['order']}"
    )
    return metrics, rerank, test


def evaluate_baselines(split: Split) -> dict[str, dict]:
    """Test metrics of the Popularity and ItemKNN baselines fitted on ``split`` (about a second)."""
    from recstack.models.baselines import ItemKNN, Popularity

    out: dict[str, dict] = {}
    for name, model in (("pop", Popularity()), ("itemknn", ItemKNN())):
        t0 = time.perf_counter()
        model.fit(split)
        res = evaluate_scores(model.scorer("test"), split, "test")
        res["train_seconds"] = round(time.perf_counter() - t0, 2)
        out[name] = res
    return out


def evaluate_bundle(data_spec: str, artifacts: Path | str, pipeline: bool = True) -> dict:
    """Test metrics of every model of the bundle at ``artifacts`` on ``data_spec`` (which must be
    the data it was trained on), with their recorded training time and peak memory, and of the
    whole pipeline (with the rerank settings stored in the bundle).

    Returns ``{model: {"HR@10", "NDCG@10", "HR@50", "NDCG@50", "users", "train_seconds",
    "peak_rss_mb"}, ..., "pop": {...}, "itemknn": {...}, "pipeline": {...}}``. The pair-scoring
    rankers are ranked over the bundle's retrieval candidates (``"over": "retrieval candidates"``);
    the non-neural baselines are fitted on the split here (they are not part of the bundle).
    """
    from recstack.artifacts import load_bundle
    from recstack.evaluation import leave_one_out
    from recstack.training.examples import build_features

    bundle = load_bundle(artifacts)
    split = leave_one_out(bundle_dataset(bundle, data_spec))
    check_same_ids(bundle, split)
    feats = build_features(split, feature_length(bundle), bundle.genre_vocab)
    recorded = bundle.metrics.get("models", {})
    retrieve_n = int(bundle.metrics.get("pipeline", {}).get("retrieve_n", 200))
    out: dict = {}
    test_lists = None
    if pipeline and "two_tower" in bundle.model_names:
        rerank = bundle.configs.get("rerank") or {"model": None, "blend": {}}
        t0 = time.perf_counter()
        pipe, _, test_lists = evaluate_pipeline(bundle, split, feats, retrieve_n, rerank)
        res = dict(pipe["test"])
        res.update({"stages": pipe["stages_test"], "rerank": pipe["rerank"]})
        res["eval_seconds"] = round(time.perf_counter() - t0, 2)
        out["pipeline"] = res
    for name in bundle.model_names:
        if name in PAIR_MODELS:
            if test_lists is None and "two_tower" not in bundle.model_names:
                continue
            lists = test_lists or pipeline_lists(bundle, split, feats, "test", retrieve_n, ranker_model=None)
            res = evaluate_lists(lists, candidate_scores(bundle, name, lists, split, feats), split, "test")
            res["over"] = f"retrieval candidates ({retrieve_n})"
        else:
            res = evaluate_scores(model_scorer(bundle.model(name), feats, "test"), split, "test")
        rec = recorded.get(name, {})
        res.update({k: rec.get(k) for k in ("train_seconds", "peak_rss_mb", "best_epoch")})
        out[name] = res
    out.update(evaluate_baselines(split))
    if "pipeline" in out:
        out["pipeline"] = out.pop("pipeline")  # last row of the table
    return out


def held_out_users(bundle) -> list[str]:
    """The users removed from the bundle's training data (``recstack train --holdout-users``)."""
    training = bundle.manifest.get("training") or {}
    return [str(u) for u in (training.get("holdout") or {}).get("user_ids", [])]


def bundle_dataset(bundle, data_spec: str):
    """``data_spec`` loaded as the bundle saw it: without the users it held out of training."""
    from recstack.data import load_dataset
    from recstack.evaluation.holdout import without_users

    dataset = load_dataset(data_spec)
    held = held_out_users(bundle)
    return without_users(dataset, held) if held else dataset


def candidate_scores(
    bundle, name: str, lists: StageLists, split: Split, feats: SplitFeatures
) -> list[np.ndarray]:
    """Scores of ranker ``name`` over each list's candidates (the serving Ranker, as the service)."""
    from recstack.serving.ranker import Ranker

    ranker = Ranker(bundle, name)
    _, feats_list, _ = stage_users(split, feats, "test", lists.users)
    ids = [[bundle.item_map.ids[i - 1] for i in c.tolist()] for c in lists.candidates]
    out: list[np.ndarray] = []
    for start in range(0, len(ids), 256):
        out += [
            s for s, _ in ranker.score_batch(feats_list[start : start + 256], ids[start : start + 256], name)
        ]
    return out


def feature_length(bundle) -> int:
    """History length the bundle's models read (at least Redis' recent-items cap)."""
    lengths = [int(getattr(bundle.model(n), "max_len", 0) or 0) for n in bundle.model_names]
    lengths += [int(getattr(getattr(bundle.model(n), "cfg", None), "max_len", 0)) for n in bundle.model_names]
    return max([*lengths, RECENT_ITEMS_CAP])
