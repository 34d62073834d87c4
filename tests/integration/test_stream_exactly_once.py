"""Exactly-once application under SIGKILL: the worker is killed in the middle of a backlog, twice,
and restarted; every Redis feature ends as if each distinct event_id had been applied once, in order.

Real Tansu and redis-server. The expected state is computed by a FeatureWriter that applies the
same events once, in production order, under another key prefix of the same Redis.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from recstack.devstack.embedded import free_port
from recstack.events import event_to_json
from recstack.features.keys import Keys
from recstack.metrics_text import samples, scrape
from recstack.redis_cluster import sync_from_url
from tests.integration.stream_support import (
    GENRES,
    ITEMS,
    USERS,
    apply_reference,
    committed_offsets,
    make_events,
    produce_batched,
    snapshot,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
    write_catalog,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]


def lags(port: int) -> list[float]:
    return sorted(v for _, v in samples(scrape(port), "recstack_stream_consumer_lag"))


def test_sigkill_mid_backlog_applies_every_event_exactly_once(
    kafka_broker: str, kafka_topic: Callable[..., str], redis_url: str, tmp_path: Path
) -> None:
    events = make_events(random.Random(7), 3000)
    distinct = {e.event_id: e for e in events}
    assert len(distinct) < len(events)  # the stream really holds duplicates

    artifacts = write_catalog(tmp_path / "artifacts", GENRES)
    env = worker_env(
        kafka_broker,
        kafka_topic(2, "events"),
        kafka_topic(1, "dlq"),
        redis_url,
        artifacts,
        free_port(),
        # small batches and frequent commits: the kills land between commits, mid-stream
        RECSTACK_STREAM_BATCH="25",
        RECSTACK_STREAM_COMMIT_INTERVAL_S="0.2",
        RECSTACK_REWARD_WINDOW_S="1800",
    )
    prefix, port, log = env["RECSTACK_REDIS_PREFIX"], int(env["RECSTACK_METRICS_PORT"]), tmp_path / "w.log"
    group, topic = env["RECSTACK_STREAM_GROUP"], env["RECSTACK_EVENTS_TOPIC"]
    r = sync_from_url(redis_url, decode_responses=True)
    values = [(e.user_id.encode(), event_to_json(e)) for e in events]
    asyncio.run(produce_batched(kafka_broker, topic, values))

    def markers() -> int:
        return sum(1 for _ in r.scan_iter(Keys(prefix).event_seen("*", "*"), count=1000))

    procs = []
    try:
        # 1st kill: as soon as the first batch is in Redis; this worker's commit interval is longer
        # than the test, so nothing it wrote is committed and all of it is replayed
        procs.append(start_worker({**env, "RECSTACK_STREAM_COMMIT_INTERVAL_S": "600"}, log))
        wait_for(lambda: r.exists(Keys(prefix).popularity()), "the first writes", procs[-1], log, 60, 0.01)
        procs[-1].send_signal(signal.SIGKILL)
        procs[-1].wait(10)
        first = markers()
        committed = asyncio.run(committed_offsets(kafka_broker, group, topic, 2))
        # what was written but not committed is replayed by the next worker (and must be a no-op)
        assert sum(committed) < first, (committed, first)
        # 2nd kill: further in, after some commits
        procs.append(start_worker(env, log))
        wait_for(lambda: markers() >= first + 200, "progress after restart", procs[-1], log, 60, 0.01)
        procs[-1].send_signal(signal.SIGKILL)
        procs[-1].wait(10)
        second = markers()
        assert first < second < len(distinct), "the kills did not land in the middle of the stream"

        procs.append(start_worker(env, log))
        wait_for(lambda: markers() == len(distinct), "every distinct event", procs[-1], log, 60)
        # the last worker has caught up with the log: lag 0 on both partitions
        wait_for(lambda: lags(port) == [0.0, 0.0], "consumer lag 0", procs[-1], log)
    finally:
        for proc in procs:
            stop_worker(proc)

    # counters equal the number of distinct event_ids, per user and type and per item and type
    state = snapshot(r, prefix)
    by_user = Counter((e.user_id, e.event_type) for e in distinct.values())
    for user in USERS:
        stats = state[f"stats:{user}"]
        assert {k: v for k, v in stats.items() if k not in ("total", "last_active")} == {
            t: float(c) for (u, t), c in by_user.items() if u == user
        }, user
    by_item: Counter[tuple[str, str]] = Counter()
    for e in distinct.values():
        for item in e.items or (e.item_id,):
            by_item[(item, e.event_type)] += 1
    for item in ITEMS:
        assert state[f"item:{item}"] == {t: float(c) for (i, t), c in by_item.items() if i == item}, item

    # recent items, genre EMA, arms and popularity match one in-order pass over the distinct events
    asyncio.run(apply_reference(redis_url, "ref:", events))
    expected = snapshot(r, "ref:")
    for key, value in expected.items():
        if key.startswith("recent:"):
            assert state[key] == value, key
        else:
            assert state[key] == pytest.approx(value, rel=1e-9), key
    r.close()
