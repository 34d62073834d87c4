"""Offline evaluation of a bundle: every model, and the whole serving pipeline, under EVAL_PROTOCOL.md.

Whole pipeline (the same serving cores the services call): for each user with a target,

1. ``Retriever.retrieve(user, n=retrieve_n, exclude=history)`` (two-tower + FAISS),
2. ``Ranker.score(user, candidates, "multitask")`` (weighted task probabilities),
3. ``Reranker`` sequence scores of the candidates, blended with the ranking score as the rerank
   service does: ``final = w * z(seq) + (1 - w) * z(rank)`` (z = standardise over the list).

The blend weight ``w`` and the sequence model are chosen on the validation stage (best NDCG@10)
and stored in the bundle's ``serving.rerank`` settings; the test metrics use that choice. Items
outside the retrieved list score -inf (they rank after every candidate).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from recstack.evaluation import Split, evaluate_scores
from recstack.evaluation.protocol import user_histories
from recstack.features.keys import RECENT_ITEMS_CAP
from recstack.features.types import UserFeatures
from recstack.models.mf import BPRMF
from recstack.models.multitask import MultiTaskRanker, combine
from recstack.models.ncf import NeuMF
from recstack.models.two_tower import TwoTower
from recstack.training.examples import SplitFeatures

logger = logging.getLogger(__name__)

BLEND_GRID = tuple(float(x) for x in np.linspace(0.0, 1.0, 11))


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
    """``score_fn(users [B]) -> [B, n_items + 1]`` for a bundle module at ``stage``."""
    items = torch.arange(feats.n_items + 1)
    st = feats.stages[stage]

    def fn(users: np.ndarray) -> np.ndarray:
        u = torch.from_numpy(np.asarray(users, dtype=np.int64))
        with torch.inference_mode():
            if isinstance(module, TwoTower):
                h, g = st.batch(users, module.cfg.max_len)
                vec = module.user_embedding(u, torch.from_numpy(h), torch.from_numpy(g))
                return (vec @ module.item_embeddings().T).numpy()
            if isinstance(module, MultiTaskRanker):
                out = []
                for s in range(0, len(users), 64):
                    h, g = st.batch(users[s : s + 64], module.cfg.max_len)
                    lg = module.score_matrix(u[s : s + 64], torch.from_numpy(h), torch.from_numpy(g), items)
                    out.append(combine({t: torch.sigmoid(v) for t, v in lg.items()}, module.cfg.task_weights))
                return torch.cat(out).numpy()
            if isinstance(module, NeuMF):
                return torch.cat(
                    [module.score_matrix(u[s : s + 128], items) for s in range(0, len(u), 128)]
                ).numpy()
            if isinstance(module, BPRMF):
                return module.score_all(u).numpy()
            if hasattr(module, "score_all") and hasattr(module, "max_len"):  # sequential models
                h = st.history[users][:, -min(module.max_len, st.history.shape[1]) :]
                return module.score_all(torch.from_numpy(h)).float().numpy()
        raise TypeError(f"no offline scorer for {type(module).__name__}")

    return fn


def stage_users(
    split: Split, feats: SplitFeatures, stage: str
) -> tuple[np.ndarray, list[UserFeatures], list[set]]:
    """(user indices with a target, their UserFeatures as Redis would hold them, their seen item ids)."""
    targets = split.targets(stage)
    users = np.flatnonzero(targets > 0)
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
    """Per user (aligned with ``users``): candidate indices and stage scores."""

    users: np.ndarray
    candidates: list[np.ndarray]
    retrieval: list[np.ndarray]
    ranking: list[np.ndarray]
    sequence: dict[str, list[np.ndarray | None]]


def pipeline_lists(
    bundle, split: Split, feats: SplitFeatures, stage: str, retrieve_n: int, seq_models: list[str]
) -> StageLists:
    """Run retrieval, ranking and the sequence models of the serving cores for every user at ``stage``."""
    from recstack.serving.ranker import Ranker
    from recstack.serving.reranker import Reranker
    from recstack.serving.retriever import Retriever

    retriever = Retriever(bundle)
    ranker = Ranker(bundle)
    rerankers = {m: Reranker(bundle, default_model=m, blend=1.0) for m in seq_models}
    users, feats_list, seen = stage_users(split, feats, stage)
    lists = StageLists(users, [], [], [], {m: [] for m in seq_models})
    for start in range(0, len(users), 256):
        batch = feats_list[start : start + 256]
        retrieved = retriever.retrieve_batch(batch, retrieve_n, seen[start : start + 256])
        for uf, (cand, rscore) in zip(batch, retrieved, strict=True):
            lists.candidates.append(bundle.item_map.index(cand))
            lists.retrieval.append(np.asarray(rscore, np.float64))
            lists.ranking.append(ranker.score(uf, cand, "multitask")[0])
            for m, rr in rerankers.items():
                lists.sequence[m].append(rr.score(uf, cand, m))
    return lists


def _lists_scorer(
    lists: StageLists, final: list[np.ndarray], n_items: int
) -> Callable[[np.ndarray], np.ndarray]:
    row = {int(u): k for k, u in enumerate(lists.users)}

    def fn(users: np.ndarray) -> np.ndarray:
        out = np.full((len(users), n_items + 1), -np.inf)
        for b, u in enumerate(users):
            k = row[int(u)]
            out[b, lists.candidates[k]] = final[k]
        return out

    return fn


def blended(lists: StageLists, model: str | None, weight: float) -> list[np.ndarray]:
    """Final scores per user: the rerank blend of sequence scores with ranking scores."""
    from recstack.serving.reranker import blend_scores

    out = []
    for k, rank in enumerate(lists.ranking):
        seq = lists.sequence[model][k] if model else None
        out.append(rank if seq is None or len(rank) == 0 else blend_scores(seq, rank, weight))
    return out


def evaluate_lists(lists: StageLists, final: list[np.ndarray], split: Split, stage: str) -> dict:
    return evaluate_scores(_lists_scorer(lists, final, split.n_items), split, stage, users=lists.users)


def recall(lists: StageLists, split: Split, stage: str) -> float:
    t = split.targets(stage)
    hits = [t[u] in set(c.tolist()) for u, c in zip(lists.users, lists.candidates, strict=True)]
    return float(np.mean(hits)) if hits else 0.0


def evaluate_pipeline(
    bundle, split: Split, feats: SplitFeatures, retrieve_n: int = 200, rerank: dict | None = None
) -> tuple[dict, dict]:
    """(metrics, rerank settings). With ``rerank`` None, the sequence model and blend weight are
    chosen on validation; otherwise ``rerank = {"model": name | None, "blend": {name: w}}`` is used."""
    seq_models = [m for m in ("sasrec", "gru4rec", "bert4rec") if m in bundle.model_names]
    metrics: dict = {"retrieve_n": retrieve_n}
    if rerank is None:
        valid = pipeline_lists(bundle, split, feats, "valid", retrieve_n, seq_models)
        best = (evaluate_lists(valid, valid.ranking, split, "valid")["NDCG@10"], None, 0.0)
        blend: dict[str, float] = {}
        for m in seq_models:
            scores = {
                w: evaluate_lists(valid, blended(valid, m, w), split, "valid")["NDCG@10"] for w in BLEND_GRID
            }
            w_best = max(scores, key=lambda w: (scores[w], w))
            blend[m] = round(w_best, 3)
            logger.info("pipeline: %s blend %.1f valid NDCG@10 %.4f", m, w_best, scores[w_best])
            if scores[w_best] > best[0]:
                best = (scores[w_best], m, w_best)
        rerank = {"model": best[1], "blend": blend}
        metrics["valid"] = {"NDCG@10": best[0]}
    model = rerank.get("model")
    weight = float(rerank.get("blend", {}).get(model, 1.0)) if model else 0.0
    test = pipeline_lists(bundle, split, feats, "test", retrieve_n, [model] if model else [])
    metrics["test"] = evaluate_lists(test, blended(test, model, weight), split, "test")
    metrics["stages_test"] = {
        f"retrieval_recall@{retrieve_n}": recall(test, split, "test"),
        "retrieval_NDCG@10": evaluate_lists(test, test.retrieval, split, "test")["NDCG@10"],
        "ranking_NDCG@10": evaluate_lists(test, test.ranking, split, "test")["NDCG@10"],
    }
    metrics["rerank_model"] = model
    metrics["rerank_blend"] = weight
    return metrics, rerank


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
    "peak_rss_mb"}, ..., "pop": {...}, "itemknn": {...}, "pipeline": {...}}``; the non-neural
    baselines are fitted on the split here (they are not part of the bundle) so that every model is
    reported next to them.
    """
    from recstack.artifacts import load_bundle
    from recstack.data import load_dataset
    from recstack.evaluation import leave_one_out
    from recstack.training.examples import build_features

    bundle = load_bundle(artifacts)
    split = leave_one_out(load_dataset(data_spec))
    check_same_ids(bundle, split)
    lengths = [int(getattr(bundle.model(n), "max_len", 0) or 0) for n in bundle.model_names]
    lengths += [int(getattr(getattr(bundle.model(n), "cfg", None), "max_len", 0)) for n in bundle.model_names]
    max_len = max([*lengths, RECENT_ITEMS_CAP])
    feats = build_features(split, max_len, bundle.genre_vocab)
    recorded = bundle.metrics.get("models", {})
    out: dict = {}
    for name in bundle.model_names:
        res = evaluate_scores(model_scorer(bundle.model(name), feats, "test"), split, "test")
        rec = recorded.get(name, {})
        res.update({k: rec.get(k) for k in ("train_seconds", "peak_rss_mb", "best_epoch")})
        out[name] = res
    out.update(evaluate_baselines(split))
    if pipeline and {"two_tower", "multitask"} <= set(bundle.model_names):
        rerank = bundle.configs.get("rerank") or {"model": None, "blend": {}}
        t0 = time.perf_counter()
        pipe, _ = evaluate_pipeline(
            bundle, split, feats, int(bundle.metrics.get("pipeline", {}).get("retrieve_n", 200)), rerank
        )
        res = dict(pipe["test"])
        res.update(
            {
                "stages": pipe["stages_test"],
                "rerank_model": pipe["rerank_model"],
                "rerank_blend": pipe["rerank_blend"],
                "eval_seconds": round(time.perf_counter() - t0, 2),
            }
        )
        out["pipeline"] = res
    return out
