"""``recstack redis migrate-keys``: a Redis written with the old key names (before hash tags) is
copied to the tagged names, in place and into a Redis Cluster, and the new code reads it back."""

from __future__ import annotations

import json

import pytest
import redis
from typer.testing import CliRunner

from recstack.cli import app
from recstack.features.keys import Keys
from recstack.features.store import FeatureStore
from recstack.redis_cluster import async_from_url

pytestmark = pytest.mark.integration

OLD = {  # what the previous writer left, prefix "p:"
    "p:user:u1:recent_items": ("list", ["i2", "i1"]),
    "p:user:u1:stats": ("hash", {"click": "1", "view": "1", "total": "2", "last_active": "5"}),
    "p:user:u1:genre_scores": ("hash", {"Drama": "0.1"}),
    "p:user:u1:consumed": ("zset", {"i1": 4.0, "i2": 5.0}),
    "p:item:i1:stats": ("hash", {"view": "1"}),
    "p:items:popularity": ("zset", {"i1": 0.5, "i2": 1.0}),
    "p:items:popularity:epoch": ("string", "1"),
    "p:bandit:ts:i2": ("hash", {"alpha": "3", "beta": "2"}),
    "p:bandit:tsseg:device:tv|i2": ("hash", {"alpha": "2", "beta": "1"}),
    "p:bandit:linucb:i2": ("hash", {"format": "linucb-v1", "dim": "2", "n": "1", "state": "x"}),
    "p:bandit:linucb-hybrid-shared": ("hash", {"format": "linucb-hybrid-shared-v1", "n": "1"}),
    "p:exp:e1:variants": ("set", ["A"]),
    "p:exp:e1:A:stats": ("hash", {"impressions": "1", "users": "1"}),
    "p:exp:e1:user:u1": ("hash", {"variant": "A", "impressions": "1"}),
    "p:event:abc": ("string", "1"),  # not copied: replaced by the per-tag offsets
}


def _write_old(client: redis.Redis) -> None:
    for key, (kind, value) in OLD.items():
        if kind == "list":
            client.rpush(key, *value)
        elif kind == "hash":
            client.hset(key, mapping=value)
        elif kind == "zset":
            client.zadd(key, value)
        elif kind == "set":
            client.sadd(key, *value)
        else:
            client.set(key, value)
    client.expire("p:bandit:tsseg:device:tv|i2", 1000)


async def _check(url: str, cluster: bool) -> None:
    client = async_from_url(url, cluster=cluster, decode_responses=True)
    try:
        store = FeatureStore(client, Keys("p:"))
        features = await store.get_user_features("u1")
        assert features.recent_items == ["i2", "i1"] and features.counters["click"] == 1
        assert features.consumed == ["i1", "i2"] and features.genre_scores == {"Drama": 0.1}
        assert await store.get_popular(2) == ["i2", "i1"]
        assert await store.get_segment_arms(["i2"], "device:tv") == ({"i2": (3.0, 2.0)}, {"i2": (2.0, 1.0)})
        assert 0 < await client.ttl(Keys("p:").bandit_segment_arm("device:tv", "i2")) <= 1000
        assert await client.hget(Keys("p:").linear_arm("i2"), "state") == "x"
        assert await client.hget(Keys("p:").linear_shared(), "n") == "1"
        assert await store.get_experiment("e1") == {"A": {"impressions": 1.0, "users": 1.0}}
        assert await store.get_experiment_user("e1", "u1") == {"variant": "A", "impressions": "1"}
    finally:
        await client.aclose()


async def test_migrate_in_place_then_delete(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    _write_old(client)
    args = ["redis", "migrate-keys", "--from", redis_url, "--prefix", "p:", "--json", "--delete"]
    result = CliRunner().invoke(app, args, env={"RECSTACK_REDIS_CLUSTER": "false"})
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert (report["copied"], report["merged_records"], report["skipped"]) == (13, 1, 0)
    assert report["deleted"] == 14
    await _check(redis_url, cluster=False)
    assert client.exists("p:user:u1:stats", "p:bandit:ts:i2") == 0 and client.exists("p:event:abc") == 1
    client.close()


async def test_migrate_into_a_redis_cluster(redis_url: str, redis_cluster_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    _write_old(client)
    args = ["redis", "migrate-keys", "--from", redis_url, "--to", redis_cluster_url, "--to-cluster"]
    result = CliRunner().invoke(app, [*args, "--prefix", "p:"], env={"RECSTACK_REDIS_CLUSTER": "false"})
    assert result.exit_code == 0, result.output
    await _check(redis_cluster_url, cluster=True)
    assert client.exists("p:user:u1:stats") == 1  # kept without --delete
    client.close()
