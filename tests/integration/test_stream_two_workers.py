"""Two workers in one consumer group share a 4-partition topic (real Tansu and redis-server): both
get partitions, every event is applied exactly once, and each user's events are applied in order."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from recstack.devstack.embedded import free_port
from recstack.events import event_to_json, new_event
from recstack.features.keys import Keys
from recstack.metrics_text import sample, samples, scrape
from recstack.redis_cluster import sync_from_url
from tests.integration.stream_support import (
    produce_batched,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
    write_catalog,
)

pytestmark = pytest.mark.integration


def test_two_workers_share_partitions_apply_once_and_keep_user_order(
    kafka_broker: str, kafka_topic: Callable[..., str], redis_url: str, tmp_path: Path
) -> None:
    env = worker_env(
        kafka_broker,
        kafka_topic(4, "events"),
        kafka_topic(1, "dlq"),
        redis_url,
        write_catalog(tmp_path / "artifacts", {"i1": ["Action"]}),
        0,
        RECSTACK_STREAM_BATCH="20",
    )
    ports = [free_port(), free_port()]
    prefix, log = env["RECSTACK_REDIS_PREFIX"], tmp_path / "workers.log"
    procs = [start_worker({**env, "RECSTACK_METRICS_PORT": str(port)}, log) for port in ports]

    def assigned() -> list[float]:
        return [sample(scrape(port), "recstack_stream_assigned_partitions") or 0.0 for port in ports]

    users = [f"u{n}" for n in range(32)]
    rng = random.Random(5)
    sequence = {user: [f"{user}-i{k}" for k in range(30)] for user in users}  # 30 distinct items each
    cursor = dict.fromkeys(users, 0)
    events = []
    while any(cursor[u] < 30 for u in users):  # interleave users, each user's items in order
        user = rng.choice([u for u in users if cursor[u] < 30])
        events.append(new_event(user, rng.choice(["view", "click"]), sequence[user][cursor[user]]))
        cursor[user] += 1
    r = sync_from_url(redis_url, decode_responses=True)
    try:
        # the group settles with two partitions on each worker (the assignment is balanced)
        wait_for(lambda: assigned() == [2.0, 2.0], "both workers to own partitions", procs, log, 45)
        values = [(e.user_id.encode(), event_to_json(e)) for e in events]
        asyncio.run(produce_batched(kafka_broker, env["RECSTACK_EVENTS_TOPIC"], values))

        def done() -> bool:
            return sum(int(r.hget(Keys(prefix).user_stats(u), "total") or 0) for u in users) >= len(events)

        wait_for(done, "every event in redis", procs, log)

        def counted() -> list[float] | None:  # incremented right after each batch's writes: poll
            text = [scrape(port) for port in ports]
            counts = [sum(v for _, v in samples(t, "recstack_stream_events_total")) for t in text]
            return counts if sum(counts) >= len(events) else None

        counts = wait_for(counted, "the events counters of both workers", procs, log)
        assert all(procs[n].poll() is None for n in range(2))
    finally:
        for proc in procs:
            stop_worker(proc)

    # (more than len(events) only if a rebalance replayed a batch: a no-op for the features)
    assert sum(counts) >= len(events) and min(counts) > 0, counts
    for user in users:
        stats = r.hgetall(Keys(prefix).user_stats(user))
        assert int(stats["total"]) == 30, user
        # newest first: the reverse of the production order
        assert r.lrange(Keys(prefix).recent_items(user), 0, -1) == sequence[user][::-1], user
    r.close()
