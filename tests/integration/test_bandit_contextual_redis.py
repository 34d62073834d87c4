"""Serving LinUCB / LinTS from Redis state: stale state, corrupted state, bad input (real Redis)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import numpy as np
import pytest
import redis
import redis.asyncio as aioredis

from recstack.devstack.embedded import EmbeddedRedis
from recstack.exploration.arms import ArmCache
from recstack.exploration.context import ContextBuilder
from recstack.exploration.linear_store import save_arms
from recstack.exploration.linucb import HybridLinUCB, LinUCB
from recstack.exploration.online import ContextualExplorer, make_policies, make_state_caches
from recstack.exploration.rewards import ContextRecorder
from recstack.exploration.thompson import ThompsonSlatePolicy
from recstack.features.keys import Keys
from recstack.features.store import FeatureStore
from recstack.redis_cluster import async_from_url, sync_from_url
from recstack.v1 import bandit_pb2, bandit_pb2_grpc, common_pb2
from services.bandit.servicer import BanditServicer
from tests.grpc_support import in_process_channel
from tests.helpers import BANDIT_D as D
from tests.helpers import BANDIT_GENRES as GENRES
from tests.helpers import BANDIT_ITEMS as ITEMS
from tests.helpers import BANDIT_USER as USER
from tests.helpers import BANDIT_VOCAB as VOCAB


def _trained_state(builder: ContextBuilder, winner: str, hybrid: bool = False) -> LinUCB | HybridLinUCB:
    """Arm ``winner`` rewarded every time it was tried, the others never."""
    policy = HybridLinUCB(D, epsilon=0.0) if hybrid else LinUCB(D, epsilon=0.0)
    x = builder.build(USER, ITEMS, np.zeros(len(ITEMS)))
    for _ in range(30):
        for i, item in enumerate(ITEMS[:-1]):
            policy.update(item, x[i], 1.0 if item == winner else 0.0)
    return policy


def _explorer(client: aioredis.Redis, builder: ContextBuilder, ttl_s: float = 60.0) -> ContextualExplorer:
    policies = make_policies(D, alpha=0.1, epsilon=0.0, ridge=1.0, v=0.1, seed=0, n_draws=200)
    states = make_state_caches(client, policies, "t:", ttl_s=ttl_s, timeout_s=0.5)
    assert states["linucb"] is states["lints"] and states["linucb"] is not states["linucb-hybrid"]
    return ContextualExplorer(policies, builder, states, ContextRecorder(client, "t:"), explore_slots=1)


@pytest.mark.integration
async def test_linucb_serves_redis_state_records_contexts_and_survives_redis_down(tmp_path, caplog) -> None:
    builder = ContextBuilder(VOCAB, GENRES, D)
    with EmbeddedRedis(log_dir=tmp_path) as server:
        sync = redis.Redis.from_url(server.url)
        save_arms(sync, _trained_state(builder, "i9"), ITEMS[:-1], prefix="t:")
        save_arms(sync, _trained_state(builder, "i9", hybrid=True), ITEMS[:-1], prefix="t:")
        client = aioredis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        explorer = _explorer(client, builder, ttl_s=0.0)  # every request re-reads Redis
        scores = np.linspace(1.0, 0.0, len(ITEMS))
        for name in ("linucb", "lints", "linucb-hybrid"):
            decision, stale = await explorer.explore(name, USER, ITEMS, scores, 4, request_id=f"r-{name}")
            assert decision.items[:3] == ITEMS[:3] and decision.items[3] == "i9", name
            assert not stale and decision.explored.tolist() == [False] * 3 + [True]
            assert np.allclose(decision.propensities[:3], 1.0) and 0.5 < decision.propensities[3] <= 1.0
        for task in list(explorer._tasks):
            await task
        recorded = sync.hgetall(Keys("t:").bandit_contexts("r-linucb"))
        assert set(recorded) == {b"ridge", b"kind", b"shared", b"x:i9"} and recorded[b"kind"] == b"linucb"
        assert sync.hget(Keys("t:").bandit_contexts("r-linucb-hybrid"), "kind") == b"linucb-hybrid"
        np.testing.assert_allclose(
            np.frombuffer(recorded[b"x:i9"], dtype="<f4"),
            builder.build(USER, ["i9"], [scores[9]])[0],
            atol=1e-6,
        )
        sync.close()
    # Redis is gone: the last loaded state is served, marked stale; the context write fails quietly
    with caplog.at_level(logging.WARNING):
        decision, stale = await explorer.explore("linucb", USER, ITEMS, scores, 4, request_id="r-down")
        for task in list(explorer._tasks):
            await task
    assert stale and decision.items[3] == "i9"
    assert "contexts of request r-down not recorded" in caplog.text
    await client.aclose()


@pytest.mark.integration
async def test_corrupted_state_is_reset_to_prior_with_warning(redis_url: str, caplog) -> None:
    builder = ContextBuilder(VOCAB, GENRES, D)
    sync = sync_from_url(redis_url)
    save_arms(sync, _trained_state(builder, "i9"), ITEMS[:-1], prefix="t:")
    sync.hset(Keys("t:").linear_arm("i9", "linucb"), "state", b"garbage")
    sync.close()
    client = async_from_url(redis_url)
    explorer = _explorer(client, builder)
    with caplog.at_level(logging.WARNING):
        decision, stale = await explorer.explore("linucb", USER, ITEMS, np.zeros(len(ITEMS)), 4)
    assert not stale and "bandit state of arm 'i9' is corrupted, reset to the prior" in caplog.text
    np.testing.assert_allclose(explorer.policies["linucb"].a_inverse("i9"), np.eye(D))
    assert len(decision.items) == 4
    await client.aclose()


@pytest.fixture
async def stub(redis_url: str) -> AsyncIterator[bandit_pb2_grpc.BanditStub]:
    client = async_from_url(redis_url)
    store = FeatureStore(client, Keys("t:"))
    servicer = BanditServicer(
        ThompsonSlatePolicy(explore_slots=1, seed=0),
        ArmCache(store.get_arms),
        _explorer(client, ContextBuilder(VOCAB, GENRES, D)),
    )
    async with in_process_channel((bandit_pb2_grpc.add_BanditServicer_to_server, servicer)) as channel:
        yield bandit_pb2_grpc.BanditStub(channel)
    await client.aclose()


def _cands(*scores: float) -> list[common_pb2.ScoredItem]:
    return [common_pb2.ScoredItem(item_id=f"i{j}", score=s) for j, s in enumerate(scores)]


@pytest.mark.integration
@pytest.mark.parametrize("policy", ["thompson", "linucb", "lints", "linucb-hybrid"])
async def test_bad_input_is_invalid_argument_and_edge_cases_are_documented(stub, policy: str) -> None:
    user = common_pb2.UserFeatures(user_id="u1", genre_scores={"Drama": 0.5})
    for request, message in (
        (bandit_pb2.ExploreRequest(candidates=_cands(1.0, float("nan")), k=2, policy=policy), "not finite"),
        (bandit_pb2.ExploreRequest(candidates=_cands(1.0, float("inf")), k=2, policy=policy), "not finite"),
        (bandit_pb2.ExploreRequest(candidates=_cands(1.0), k=0, policy=policy), "k must be >= 1"),
        (
            bandit_pb2.ExploreRequest(candidates=_cands(1.0), k=1, explore_slots=-1, policy=policy),
            "explore_slots",
        ),
        (
            bandit_pb2.ExploreRequest(
                candidates=[common_pb2.ScoredItem(item_id="a"), common_pb2.ScoredItem(item_id="a")],
                k=1,
                policy=policy,
            ),
            "distinct",
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Explore(request)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, message
        assert message in info.value.details()
    # documented behaviour: empty candidates -> empty slate; k > candidates -> every candidate
    empty = await stub.Explore(bandit_pb2.ExploreRequest(user=user, k=3, policy=policy))
    assert list(empty.items) == [] and empty.policy == policy
    short = await stub.Explore(
        bandit_pb2.ExploreRequest(user=user, candidates=_cands(3, 2, 1), k=10, policy=policy)
    )
    assert sorted(x.item_id for x in short.items) == ["i0", "i1", "i2"]
    assert all(0 < x.propensity <= 1 for x in short.items)


@pytest.mark.integration
async def test_unknown_policy_names_the_choices(stub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Explore(bandit_pb2.ExploreRequest(candidates=_cands(1.0), k=1, policy="greedy"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "thompson, linucb, lints" in info.value.details()
