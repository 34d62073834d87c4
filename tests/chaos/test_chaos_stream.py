"""Chaos: poison on every partition of the events topic, a 1 MB event among them, and a SIGKILL of the
worker in the middle: every valid event is applied once, every poison record is dead-lettered with
its reason, every partition's committed offset reaches its end (nothing stalls).

The SIGKILL mid-backlog, the 1 MB event alone and the Redis outage have their own integration tests
(tests/integration/test_stream_exactly_once.py and test_stream_worker.py, marked chaos too)."""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
import redis

from recstack.devstack.embedded import free_port
from recstack.events import event_to_json, new_event
from recstack.features.keys import Keys
from services.feature_stream.processor import DLQ_HEADER_PARTITION
from tests.chaos.support import report
from tests.integration.stream_support import (
    committed_offsets,
    produce_batched,
    read_topic,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
    write_catalog,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

PARTITIONS = 4
POISON = [
    b"\xff\xfe not utf-8",
    b"{ not json",
    b'{"schema_version": 99, "event_type": "view"}',
    b'{"schema_version": 1, "event_type": "view", "user_id": "", "item_id": "i1"}',
]


def test_poison_on_every_partition_and_a_kill_lose_and_double_nothing(
    kafka_broker: str, kafka_topic: Callable[..., str], redis_url: str, tmp_path: Path
) -> None:
    rng = random.Random(5)
    users = [f"u{n}" for n in range(32)]  # keys spread over every partition
    events = [new_event(rng.choice(users), "view", f"i{rng.randrange(50)}") for _ in range(2000)]
    huge = b'{"schema_version": 1, "pad": "' + b"x" * 999_000 + b'"}'
    records: list[tuple[bytes, bytes]] = [(e.user_id.encode(), event_to_json(e)) for e in events]
    poison_keys = [f"p{n}".encode() for n in range(64)]
    for n, key in enumerate(poison_keys):  # 64 keys: every partition gets several
        records.insert(rng.randrange(len(records)), (key, POISON[n % len(POISON)]))
    records.insert(len(records) // 2, (b"big", huge))
    topic = kafka_topic(PARTITIONS, "events")
    dlq = kafka_topic(1, "dlq")
    env = worker_env(
        kafka_broker,
        topic,
        dlq,
        redis_url,
        write_catalog(tmp_path / "artifacts", {"i1": ["Action"]}),
        free_port(),
        RECSTACK_STREAM_BATCH="50",
        RECSTACK_STREAM_COMMIT_INTERVAL_S="0.2",
        RECSTACK_EVENTS_PARTITIONS=str(PARTITIONS),
    )
    prefix, group, log = env["RECSTACK_REDIS_PREFIX"], env["RECSTACK_STREAM_GROUP"], tmp_path / "w.log"
    keys = Keys(prefix)
    r = redis.Redis.from_url(redis_url, decode_responses=True)

    def applied() -> int:
        return sum(int(r.hget(keys.user_stats(u), "view") or 0) for u in users)

    asyncio.run(produce_batched(kafka_broker, topic, records))
    procs = [start_worker(env, log)]
    try:
        wait_for(lambda: applied() >= 300, "the first batches", procs[-1], log, 60, 0.01)
        procs[-1].send_signal(signal.SIGKILL)  # mid-backlog, between commits
        procs[-1].wait(10)
        procs.append(start_worker(env, log))
        wait_for(lambda: applied() >= len(events), "every valid event", procs[-1], log, 90)
        ends = asyncio.run(_end_offsets(kafka_broker, topic))
        wait_for(
            lambda: asyncio.run(committed_offsets(kafka_broker, group, topic, PARTITIONS)) == ends,
            "commits at the end of every partition",
            procs[-1],
            log,
            60,
            0.5,
        )
    finally:
        for proc in procs:
            stop_worker(proc)
    expected = Counter(e.user_id for e in events)
    got = {u: int(r.hget(keys.user_stats(u), "view") or 0) for u in users}
    lost = sum(max(0, expected[u] - got[u]) for u in users)
    doubled = sum(max(0, got[u] - expected[u]) for u in users)
    dead = asyncio.run(read_topic(kafka_broker, dlq, len(poison_keys) + 1, timeout=60))
    reasons = Counter(dict(d.headers)["recstack-reason"].decode() for d in dead)
    partitions = {int(dict(d.headers)[DLQ_HEADER_PARTITION]) for d in dead}
    report(
        "poison on every partition + 1 MB event + SIGKILL",
        events=len(events),
        poison=len(poison_keys) + 1,
        events_lost=lost,
        events_doubled=doubled,
        dead_letters=dict(reasons),
        committed=ends,
    )
    assert lost == 0 and doubled == 0
    assert sum(reasons.values()) >= len(poison_keys) + 1 and reasons["too_large"] >= 1
    assert partitions == set(range(PARTITIONS))  # poison from every partition was dead-lettered
    r.close()


async def _end_offsets(bootstrap: str, topic: str) -> list[int]:
    """Each partition's high watermark from a fetch (Tansu lists a stale end offset, not Kafka)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)
        while any(consumer.highwater(tp) is None for tp in tps):
            await consumer.getmany(timeout_ms=200)
        return [int(consumer.highwater(tp)) for tp in tps]
    finally:
        await consumer.stop()
