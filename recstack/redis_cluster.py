"""Redis Cluster support: ``RECSTACK_REDIS_CLUSTER=true`` makes every service talk to a Redis
Cluster (``REDIS_URL`` then names any one node; the client discovers the others). The keys carry
hash tags (recstack/features/keys.py) so every Lua call and multi-key command stays in one slot."""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from recstack.redis_client import CLUSTER_ENV, async_redis, cluster_enabled, sync_redis

__all__ = ["CLUSTER_ENV", "async_from_url", "cluster_enabled", "is_cluster", "sync_from_url"]


@functools.cache
def _cluster_types() -> tuple[type, ...]:
    from redis.asyncio.cluster import RedisCluster as AsyncCluster
    from redis.cluster import RedisCluster

    return (AsyncCluster, RedisCluster)


def is_cluster(client: Any) -> bool:
    """True for a Redis Cluster client (redis.asyncio.cluster.RedisCluster or redis.cluster.RedisCluster)."""
    return isinstance(client, _cluster_types())


def async_from_url(url: str, cluster: bool | None = None, **kwargs: Any) -> Any:
    """``recstack.redis_client.async_redis``: a single-Redis or (``cluster``, default
    RECSTACK_REDIS_CLUSTER) cluster client, with the URL's TLS settings."""
    return async_redis(url, cluster, **kwargs)


def sync_from_url(url: str, cluster: bool | None = None, **kwargs: Any) -> Any:
    """The synchronous counterpart of ``async_from_url``."""
    return sync_redis(url, cluster, **kwargs)


# Concurrent calls of one batch on a cluster client (one per slot): bounded below the client's
# connections per node (redis-py's default max_connections=100 raises MaxConnectionsError beyond).
MAX_CONCURRENT_CALLS = 32


async def ensure_initialized(client: Any) -> None:
    """Initialize a cluster client once, before concurrent use (redis-py 8.1's asyncio RedisCluster
    fails concurrent first commands with AttributeError when they race its lazy initialization);
    a no-op for a single-Redis client and for an initialized one."""
    if getattr(client, "_initialize", False) and is_cluster(client):  # cheap for a single Redis
        await client.initialize()


async def gather_calls(client: Any, calls: list[Any]) -> list[Any]:
    """Await ``calls`` (coroutines of Redis commands): on a cluster client at most
    MAX_CONCURRENT_CALLS at once, after initializing the client (redis-py 8.1's asyncio
    RedisCluster fails concurrent first commands with AttributeError when they race its lazy
    initialization); on a single Redis there is one call per step anyway."""
    if not is_cluster(client):
        return [await call for call in calls]
    await ensure_initialized(client)
    gate = asyncio.Semaphore(MAX_CONCURRENT_CALLS)

    async def run(call: Any) -> Any:
        async with gate:
            return await call

    return list(await asyncio.gather(*(run(call) for call in calls)))
