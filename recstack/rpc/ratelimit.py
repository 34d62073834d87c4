"""Token buckets: one per key (a caller), refilled at ``rate`` tokens/s up to ``burst``.

``KeyedLimiter.allow(key)`` takes one token from ``key``'s bucket; False when it is empty. Buckets of
keys unseen for a while are dropped (at most ``max_keys`` are kept, least recently used first), so
a stream of new keys cannot grow memory without bound. rate 0 = unlimited.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBucket:
    """``burst`` tokens at most, ``rate`` added per second; ``take()`` spends one if there is one."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a token bucket needs rate > 0 and burst >= 1, got rate={rate} burst={burst}")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def retry_after(self) -> float:
        """Seconds until the next token (0 when one is there)."""
        return max(0.0, (1.0 - self.tokens) / self.rate)


class KeyedLimiter:
    """A TokenBucket per key; see the module docstring."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        max_keys: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0 (0 = unlimited), got {rate}")
        self.rate = rate
        self.burst = burst if burst else max(1.0, rate)
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()

    @property
    def unlimited(self) -> bool:
        return self.rate == 0

    def allow(self, key: str) -> bool:
        if self.unlimited:
            return True
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self.rate, self.burst, now)
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def retry_after(self, key: str) -> float:
        bucket = self._buckets.get(key)
        return bucket.retry_after() if bucket is not None else 0.0
