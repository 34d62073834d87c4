"""The Faust agent in-process (agent.test_context(), no broker) against a real redis-server."""

from __future__ import annotations

import asyncio
import time

import redis.asyncio as aioredis

from recstack.events import event_to_json, new_event
from recstack.features.keys import Keys
from services.feature_stream.app import create_app
from services.feature_stream.settings import StreamSettings


async def test_agent_applies_batches_once(redis_url: str, tmp_path) -> None:
    settings = StreamSettings(
        kafka_bootstrap_servers="127.0.0.1:1",  # never contacted by test_context
        redis_url=redis_url,
        metrics_port=0,
        redis_prefix="agent:",
        artifacts=str(tmp_path),
        batch_within_s=0.01,
    )
    app = create_app(settings)
    (agent,) = app.agents.values()
    click = new_event("u", "click", "i1", request_id="r1")
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        async with agent.test_context() as ctx:
            sentinel = new_event("last", "view", "i9")  # in order: written after the duplicate
            for event in (new_event("u", "view", "i2"), click, click, sentinel):
                await ctx.put(event_to_json(event), key=b"u")
            deadline = time.monotonic() + 10
            while not await client.exists(Keys("agent:").user_stats("last")):
                assert time.monotonic() < deadline, "agent did not write the batch"
                await asyncio.sleep(0.05)
        assert await client.lrange(Keys("agent:").recent_items("u"), 0, -1) == ["i1", "i2"]
        stats = await client.hgetall(Keys("agent:").user_stats("u"))
        assert stats["click"] == "1" and stats["view"] == "1" and stats["total"] == "2"
    finally:
        await client.aclose()
