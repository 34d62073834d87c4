"""Stream rewards -> LinUCB statistics in a real Redis (recstack.exploration.rewards)."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
import redis.asyncio as aioredis

from recstack.events.schema import new_event
from recstack.exploration.linucb import LinUCB, redis_key
from recstack.exploration.rewards import (
    ContextRecorder,
    LinearRewardWriter,
    context_key,
    pending_key,
)

pytestmark = pytest.mark.integration

D = 8
PREFIX = "t:"


async def _arm(client: aioredis.Redis, policy: LinUCB, item: str) -> None:
    assert policy.load_arm(item, await client.hgetall(redis_key(item, "linucb", PREFIX)))


async def test_click_and_settle_update_arms_like_linucb(redis_url: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, D))
    client = aioredis.from_url(redis_url)
    try:
        rec = ContextRecorder(client, PREFIX, reward_window_s=60)
        rewards = LinearRewardWriter(client, PREFIX, reward_window_s=60)
        # the bandit explored a, b, z; the gateway served only a and b (z was cut)
        await rec.record("r1", ["a", "b", "z"], x, ridge=2.0)
        ts = 1_000_000.0
        imp = new_event("u1", "impression", request_id="r1", items=["a", "b", "c"], timestamp=ts)
        click = new_event("u1", "click", "a", request_id="r1", timestamp=ts + 1)
        first = await rewards.apply([imp, click])
        assert (first.updates, first.requests) == (1, 1)
        assert not await client.hexists(context_key("r1", PREFIX), "x:z")
        # replayed batch and a like after the click: no second reward for (r1, a)
        again = await rewards.apply([imp, click, new_event("u1", "like", "a", request_id="r1")])
        assert (again.updates, again.requests) == (0, 0)

        assert (await rewards.settle(now=ts + 30)).requests == 0  # window still open
        closed = await rewards.settle(now=ts + 61)
        assert (closed.requests, closed.updates) == (1, 1)  # b: reward 0
        assert not await client.exists(context_key("r1", PREFIX))
        assert await client.zcard(pending_key(PREFIX)) == 0

        expected = LinUCB(D, ridge=2.0, epsilon=0.0)
        expected.update("a", x[0], 1.0)
        expected.update("b", x[1], 0.0)
        got = LinUCB(D, ridge=2.0, epsilon=0.0)
        for item in ("a", "b"):
            await _arm(client, got, item)
            np.testing.assert_allclose(got.a_inverse(item), expected.a_inverse(item), atol=1e-6)
        np.testing.assert_allclose(got.score(x[:2], ["a", "b"]), expected.score(x[:2], ["a", "b"]), atol=1e-5)
        assert not await client.exists(redis_key("z", "linucb", PREFIX))
    finally:
        await client.aclose()


async def test_concurrent_writers_lose_no_update(redis_url: str) -> None:
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(40, D)) / np.sqrt(D)
    client = aioredis.from_url(redis_url)
    try:
        rec = ContextRecorder(client, PREFIX)
        for i in range(40):
            await rec.record(f"r{i}", ["hot"], xs[i : i + 1], ridge=1.0)
        writers = [LinearRewardWriter(aioredis.from_url(redis_url), PREFIX) for _ in range(4)]
        clicks = [new_event("u", "click", "hot", request_id=f"r{i}") for i in range(40)]
        await asyncio.gather(*(writers[i % 4].apply([c]) for i, c in enumerate(clicks)))
        for w in writers:
            await w.redis.aclose()
        expected = LinUCB(D, epsilon=0.0)
        expected.update_batch(["hot"] * 40, xs, np.ones(40))
        got = LinUCB(D, epsilon=0.0)
        await _arm(client, got, "hot")
        assert int(await client.hget(redis_key("hot", "linucb", PREFIX), "n")) == 40
        np.testing.assert_allclose(got.a_inverse("hot"), expected.a_inverse("hot"), atol=1e-5)
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    "bad",
    [
        {"state": b"\x00" * 7},
        {"state": np.full(D * D + D, np.nan, dtype="<f4").tobytes()},
        {"format": b"something-else"},
        {"dim": b"3"},
    ],
)
async def test_corrupted_arm_is_reset_to_prior_with_warning(redis_url: str, bad: dict, caplog) -> None:
    x = np.linspace(-1, 1, D)
    client = aioredis.from_url(redis_url)
    try:
        good = LinUCB(D, epsilon=0.0)
        good.update("a", x, 1.0)
        good.update("a", -x, 0.0)
        await client.hset(redis_key("a", "linucb", PREFIX), mapping={**good.arm_hash("a"), **bad})
        await ContextRecorder(client, PREFIX).record("r1", ["a"], x[None, :], ridge=1.0)
        with caplog.at_level(logging.WARNING, logger="recstack.exploration.rewards"):
            result = await LinearRewardWriter(client, PREFIX).apply(
                [new_event("u", "click", "a", request_id="r1")]
            )
        assert (result.updates, result.resets) == (1, 1)
        assert "corrupted and reset to the prior" in caplog.text
        fresh = LinUCB(D, epsilon=0.0)
        fresh.update("a", x, 1.0)
        got = LinUCB(D, epsilon=0.0)
        await _arm(client, got, "a")
        np.testing.assert_allclose(got.a_inverse("a"), fresh.a_inverse("a"), atol=1e-6)
        assert int(await client.hget(redis_key("a", "linucb", PREFIX), "n")) == 1
    finally:
        await client.aclose()
