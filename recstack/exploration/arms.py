"""A short-TTL cache of bandit arm statistics read from Redis.

The bandit service asks for the arms of the candidates of every request. Fresh entries come
from the cache; the rest are read in one round trip (``FeatureStore.get_arms``) under a
deadline. When Redis is slow or down the cached (possibly expired) statistics, else the prior,
are served and the result is flagged stale.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger(__name__)

ArmsReader = Callable[[Sequence[str]], Awaitable[dict[str, tuple[float, float]]]]


class ArmCache:
    """item -> (alpha, beta) with a TTL; ``reader`` is e.g. ``FeatureStore(redis).get_arms``.

    ttl_s: how long an entry is fresh; timeout_s: deadline of one Redis read;
    max_items: entries kept (oldest dropped first).
    """

    def __init__(
        self,
        reader: ArmsReader,
        ttl_s: float = 5.0,
        timeout_s: float = 0.05,
        max_items: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._reader = reader
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.max_items = max_items
        self._clock = clock
        # item -> (alpha, beta, fetched_at); (0, 0) marks "read, no statistics yet" (prior).
        self._entries: dict[str, tuple[float, float, float]] = {}

    async def get(self, items: Sequence[str]) -> tuple[dict[str, tuple[float, float]], bool]:
        """(arms of the items that have statistics, stale). stale is True when the read failed."""
        now = self._clock()
        missing = [x for x in items if x not in self._entries or now - self._entries[x][2] > self.ttl_s]
        stale = False
        if missing:
            try:
                async with asyncio.timeout(self.timeout_s):
                    fresh = await self._reader(missing)
            except Exception as exc:  # Redis down or slow: serve what we have
                stale = True
                log.warning("arm statistics unavailable, serving cached/prior state: %r", exc)
            else:
                for item in missing:
                    alpha, beta = fresh.get(item, (0.0, 0.0))
                    self._entries.pop(item, None)
                    self._entries[item] = (alpha, beta, now)
                while len(self._entries) > self.max_items:
                    self._entries.pop(next(iter(self._entries)))
        arms: dict[str, tuple[float, float]] = {}
        for item in items:
            entry = self._entries.get(item)
            if entry is not None and entry[0] > 0 and entry[1] > 0:
                arms[item] = (entry[0], entry[1])
        return arms, stale
