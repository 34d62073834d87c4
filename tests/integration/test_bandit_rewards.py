"""Stream rewards -> LinUCB statistics in a real Redis (recstack.exploration.rewards)."""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import pytest
import redis.asyncio as aioredis

from recstack.events.schema import new_event
from recstack.exploration.linear_store import load_arms
from recstack.exploration.linucb import HybridLinUCB, LinUCB
from recstack.exploration.rewards import (
    ContextRecorder,
    LinearRewardWriter,
)
from recstack.features.keys import Keys
from recstack.redis_cluster import async_from_url, sync_from_url

pytestmark = pytest.mark.integration

D = 8
PREFIX = "t:"


async def _arm(client: aioredis.Redis, policy: LinUCB, item: str) -> None:
    assert policy.load_arm(item, await client.hgetall(Keys(PREFIX).linear_arm(item, "linucb")))


def _load(redis_url: str, policy: HybridLinUCB, arms: list[str]) -> list[str]:
    with sync_from_url(redis_url) as client:
        return load_arms(client, policy, arms, PREFIX)


async def test_click_and_settle_update_arms_like_linucb(redis_url: str) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, D))
    client = async_from_url(redis_url)
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
        assert not await client.hexists(Keys(PREFIX).bandit_contexts("r1"), "x:z")
        # replayed batch and a like after the click: no second reward for (r1, a)
        again = await rewards.apply([imp, click, new_event("u1", "like", "a", request_id="r1")])
        assert (again.updates, again.requests) == (0, 0)

        assert (await rewards.settle(now=ts + 30)).requests == 0  # window still open
        closed = await rewards.settle(now=ts + 61)
        assert (closed.requests, closed.updates) == (1, 1)  # b: reward 0
        assert not await client.exists(Keys(PREFIX).bandit_contexts("r1"))
        assert await client.zcard(Keys(PREFIX).bandit_contexts_pending()) == 0

        expected = LinUCB(D, ridge=2.0, epsilon=0.0)
        expected.update("a", x[0], 1.0)
        expected.update("b", x[1], 0.0)
        got = LinUCB(D, ridge=2.0, epsilon=0.0)
        for item in ("a", "b"):
            await _arm(client, got, item)
            np.testing.assert_allclose(got.a_inverse(item), expected.a_inverse(item), atol=1e-6)
        np.testing.assert_allclose(got.score(x[:2], ["a", "b"]), expected.score(x[:2], ["a", "b"]), atol=1e-5)
        assert not await client.exists(Keys(PREFIX).linear_arm("z", "linucb"))
    finally:
        await client.aclose()


async def test_concurrent_writers_lose_no_update(redis_url: str) -> None:
    rng = np.random.default_rng(1)
    xs = rng.normal(size=(40, D)) / np.sqrt(D)
    client = async_from_url(redis_url)
    try:
        rec = ContextRecorder(client, PREFIX)
        for i in range(40):
            await rec.record(f"r{i}", ["hot"], xs[i : i + 1], ridge=1.0)
        writers = [LinearRewardWriter(async_from_url(redis_url), PREFIX) for _ in range(4)]
        clicks = [new_event("u", "click", "hot", request_id=f"r{i}") for i in range(40)]
        await asyncio.gather(*(writers[i % 4].apply([c]) for i, c in enumerate(clicks)))
        for w in writers:
            await w.redis.aclose()
        expected = LinUCB(D, epsilon=0.0)
        expected.update_batch(["hot"] * 40, xs, np.ones(40))
        got = LinUCB(D, epsilon=0.0)
        await _arm(client, got, "hot")
        assert int(await client.hget(Keys(PREFIX).linear_arm("hot", "linucb"), "n")) == 40
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
    client = async_from_url(redis_url)
    try:
        good = LinUCB(D, epsilon=0.0)
        good.update("a", x, 1.0)
        good.update("a", -x, 0.0)
        await client.hset(Keys(PREFIX).linear_arm("a", "linucb"), mapping={**good.arm_hash("a"), **bad})
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
        assert int(await client.hget(Keys(PREFIX).linear_arm("a", "linucb"), "n")) == 1
    finally:
        await client.aclose()


@pytest.mark.parametrize("shared_dim", [None, 3])
async def test_hybrid_rewards_in_lua_equal_python_updates(redis_url: str, shared_dim: int | None) -> None:
    """Clicks and settled zero rewards of hybrid-served requests update the arm and shared hashes
    exactly as ``HybridLinUCB.update_batch`` does (same mean and width afterwards); the disjoint
    LinUCB statistics are not touched."""
    rng = np.random.default_rng(3)
    n = 12
    xs = rng.normal(size=(n, D)) / np.sqrt(D)
    items = [f"h{i % 3}" for i in range(n)]
    clicked = rng.random(n) < 0.5
    client = async_from_url(redis_url)
    try:
        rec = ContextRecorder(client, PREFIX, reward_window_s=60)
        rewards = LinearRewardWriter(client, PREFIX, reward_window_s=60)
        expected = HybridLinUCB(D, shared_dim=shared_dim, ridge=2.0, epsilon=0.0)
        ts = 1_000_000.0
        for i in range(n):  # one request at a time, in order: the update order is the same
            await rec.record(f"q{i}", [items[i]], xs[i : i + 1], 2.0, "linucb-hybrid", shared_dim or 0)
            imp = new_event("u", "impression", request_id=f"q{i}", items=[items[i]], timestamp=ts + i)
            batch = [imp] + ([new_event("u", "click", items[i], request_id=f"q{i}")] if clicked[i] else [])
            assert (await rewards.apply(batch)).updates == int(clicked[i])
            settled = await rewards.settle(now=ts + i + 61)
            assert settled.updates == int(not clicked[i])
            expected.update(items[i], xs[i], float(clicked[i]))

        got = HybridLinUCB(D, shared_dim=shared_dim, ridge=2.0, epsilon=0.0)
        assert _load(redis_url, got, ["h0", "h1", "h2", "new"]) == []
        probe = rng.normal(size=(4, D)) / np.sqrt(D)
        arms = ["h0", "h1", "h2", "new"]
        for a, b in zip(got.mean_and_width(probe, arms), expected.mean_and_width(probe, arms), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        assert int(await client.hget(Keys(PREFIX).linear_shared(), "n")) == n
        assert not await client.exists(Keys(PREFIX).linear_arm("h0", "linucb"))
    finally:
        await client.aclose()


async def test_hybrid_corrupted_state_in_redis_is_reset_before_the_update(redis_url: str) -> None:
    client = async_from_url(redis_url)
    try:
        await client.hset(
            Keys(PREFIX).linear_shared(), mapping={"format": b"linucb-hybrid-shared-v1", "state": b"x"}
        )
        await client.hset(
            Keys(PREFIX).linear_arm("a", "linucb-hybrid"),
            mapping={
                "format": b"linucb-hybrid-v1",
                "dim": str(D).encode(),
                "n": b"3",
                "state": np.full(D * D * 2 + D, np.nan, dtype="<f4").tobytes(),
            },
        )
        x = np.ones((1, D)) / D
        await ContextRecorder(client, PREFIX).record("r", ["a"], x, 1.0, "linucb-hybrid")
        result = await LinearRewardWriter(client, PREFIX).apply(
            [
                new_event("u", "impression", request_id="r", items=["a"]),
                new_event("u", "click", "a", request_id="r"),
            ]
        )
        assert (result.updates, result.resets) == (1, 2)
        expected = HybridLinUCB(D, epsilon=0.0)
        expected.update("a", x[0], 1.0)
        got = HybridLinUCB(D, epsilon=0.0)
        assert _load(redis_url, got, ["a"]) == []
        np.testing.assert_allclose(got.score(x, ["a"]), expected.score(x, ["a"]), rtol=1e-5)
    finally:
        await client.aclose()


async def test_recorder_rejects_an_unknown_kind(redis_url: str) -> None:
    client = async_from_url(redis_url)
    try:
        with pytest.raises(ValueError, match="kind must be one of"):
            await ContextRecorder(client, PREFIX).record("r", ["a"], np.ones((1, D)), 1.0, "thompson")
    finally:
        await client.aclose()
