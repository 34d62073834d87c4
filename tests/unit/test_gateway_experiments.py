"""Config-driven experiments in the gateway: variant -> pipeline, holdout, QA override, exposure in
the impression context, and hot reload that keeps the previous valid configuration."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import pytest

from recstack.diversity.catalog import CatalogSimilarity
from recstack.experiments.assignment import UnknownVariantError, assign
from recstack.experiments.config import (
    DEFAULT_EXPERIMENT,
    ConfigWatcher,
    ExperimentsConfig,
    parse_experiments,
)
from recstack.exploration.arms import ArmCache
from recstack.exploration.thompson import ThompsonSlatePolicy
from recstack.features.types import UserFeatures
from recstack.serving.chain import Chain
from recstack.serving.stages import LocalBandit, build_stages
from recstack.v1 import gateway_pb2
from services.gateway.__main__ import watch_experiments
from services.gateway.servicer import Recommender
from tests.helpers import CATALOG, POPULAR, FakeRanking, FakeRerank, FakeRetrieval, FakeStore

LAYERED = {
    "holdout": 0.1,
    "default_pipeline": {"rerank": {"model": "gru4rec"}},
    "experiments": [
        {
            "id": "ranker",
            "salt": "ranker-v1",
            "layer": "ranking",
            "variants": [
                {"name": "control", "pipeline": {"ranker": "multitask"}},
                {
                    "name": "ncf",
                    "pipeline": {
                        "ranker": "ncf",
                        "rerank": {"enabled": False},
                        "multitask_weights": {"click": 1, "like": 0.5, "purchase": 2},
                    },
                },
            ],
        },
        {
            "id": "div",
            "salt": "div-v1",
            "layer": "diversity",
            "variants": [
                {"name": "off", "pipeline": {"bandit": {"slots": 0}}},
                {
                    "name": "mmr",
                    "pipeline": {"diversity": {"method": "mmr", "lambda": 0.5}, "bandit": {"slots": 2}},
                },
            ],
        },
    ],
}


def make_chain(store: FakeStore, retrieval: FakeRetrieval, ranking: FakeRanking, rerank: FakeRerank) -> Chain:
    """The standard stages with fakes, including the diversity stage (one genre per 5 items)."""
    bandit = LocalBandit(ThompsonSlatePolicy(seed=0), ArmCache(store.get_arms))
    similarity = CatalogSimilarity({x: [f"g{i // 5}"] for i, x in enumerate(CATALOG)})
    return Chain(
        build_stages(store, retrieval, ranking, rerank, bandit, POPULAR, similarity=similarity), POPULAR
    )


def find_user(cfg: ExperimentsConfig, want: dict[str, str]) -> str:
    """A user id whose assignments include ``want`` (experiment -> variant), not held out."""
    for i in range(5000):
        user = f"user{i}"
        got = {a.experiment_id: a.variant for a in cfg.resolve(user).assignments}
        if all(got.get(k) == v for k, v in want.items()):
            return user
    raise AssertionError(f"no user with {want} among 5000")


def test_variant_pipelines_are_layered_over_the_default() -> None:
    cfg = parse_experiments(LAYERED)
    user = find_user(cfg, {"ranker": "ncf", "div": "mmr"})
    r = cfg.resolve(user)
    assert [a.experiment_id for a in r.assignments] == ["ranker", "div"] and not r.qa and not r.holdout
    p = r.pipeline
    assert (p.ranking_model, p.rerank_enabled, p.rerank_model) == ("ncf", False, "gru4rec")
    assert dict(p.task_weights) == {"click": 1.0, "like": 0.5, "purchase": 2.0}
    assert (p.diversity, p.diversity_lambda, p.diversity_similarity) == ("mmr", 0.5, "jaccard")
    assert (p.explore_slots, p.policy) == (2, "thompson")

    other = cfg.resolve(find_user(cfg, {"ranker": "control", "div": "off"})).pipeline
    assert (other.ranking_model, other.rerank_enabled, other.diversity, other.explore_slots) == (
        "multitask",
        True,
        "none",
        0,
    )
    assert other.task_weights == ()  # not set: the ranking model's own weights apply


def test_holdout_users_get_the_default_pipeline_and_no_experiment() -> None:
    cfg = parse_experiments(LAYERED)
    held = [f"user{i}" for i in range(2000) if cfg.in_holdout(f"user{i}")]
    assert 120 < len(held) < 280  # ~10 %
    r = cfg.resolve(held[0])
    assert r.holdout and r.assignments == () and r.primary is None
    assert r.pipeline.rerank_model == "gru4rec" and r.pipeline.diversity == "none"


def test_force_variant_overrides_hash_and_holdout_and_is_flagged_qa() -> None:
    cfg = parse_experiments(LAYERED)
    held = next(f"user{i}" for i in range(2000) if cfg.in_holdout(f"user{i}"))
    r = cfg.resolve(held, "div/mmr")
    assert r.qa and [(a.experiment_id, a.variant) for a in r.assignments] == [("div", "mmr")]
    assert r.pipeline.diversity == "mmr"
    user = find_user(cfg, {"ranker": "control", "div": "off"})
    r = cfg.resolve(user, "ncf")  # bare variant name: the experiment that has it
    assert [(a.experiment_id, a.variant) for a in r.assignments] == [("ranker", "ncf"), ("div", "off")]
    with pytest.raises(UnknownVariantError, match=r"'nope'.*div/mmr"):
        cfg.resolve(user, "nope")
    with pytest.raises(UnknownVariantError, match="unknown experiment 'x'"):
        cfg.resolve(user, "x/mmr")
    with pytest.raises(UnknownVariantError, match="'zzz' is not a variant of experiment 'div'"):
        cfg.resolve(user, "div/zzz")


def test_builtin_config_hashes_like_the_default_experiment() -> None:
    cfg = ExperimentsConfig.builtin()
    for i in range(200):
        user = f"u{i}"
        r = cfg.resolve(user)
        expected = assign(DEFAULT_EXPERIMENT, user)
        assert r.primary is not None and r.primary.variant == expected.name
        assert r.pipeline.explore_slots == expected.pipeline.to_assignment().explore_slots


async def test_recommender_runs_the_variant_pipeline_and_logs_exposure() -> None:
    cfg = parse_experiments(LAYERED)
    user = find_user(cfg, {"ranker": "ncf", "div": "off"})
    store = FakeStore({user: UserFeatures(user, recent_items=["i0"])})
    ranking, rerank = FakeRanking(), FakeRerank()
    published = []

    class Publisher:
        def publish(self, state) -> None:  # the ImpressionPublisher interface
            published.append(state)

    rec = Recommender(make_chain(store, FakeRetrieval(), ranking, rerank), {user}, cfg, Publisher())  # type: ignore[arg-type]
    request = gateway_pb2.RecommendRequest(user_id=user, k=4)
    request.context.attributes.update({"page": "home", "qa": "1", "ab.ranker": "forged"})
    reply = await rec.recommend(request)
    assert reply.variant == "ncf"
    # ncf: no rerank (disabled), task weights passed on; div/off: no exploration slots, no bandit
    assert list(reply.stages) == ["features", "retrieval", "ranking"]
    assert ranking.calls == [("ncf", {"click": 1.0, "like": 0.5, "purchase": 2.0})]
    assert rerank.calls == 0
    (state,) = published
    assert (state.experiment_id, state.variant) == ("ranker", "ncf")
    # caller-set reserved keys are dropped; the exposure of both layers is in the context
    assert state.attributes == {"page": "home", "ab.ranker": "ncf", "ab.div": "off"}

    forced = gateway_pb2.RecommendRequest(user_id=user, k=4)
    forced.context.force_variant = "div/mmr"
    reply = await rec.recommend(forced)
    assert "diversity" in reply.stages and "bandit" in reply.stages
    assert published[-1].attributes == {"ab.ranker": "ncf", "ab.div": "mmr", "qa": "1"}


async def test_reload_swaps_valid_config_and_keeps_previous_on_bad_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "experiments.json"
    path.write_text(json.dumps(LAYERED))
    watcher = ConfigWatcher(path, interval_s=0.05)
    rec = Recommender(
        make_chain(FakeStore(), FakeRetrieval(), FakeRanking(), FakeRerank()), set(), watcher.config
    )
    task = asyncio.create_task(watch_experiments(watcher, rec, 0.05))

    async def until(predicate, what: str) -> None:
        deadline = asyncio.get_running_loop().time() + 10
        while not predicate():
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"timed out waiting for {what}")
            await asyncio.sleep(0.02)

    try:
        first = rec.experiments
        bad = json.loads(json.dumps(LAYERED))
        bad["experiments"][1]["variants"][1]["pipeline"]["diversity"]["lambda"] = 1.5
        with caplog.at_level(logging.ERROR, logger="recstack.experiments.config"):
            path.write_text(json.dumps(bad))
            await until(lambda: watcher.last_error is not None, "the bad file to be refused")
        assert rec.experiments is first
        assert "experiments[1].variants[1].pipeline.diversity.lambda: must be between 0 and 1" in (
            watcher.last_error or ""
        )
        assert str(path) in caplog.text and "keeping the previous one" in caplog.text
        reply = await rec.recommend(gateway_pb2.RecommendRequest(user_id="someone", k=2))
        assert reply.items  # still serving with the previous config

        good = json.loads(json.dumps(LAYERED))
        good["holdout"] = 0.0
        good["experiments"] = good["experiments"][:1]
        path.write_text(json.dumps(good))
        await until(lambda: rec.experiments is not first, "the valid file to be loaded")
        assert [e.id for e in rec.experiments.experiments] == ["ranker"] and watcher.last_error is None
    finally:
        task.cancel()
