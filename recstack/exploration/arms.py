"""A short-TTL cache of bandit arm statistics read from Redis.

The bandit service asks for the arms of the candidates of every request. Fresh entries come
from the cache; the rest are read in one round trip (``FeatureStore.get_arms``, or
``FeatureStore.get_segment_arms`` for a request with a segment: global and segment arms in the
same pipeline) under a deadline. When Redis is slow or down the cached (possibly expired)
statistics, else the prior, are served and the result is flagged stale.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

log = logging.getLogger(__name__)

Arms = dict[str, tuple[float, float]]
ArmsReader = Callable[[Sequence[str]], Awaitable[Arms]]
SegmentArmsReader = Callable[[Sequence[str], str], Awaitable[tuple[Arms, Arms]]]

_GLOBAL = ""  # the segment of the global arms in the cache keys


class ArmCache:
    """(segment, item) -> (alpha, beta) with a TTL; ``reader`` is e.g.
    ``FeatureStore(redis).get_arms`` and ``segment_reader`` ``FeatureStore(redis).get_segment_arms``
    (needed for ``get_segmented`` only).

    ttl_s: how long an entry is fresh; timeout_s: deadline of one Redis read;
    max_items: entries kept, global and segment ones together (oldest dropped first).
    """

    def __init__(
        self,
        reader: ArmsReader,
        ttl_s: float = 5.0,
        timeout_s: float = 0.05,
        max_items: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        segment_reader: SegmentArmsReader | None = None,
    ):
        self._reader = reader
        self._segment_reader = segment_reader
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.max_items = max_items
        self._clock = clock
        # (segment, item) -> (alpha, beta, fetched_at); (0, 0) marks "read, no statistics yet".
        self._entries: dict[tuple[str, str], tuple[float, float, float]] = {}

    @property
    def supports_segments(self) -> bool:
        """Whether ``get_segmented`` can read segment arms (a ``segment_reader`` was given)."""
        return self._segment_reader is not None

    async def get(self, items: Sequence[str]) -> tuple[Arms, bool]:
        """(global arms of the items that have statistics, stale). stale is True when the read failed."""
        arms, _, stale = await self._get(items, _GLOBAL)
        return arms, stale

    async def get_segmented(self, items: Sequence[str], segment: str) -> tuple[Arms, Arms, bool]:
        """(global arms, arms in ``segment``, stale) of the items that have statistics. Items whose
        global or segment entry is not fresh are read, both kinds in one round trip. Raises
        RuntimeError without a ``segment_reader``; ``segment`` "" is the same as ``get``."""
        if segment and self._segment_reader is None:
            raise RuntimeError("ArmCache has no segment_reader (e.g. FeatureStore.get_segment_arms)")
        return await self._get(items, segment)

    def _fresh(self, key: tuple[str, str], now: float) -> bool:
        entry = self._entries.get(key)
        return entry is not None and now - entry[2] <= self.ttl_s

    async def _get(self, items: Sequence[str], segment: str) -> tuple[Arms, Arms, bool]:
        now = self._clock()
        missing = [
            x
            for x in items
            if not self._fresh((_GLOBAL, x), now) or (segment and not self._fresh((segment, x), now))
        ]
        stale = False
        if missing:
            try:
                async with asyncio.timeout(self.timeout_s):
                    fresh = await self._read(missing, segment)
            except Exception as exc:  # Redis down or slow: serve what we have
                stale = True
                log.warning("arm statistics unavailable, serving cached/prior state: %r", exc)
            else:
                global_arms, segment_arms = fresh
                self._store(_GLOBAL, missing, global_arms, now)
                if segment:
                    self._store(segment, missing, segment_arms, now)
                while len(self._entries) > self.max_items:
                    self._entries.pop(next(iter(self._entries)))
        glob = self._lookup(_GLOBAL, items)
        return glob, (self._lookup(segment, items) if segment else {}), stale

    async def _read(self, items: list[str], segment: str) -> tuple[Arms, Arms]:
        if segment:
            assert self._segment_reader is not None
            return await self._segment_reader(items, segment)
        return await self._reader(items), {}

    def _store(self, segment: str, items: Sequence[str], arms: Arms, now: float) -> None:
        for item in items:
            alpha, beta = arms.get(item, (0.0, 0.0))
            key = (segment, item)
            self._entries.pop(key, None)
            self._entries[key] = (alpha, beta, now)

    def _lookup(self, segment: str, items: Sequence[str]) -> Arms:
        arms: Arms = {}
        for item in items:
            entry = self._entries.get((segment, item))
            if entry is not None and entry[0] > 0 and entry[1] > 0:
                arms[item] = (entry[0], entry[1])
        return arms
