"""The stream's writer, the gateway's feature reads and the bandit's Redis state on a real 3-master
Redis Cluster (tests/redis_cluster.py): every Lua call and multi-key command must stay in one slot
(the cluster answers CROSSSLOT otherwise), and the state equals the single-node one.

The whole stream / bandit suites run against the cluster too with ``RECSTACK_TEST_REDIS=cluster``
(``make test-redis-cluster``); these tests run in every suite run.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import redis
from redis.asyncio.cluster import RedisCluster

from recstack.events import new_event
from recstack.exploration.linear_store import LinearStateCache
from recstack.exploration.linucb import HybridLinUCB, LinUCB
from recstack.exploration.rewards import ContextRecorder, LinearRewardWriter
from recstack.features.keys import Keys
from recstack.features.store import FeatureStore
from recstack.features.writer import FeatureWriter
from recstack.redis_cluster import async_from_url, cluster_enabled, sync_from_url
from tests.integration.stream_support import GENRES, USERS, make_events, snapshot

pytestmark = pytest.mark.integration

T0 = 1_700_000_000.0


def _sources(n: int, start: int = 0) -> list[tuple[str, int]]:
    return [("user-events:0", start + k) for k in range(n)]


async def _state(url: str, cluster: bool, prefix: str) -> dict[str, object]:
    client = sync_from_url(url, cluster=cluster, decode_responses=True)
    try:
        return snapshot(client, prefix)
    finally:
        client.close()


def _assert_same(got: dict[str, object], want: dict[str, object]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        if key.startswith("recent:"):
            assert got[key] == value, key
        else:
            assert got[key] == pytest.approx(value, rel=1e-9), key


async def test_the_writer_on_a_cluster_writes_what_it_writes_on_one_redis(
    redis_cluster_url: str, redis_url: str
) -> None:
    """Batches (with partition offsets) of users, items, impressions, rewards and duplicates, then
    settle: the cluster ends with the single node's state, and a replay of every batch is a no-op."""
    if cluster_enabled():
        pytest.skip("RECSTACK_TEST_REDIS=cluster: redis_url is a cluster, no single Redis to compare with")
    events = make_events(random.Random(3), 600)
    sources = _sources(len(events))
    single = async_from_url(redis_url, cluster=False, decode_responses=True)
    cluster = async_from_url(redis_cluster_url, cluster=True, decode_responses=True)
    assert isinstance(cluster, RedisCluster)
    try:
        results = []
        for client in (single, cluster):
            writer = FeatureWriter(client, Keys("p:"), catalog=GENRES, reward_window_s=1)
            assert writer.cluster is (client is cluster)
            batch_results = []
            for start in range(0, len(events), 100):
                batch_results.append(
                    await writer.apply(events[start : start + 100], sources[start : start + 100])
                )
            replay = [
                await writer.apply(events[s : s + 100], sources[s : s + 100])
                for s in range(0, len(events), 100)
            ]
            assert sum(r.applied for r in replay) == 0
            assert all(not r.failed for r in batch_results + replay)
            settled = await writer.settle(now=events[-1].timestamp + 10)
            assert settled.requests > 0 and settled.zero_rewards > 0
            results.append(
                (sum(r.applied for r in batch_results), sum(r.rewards for r in batch_results), settled)
            )
        assert results[0] == results[1]
        _assert_same(await _state(redis_cluster_url, True, "p:"), await _state(redis_url, False, "p:"))
        # the state is really spread: the users' keys live on every master
        nodes = {cluster.get_node_from_key(Keys("p:").user_stats(u)).port for u in USERS}
        assert len(nodes) == 3
    finally:
        await single.aclose()
        await cluster.aclose()


class _CrashAfter:
    """Wraps a registered script: lets ``n`` calls through, then raises ConnectionError once (a
    worker killed between the slots' calls of one batch)."""

    def __init__(self, script, n: int) -> None:
        self.script, self.n, self.calls = script, n, 0

    async def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.n:
            raise redis.ConnectionError("killed mid-batch")
        return await self.script(*args, **kwargs)


@pytest.mark.parametrize("crash", ["after_users", "mid_effects"])
async def test_a_batch_cut_between_slots_is_completed_exactly_once_by_the_replay(
    redis_cluster_url: str, crash: str
) -> None:
    """Writes split across slots: a crash after the users' calls (or after some of the effects'
    calls) and a replay of the batch (as after a restart, from the committed offset, with earlier
    events in front) end exactly where one clean pass ends."""
    events = make_events(random.Random(11), 400)
    sources = _sources(len(events))
    cluster = async_from_url(redis_cluster_url, cluster=True, decode_responses=True)
    try:
        ref = FeatureWriter(cluster, Keys("ref:"), catalog=GENRES)
        await ref.apply(events[:200], sources[:200])
        await ref.apply(events[200:], sources[200:])

        writer = FeatureWriter(cluster, Keys("cut:"), catalog=GENRES)
        await writer.apply(events[:200], sources[:200])
        real = writer._groups_script
        writer._groups_script = _CrashAfter(real, 0 if crash == "after_users" else 5)
        with pytest.raises(redis.ConnectionError):
            await writer.apply(events[200:], sources[200:])
        writer._groups_script = real
        replay = await writer.apply(events[150:], sources[150:])  # the committed offset was 150
        assert not replay.failed
    finally:
        await cluster.aclose()
    _assert_same(await _state(redis_cluster_url, True, "cut:"), await _state(redis_cluster_url, True, "ref:"))


async def test_a_call_whose_keys_span_slots_fails_with_crossslot(redis_cluster_url: str) -> None:
    """What the hash tags prevent: the cluster refuses a script over two users' keys."""
    client = redis.Redis.from_url(redis_cluster_url)
    keys = Keys("p:")
    a, b = next(
        (x, y)
        for x in USERS
        for y in USERS
        if client.cluster("keyslot", keys.user_stats(x)) != client.cluster("keyslot", keys.user_stats(y))
    )
    node = redis.cluster.RedisCluster.from_url(redis_cluster_url).get_node_from_key(keys.user_stats(a))
    direct = redis.Redis(host=node.host, port=node.port)
    try:
        with pytest.raises(redis.ResponseError, match="CROSSSLOT|same slot"):  # redis-py drops the code
            direct.eval(
                "return redis.call('EXISTS', KEYS[1], KEYS[2])", 2, keys.user_stats(a), keys.user_stats(b)
            )
    finally:
        direct.close()
        client.close()


async def test_the_gateways_feature_reads_on_a_cluster(redis_cluster_url: str) -> None:
    """FeatureStore (the gateway's and the bandit's reads): user features, popularity, arms,
    segment arms and experiments, from keys spread over the masters."""
    cluster = async_from_url(redis_cluster_url, cluster=True, decode_responses=True)
    try:
        writer = FeatureWriter(cluster, Keys("g:"), catalog=GENRES, reward_window_s=5)
        seg = {"bandit_segment": "device:tv"}
        batch = [
            new_event("u1", "view", "i1", timestamp=T0),
            new_event("u1", "click", "i2", timestamp=T0 + 1),
            new_event(
                "u1",
                "impression",
                items=["i3", "i4"],
                request_id="r1",
                timestamp=T0 + 2,
                experiment_id="e1",
                variant="B",
                context=seg,
            ),
            new_event("u1", "click", "i3", request_id="r1", timestamp=T0 + 3),
            new_event("u2", "purchase", "i2", timestamp=T0 + 4),
        ]
        result = await writer.apply(batch, _sources(len(batch)))
        assert (result.applied, result.rewards, result.failed) == (5, 1, ())
        assert (await writer.settle(now=T0 + 100)).zero_rewards == 1  # i4 served, not clicked
        store = FeatureStore(cluster, Keys("g:"))
        features = await store.get_user_features("u1")
        assert features.recent_items == ["i3", "i2", "i1"]
        assert features.counters == {"view": 1, "click": 2, "impression": 1, "total": 3}
        assert set(features.genre_scores) == {GENRES["i1"][0], GENRES["i2"][0], GENRES["i3"][0]}
        assert await store.get_popular(2) == ["i2", "i3"]
        assert [i for i, _ in await store.get_popular_scores(3, 86400.0, now=T0 + 10)] == ["i2", "i3", "i1"]
        assert await store.get_arms(["i3", "i4", "i9"]) == {"i3": (2.0, 1.0), "i4": (1.0, 2.0)}
        glob, in_seg = await store.get_segment_arms(["i3", "i4"], "device:tv")
        assert glob == in_seg == {"i3": (2.0, 1.0), "i4": (1.0, 2.0)}
        assert await store.get_experiment("e1") == {
            "B": {"impressions": 1.0, "users": 1.0, "click": 1.0, "users_click": 1.0}
        }
        assert (await store.get_experiment_user("e1", "u1"))["variant"] == "B"
    finally:
        await cluster.aclose()


@pytest.mark.parametrize("kind", ["linucb", "linucb-hybrid"])
async def test_the_bandits_linear_state_on_a_cluster(redis_cluster_url: str, kind: str) -> None:
    """Contexts recorded by the bandit, rewards and zero rewards from the stream, the bandit's state
    cache reading the arms back: LinUCB and hybrid LinUCB under the {bandit} tag of a cluster."""
    d = 4
    cluster = async_from_url(redis_cluster_url, cluster=True)
    try:
        recorder = ContextRecorder(cluster, "b:", reward_window_s=1)
        rewards = LinearRewardWriter(cluster, "b:", reward_window_s=1)
        rng = np.random.default_rng(0)
        x = rng.normal(size=(3, d)).astype(np.float32)
        await recorder.record(
            "r1", ["a", "b", "c"], x, ridge=1.0, kind=kind, shared_dim=2 if kind != "linucb" else 0
        )
        events = [
            new_event("u", "impression", items=["a", "b", "c"], request_id="r1", timestamp=T0),
            new_event("u", "click", "a", request_id="r1", timestamp=T0 + 1),
        ]
        applied = await rewards.apply(events)
        assert (applied.updates, applied.requests) == (1, 1)
        settled = await rewards.settle(now=T0 + 10)
        assert (settled.updates, settled.requests) == (2, 1)
        policy = (
            LinUCB(dim=d, alpha=1.0) if kind == "linucb" else HybridLinUCB(dim=d, shared_dim=2, alpha=1.0)
        )
        cache = LinearStateCache(cluster, policy, prefix="b:")
        assert await cache.refresh(["a", "b", "c"]) is False
        assert await cluster.hget(Keys("b:").linear_arm("a", kind), "n") == b"1"
        assert await cluster.hget(Keys("b:").linear_arm("c", kind), "n") == b"1"
    finally:
        await cluster.aclose()
