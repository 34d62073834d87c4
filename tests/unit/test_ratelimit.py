"""Token buckets of the gateway's per-caller rate limit (recstack/rpc/ratelimit.py)."""

from __future__ import annotations

import pytest

from recstack.rpc.ratelimit import KeyedLimiter, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_bucket_spends_the_burst_then_refills_at_the_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.retry_after() == pytest.approx(0.5)
    assert not bucket.take(0.4)  # 0.8 tokens
    assert bucket.take(0.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # capped at burst


def test_bucket_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)
    with pytest.raises(ValueError):
        TokenBucket(1, 0.5, 0.0)


def test_keyed_limiter_keeps_callers_apart() -> None:
    clock = Clock()
    limiter = KeyedLimiter(rate=1.0, burst=2, clock=clock)
    assert [limiter.allow("a") for _ in range(3)] == [True, True, False]
    assert limiter.allow("b") and limiter.allow("b") and not limiter.allow("b")
    clock.t += 1.0
    assert limiter.allow("a") and not limiter.allow("a")


def test_keyed_limiter_zero_is_unlimited_and_default_burst() -> None:
    assert all(KeyedLimiter(0).allow("a") for _ in range(1000))
    assert KeyedLimiter(5).burst == 5 and KeyedLimiter(0.2).burst == 1


def test_keyed_limiter_forgets_the_least_recent_key() -> None:
    clock = Clock()
    limiter = KeyedLimiter(rate=1.0, burst=1, max_keys=2, clock=clock)
    assert limiter.allow("a") and limiter.allow("b")
    assert not limiter.allow("a")  # a is now the most recent
    assert limiter.allow("c")  # evicts b
    assert len(limiter._buckets) == 2 and "b" not in limiter._buckets
    assert not limiter.allow("a")  # a kept its empty bucket
