"""The gateway's diversity stage (MMR / DPP before the bandit) and the gateway monitor."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import REGISTRY

from recstack.diversity.catalog import CatalogSimilarity
from recstack.experiments.assignment import PipelineConfig
from recstack.exploration.arms import ArmCache
from recstack.exploration.thompson import ThompsonSlatePolicy
from recstack.serving.chain import Chain, RecommendState
from recstack.serving.stages import BanditStage, DiversityStage, LocalBandit
from services.gateway.monitoring import CoverageWindow, GatewayMonitor

# 20 candidates ranked i0..i19; the top 10 are all "Action", every other item has its own genre.
ITEMS = [f"i{i}" for i in range(20)]
GENRES = {x: (["Action"] if i < 10 else [f"G{i}"]) for i, x in enumerate(ITEMS)}


def ranked_state(pipeline: PipelineConfig, k: int = 5) -> RecommendState:
    s = RecommendState(request_id="r", user_id="u", k=k, pipeline=pipeline, known_user=True)
    s.set_ranking(ITEMS, np.linspace(1.0, 0.5, len(ITEMS)))
    return s


async def no_arms(items: list[str]) -> dict[str, tuple[float, float]]:
    return {}


@pytest.mark.parametrize("method", ["mmr", "dpp"])
async def test_diversity_stage_raises_intra_list_diversity(method: str) -> None:
    sim = CatalogSimilarity(GENRES)
    plain = ranked_state(PipelineConfig(explore_slots=0))
    await Chain([DiversityStage(sim)]).run(plain)
    div = ranked_state(PipelineConfig(explore_slots=0, diversity=method, diversity_lambda=0.5))
    await Chain([DiversityStage(sim)]).run(div)
    assert plain.candidates == ITEMS[:5] and "diversity" not in plain.stages_ran  # method none
    assert div.stages_ran == ["diversity"] and div.candidates[0] == "i0"  # most relevant first
    assert sim.list_diversity(plain.candidates) == 0.0
    assert sim.list_diversity(div.candidates) > 0.5
    assert len(set(div.candidates)) == 5


async def test_cosine_on_item_embeddings() -> None:
    emb = np.zeros((21, 2))
    emb[1:11] = [1.0, 0.0]  # i0..i9 point the same way
    emb[11:] = [0.0, 1.0]  # i10..i19 orthogonal
    index = {x: i + 1 for i, x in enumerate(ITEMS)}
    sim = CatalogSimilarity(GENRES, emb, index)
    s = ranked_state(
        PipelineConfig(explore_slots=0, diversity="mmr", diversity_lambda=0.5, diversity_similarity="cosine")
    )
    await Chain([DiversityStage(sim)]).run(s)
    assert s.candidates[:2] == ["i0", "i10"]
    assert s.model_versions["diversity"] == "mmr:cosine"


async def test_cosine_without_embeddings_degrades_with_the_reason() -> None:
    s = ranked_state(PipelineConfig(diversity="mmr", diversity_similarity="cosine"))
    await Chain([DiversityStage(CatalogSimilarity(GENRES))]).run(s)
    assert s.degraded and "two_tower item embeddings" in s.skipped["diversity"]
    assert s.candidates == ITEMS[:5]  # previous order kept


async def test_bandit_explores_after_diversity_so_propensities_stay_valid() -> None:
    """Fixed positions are the diversified head (propensity 1); the explored slots come from the
    rest of the list the bandit received, with the propensity the policy computed on it."""
    sim = CatalogSimilarity(GENRES)
    bandit = LocalBandit(ThompsonSlatePolicy(explore_slots=2, seed=1), ArmCache(no_arms))
    pipeline = PipelineConfig(explore_slots=2, diversity="mmr", diversity_lambda=0.5)
    diversified = ranked_state(pipeline)
    await Chain([DiversityStage(sim)]).run(diversified)
    s = ranked_state(pipeline)
    await Chain([DiversityStage(sim), BanditStage(bandit)]).run(s)
    assert s.stages_ran == ["diversity", "bandit"]
    assert s.candidates[:3] == diversified.candidates[:3]
    assert s.propensities is not None and list(s.propensities[:3]) == [1.0, 1.0, 1.0]
    assert all(0 < p < 1 for p in s.propensities[3:])
    assert not set(s.candidates[3:]) & set(diversified.candidates[:3])


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def test_monitor_observes_size_diversity_coverage_and_freshness() -> None:
    now = [1_000_000.0]
    created = {"i0": now[0] - 100.0, "i1": now[0] - 300.0}
    monitor = GatewayMonitor(
        20, CatalogSimilarity(GENRES), created, coverage_window_s=120, clock=lambda: now[0]
    )
    before = {
        "n": sample("recstack_gateway_recommendations_count"),
        "div": sample("recstack_gateway_intra_list_diversity_count"),
        "unknown": sample("recstack_gateway_freshness_unknown_total"),
    }
    out = monitor.observe(["i0", "i1", "i10", "i11"])
    assert out["diversity"] == pytest.approx((3 * 1.0 + 2 * 1.0 + 1 * 0.0) / 6 * 1.0 + 0.0, abs=0.2)
    assert out["freshness_s"] == pytest.approx(200.0)
    assert sample("recstack_gateway_catalog_coverage") == pytest.approx(4 / 20)
    assert sample("recstack_gateway_recommendations_count") == before["n"] + 1
    assert sample("recstack_gateway_intra_list_diversity_count") == before["div"] + 1
    monitor.observe(["i12", "i13"])
    assert sample("recstack_gateway_freshness_unknown_total") == before["unknown"] + 1
    now[0] += 200  # past the window: the first lists expire
    monitor.observe(["i5"])
    assert sample("recstack_gateway_catalog_coverage") == pytest.approx(1 / 20)


def test_coverage_window_counts_distinct_items_in_the_window() -> None:
    w = CoverageWindow(window_s=60, bucket_s=10)
    w.add(["a", "b"], 0.0)
    w.add(["b", "c"], 15.0)
    assert w.distinct(15.0) == 3
    assert w.distinct(75.0) == 2  # the bucket [0, 10) left the window
    assert w.distinct(200.0) == 0
    with pytest.raises(ValueError, match="window_s and bucket_s must be > 0"):
        CoverageWindow(0)


def test_catalog_jaccard_matrix_equals_the_pairwise_definition() -> None:
    """The precomputed genre matrix gives the Jaccard of the items' genre lists; items outside the
    catalogue or without genres are similar to nothing but themselves."""
    from recstack.diversity.metrics import jaccard_similarity

    genres = {"a": ["x", "y"], "b": ["y"], "c": [], "d": ["z", "x", "y"]}
    items = ["d", "a", "unknown", "b", "c", "a"]
    got = CatalogSimilarity(genres).matrix(items, "jaccard")
    expected = jaccard_similarity([genres.get(i, []) for i in items])
    np.testing.assert_allclose(got, expected)
    assert got[0, 1] == 2 / 3 and got[2, 2] == 1.0 and got[2, 1] == 0.0
    assert CatalogSimilarity({}).matrix(["p", "q"], "jaccard").tolist() == [[1.0, 0.0], [0.0, 1.0]]
