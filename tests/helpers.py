"""Fakes and data builders shared by several test modules (import them from here, never from a
test module).

    gateway chain     CATALOG, POPULAR, FakeStore, FakeRetrieval, FakeRanking, FakeRerank, make_chain
    reranker          N_ITEMS, ITEM_IDS, SuccessorModel, FakeBundle
    bundles           make_bundle (a small real bundle on disk)
    datasets          planted_dataset (two genre groups), make_dataset (rows -> Dataset)
    contextual bandit BANDIT_D, BANDIT_VOCAB, BANDIT_GENRES, BANDIT_ITEMS, BANDIT_USER
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from recstack.artifacts import save_bundle
from recstack.data.schema import Dataset, IdMap
from recstack.exploration.arms import ArmCache
from recstack.exploration.thompson import ThompsonSlatePolicy
from recstack.features.types import UserFeatures
from recstack.models.multitask import MMoERanker, MultiTaskConfig
from recstack.models.ncf import NeuMF, NeuMFConfig
from recstack.models.two_tower import TwoTower, TwoTowerConfig
from recstack.serving.chain import Chain
from recstack.serving.stages import LocalBandit, StageResult, build_stages

# --- gateway chain: in-process fake backends -------------------------------------------------------

CATALOG = [f"i{i}" for i in range(50)]
POPULAR = list(reversed(CATALOG))  # i49 most popular


class FakeStore:
    def __init__(self, features: dict[str, UserFeatures] | None = None, down: bool = False):
        self.features = features or {}
        self.down = down
        self.popular_calls = 0

    async def get_user_features(self, user_id: str) -> UserFeatures:
        if self.down:
            raise ConnectionError("redis down")
        return self.features.get(user_id, UserFeatures(user_id))

    async def get_popular_scores(self, n: int, half_life_s: float) -> list[tuple[str, float]]:
        self.popular_calls += 1
        if self.down:
            raise ConnectionError("redis down")
        return []  # nothing streamed yet: the catalogue list is used

    async def get_arms(self, items: Sequence[str]) -> dict[str, tuple[float, float]]:
        if self.down:
            raise ConnectionError("redis down")
        return {}


class FakeRetrieval:
    def __init__(self, fail: bool = False, delay: float = 0.0):
        self.fail = fail
        self.delay = delay
        self.seen_exclude: set[str] = set()

    async def retrieve(self, user: UserFeatures, n: int, exclude: Collection[str]) -> StageResult:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("retrieval unreachable")
        self.seen_exclude = set(exclude)
        items = [x for x in CATALOG if x not in exclude][:n]
        comps = {"retrieval": 1.0 / np.arange(1, len(items) + 1), "two_tower": np.full(len(items), 0.5)}
        return StageResult(items, np.linspace(1, 0, len(items)), "v1", comps)


class FakeRanking:
    """Reverses the order (so a skipped ranking is visible)."""

    def __init__(self, fail: bool = False, delay: float = 0.0):
        self.fail = fail
        self.delay = delay
        self.calls: list[tuple[str, Mapping[str, float] | None]] = []

    async def rank(
        self,
        user: UserFeatures,
        items: Sequence[str],
        scores: np.ndarray,
        model: str,
        weights: Mapping[str, float] | None = None,
    ) -> StageResult:
        self.calls.append((model, weights))
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError("boom")
        out = list(reversed(items))
        return StageResult(out, np.linspace(1, 0, len(out)), "v1", {"p_click": np.full(len(out), 0.5)})


class FakeRerank:
    def __init__(self) -> None:
        self.calls = 0
        self.components: list[dict] = []
        self.items: list[list[str]] = []

    async def rerank(
        self, user: UserFeatures, items: Sequence[str], scores: np.ndarray, model: str, components=None
    ) -> StageResult:
        self.calls += 1
        self.components.append(dict(components or {}))
        self.items.append(list(items))
        return StageResult(list(items), np.asarray(scores), "v1")


def make_chain(store: FakeStore, retrieval: FakeRetrieval, ranking: FakeRanking, rerank: FakeRerank) -> Chain:
    bandit = LocalBandit(ThompsonSlatePolicy(explore_slots=1, seed=0), ArmCache(store.get_arms))
    stages = build_stages(
        store, retrieval, ranking, rerank, bandit, POPULAR, ranking_timeout_s=0.05, retrieval_timeout_s=0.05
    )
    return Chain(stages, POPULAR)


# --- reranker: a sequence model that prefers the successor of the newest item ---------------------

N_ITEMS = 10
ITEM_IDS = [f"m{i}" for i in range(1, N_ITEMS + 1)]  # index i <-> "m{i}"


class SuccessorModel(torch.nn.Module):
    """Scores candidate c by -|c - (newest history item + 1)|: the successor of the newest item first."""

    max_len = 5

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[torch.Tensor] = []

    def score_candidates(self, history: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        self.seen.append(history.clone())
        return -(candidates - (history[:, -1:] + 1)).abs().float()


@dataclass
class FakeBundle:
    """The part of recstack.artifacts.Bundle the reranker and the features adapter read."""

    models: dict[str, torch.nn.Module]
    item_map: IdMap = field(default_factory=lambda: IdMap(ITEM_IDS))
    user_map: IdMap = field(default_factory=lambda: IdMap(["u1"]))
    genre_vocab: list[str] = field(default_factory=list)
    configs: dict = field(default_factory=dict)
    version: str = "v-test"

    def model(self, name: str) -> torch.nn.Module:
        return self.models[name]


# --- bundles and datasets ------------------------------------------------------------------------


def make_bundle(
    root: Path, n_users: int = 6, n_items: int = 8, created_at: dict[str, int] | None = None
) -> Path:
    torch.manual_seed(0)
    genres = torch.zeros(n_items + 1, 2)
    genres[1:, 0] = 1.0
    genres[::2, 1] = 1.0
    genres[0] = 0.0
    models = {
        "two_tower": TwoTower(TwoTowerConfig(n_users, n_items, 2, dim=8, hidden=8, max_len=5), genres),
        "multitask": MMoERanker(
            MultiTaskConfig(n_users, n_items, 2, dim=4, max_len=5, bottom=(8,), tower=4, mmoe=True), genres
        ),
        "ncf": NeuMF(NeuMFConfig(n_users, n_items, mf_dim=4, mlp_dims=(8, 4))),
    }
    item_ids = [f"i{k}" for k in range(1, n_items + 1)]
    return save_bundle(
        root,
        models=models,
        item_ids=item_ids,
        item_genres={i: ["A"] + (["B"] if k % 2 == 1 else []) for k, i in enumerate(item_ids)},
        titles={i: f"title {i}" for i in item_ids},
        genre_vocab=["A", "B"],
        popularity=list(reversed(item_ids)),
        user_ids=[f"u{k}" for k in range(1, n_users + 1)],
        metrics={"models": {"two_tower": {"test": {"NDCG@10": 0.5}}}},
        data_spec="synthetic",
        serving={"rerank": {"blend": 0.5}},
        created_at=created_at,
    )


def planted_dataset(n_users: int = 80, per_group: int = 30, per_user: int = 10, seed: int = 0) -> Dataset:
    """Two user groups; group g only consumes items of genre G{g} (items g*per_group+1 ..)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        g = u % 2
        items = rng.choice(per_group, size=per_user, replace=False) + g * per_group
        for t, i in enumerate(items):
            rows.append((f"u{u}", f"i{i}", 1000 + t, "click", np.nan))
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "event_type", "rating"])
    items = pd.DataFrame(
        {
            "item_id": [f"i{i}" for i in range(2 * per_group)],
            "genres": [[f"G{i // per_group}"] for i in range(2 * per_group)],
            "title": [f"item {i}" for i in range(2 * per_group)],
        }
    )
    return Dataset("planted", inter, items)


def make_dataset(rows: list[tuple[str, str, int]], genres: dict[str, list[str]] | None = None) -> Dataset:
    inter = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp"])
    inter["timestamp"] = inter["timestamp"].astype(np.int64)
    inter["event_type"] = "click"
    inter["rating"] = np.arange(len(rows), dtype=np.float64)
    genres = genres or {}
    ids = sorted(set(inter["item_id"]))
    items = pd.DataFrame({"item_id": ids, "genres": [genres.get(i, []) for i in ids], "title": ids})
    return Dataset(name="tiny", interactions=inter, items=items)


# --- contextual bandit: 12 items over a 6-genre vocabulary, d = 11 ----------------------------------

BANDIT_D = 11  # g = 4 genre buckets: a 6-genre vocabulary folds
BANDIT_VOCAB = ["Action", "Comedy", "Drama", "Horror", "Romance", "SciFi"]
BANDIT_GENRES = {f"i{j}": [BANDIT_VOCAB[j % 6], BANDIT_VOCAB[(j * 5) % 6]] for j in range(12)}
BANDIT_GENRES["i3"] = ["Drama", "Drama", "Western"]  # a duplicate and a genre outside the vocabulary
BANDIT_ITEMS = [f"i{j}" for j in range(12)] + ["unknown"]
BANDIT_USER = {"Action": 0.4, "Drama": 0.9, "SciFi": 0.2, "Jazz": 5.0}
