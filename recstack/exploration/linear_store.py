"""Redis I/O of the linear policies' statistics (LinUCB, LinTS, hybrid LinUCB).

Keys: ``Keys.linear_arm`` (``bandit:{kind}:{item}``, one hash per arm) and ``Keys.linear_shared``
(``bandit:{kind}-shared``, the hybrid model's shared statistics), recstack/features/keys.py; the
hash format is recstack/exploration/state_codec.py. ``save_arms`` / ``load_arms`` are one pipelined
round trip on a synchronous client; ``queue_state_reads`` / ``install_state`` split the read so an
asyncio pipeline can run it; ``LinearStateCache`` is the bandit service's TTL cache over them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from recstack.exploration.linucb import HybridLinUCB, LinUCB
from recstack.features.keys import Keys
from recstack.redis_cluster import ensure_initialized

log = logging.getLogger(__name__)

LinearPolicy = LinUCB | HybridLinUCB


def save_arms(client: Any, policy: LinUCB | HybridLinUCB, arm_ids: Sequence[str], prefix: str = "") -> None:
    """Write the arms' hashes (and the hybrid shared hash) with one pipelined round trip.

    ``client`` is a synchronous ``redis.Redis`` (bytes responses)."""
    keys = Keys(prefix)
    pipe = client.pipeline(transaction=False)
    for arm in arm_ids:
        pipe.hset(keys.linear_arm(arm, policy.kind), mapping=policy.arm_hash(arm))
    if isinstance(policy, HybridLinUCB):
        pipe.hset(keys.linear_shared(policy.kind), mapping=policy.shared_hash())
    pipe.execute()


def queue_state_reads(
    pipe: Any, policy: LinUCB | HybridLinUCB, arm_ids: Sequence[str], prefix: str = "", shared: bool = True
) -> None:
    """Queue HGETALL of the arms' hashes on a Redis pipeline (sync or asyncio), then, for a hybrid
    policy with ``shared``, of its shared hash; ``install_state`` reads the replies."""
    keys = Keys(prefix)
    for arm in arm_ids:
        pipe.hgetall(keys.linear_arm(arm, policy.kind))
    if shared and isinstance(policy, HybridLinUCB):
        pipe.hgetall(keys.linear_shared(policy.kind))


def install_state(
    policy: LinUCB | HybridLinUCB, arm_ids: Sequence[str], replies: list, shared: bool = True
) -> list[str]:
    """Load the replies of ``queue_state_reads`` into ``policy``; returns the arms whose stored
    state was corrupted and reset to the prior (each logged as a warning)."""
    if shared and isinstance(policy, HybridLinUCB):
        policy.load_shared(replies[-1])
        replies = replies[:-1]
    return [arm for arm, mapping in zip(arm_ids, replies, strict=True) if not policy.load_arm(arm, mapping)]


def load_arms(
    client: Any, policy: LinUCB | HybridLinUCB, arm_ids: Sequence[str], prefix: str = ""
) -> list[str]:
    """Read the arms' hashes (and the hybrid shared hash) in one round trip into ``policy``;
    returns the arms whose stored state was corrupted and reset to the prior (each logged as a
    warning). Missing keys keep the prior. ``client`` must return bytes (``decode_responses=False``)."""
    pipe = client.pipeline(transaction=False)
    queue_state_reads(pipe, policy, arm_ids, prefix)
    return install_state(policy, arm_ids, pipe.execute())


class LinearStateCache:
    """Loads a linear policy's arm hashes from Redis (LinUCB's are shared by LinTS; hybrid LinUCB
    also reads its shared ``A0, b0`` hash) with a TTL: the candidates' hashes (written by the
    stream, ``recstack.exploration.rewards``) in one pipelined round trip under a deadline. Redis
    slow or down: the policy keeps the last state it loaded (the prior for arms never read) and
    ``refresh`` returns stale. A corrupted hash resets that arm to the prior with a logged warning
    (``LinUCB.load_arm``).

    redis: ``redis.asyncio.Redis`` with bytes responses; ttl_s: freshness of an arm (and of the
    hybrid shared statistics); timeout_s: deadline of one read; prefix: the Redis key prefix.
    """

    def __init__(
        self,
        redis: Any,
        policy: LinearPolicy,
        prefix: str = "",
        ttl_s: float = 5.0,
        timeout_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.redis = redis
        self.policy = policy
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._fetched: dict[str, float] = {}
        self._shared_fetched = -np.inf

    async def refresh(self, items: Sequence[str]) -> bool:
        """Bring the arms of ``items`` up to date; returns True (stale) when Redis failed."""
        now = self._clock()
        missing = [x for x in items if now - self._fetched.get(x, -np.inf) > self.ttl_s]
        hybrid = isinstance(self.policy, HybridLinUCB)
        shared = hybrid and now - self._shared_fetched > self.ttl_s
        if not missing and not shared:
            return False
        try:
            await ensure_initialized(self.redis)  # a cluster client's first topology read: once
            async with asyncio.timeout(self.timeout_s):
                pipe = self.redis.pipeline(transaction=False)
                queue_state_reads(pipe, self.policy, missing, self.prefix, shared)
                replies = await pipe.execute()
        except Exception as exc:  # Redis down or slow: keep the last state
            log.warning("%s state unavailable, serving the last loaded state: %r", self.policy.kind, exc)
            return True
        install_state(self.policy, missing, replies, shared)
        if shared:
            self._shared_fetched = now
        for item in missing:
            self._fetched[item] = now
        return False
