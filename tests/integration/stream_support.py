"""Helpers of the feature-stream integration tests: the worker as a real subprocess, its metrics,
producing raw records and reading the dead-letter topic (real Tansu and redis-server)."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import redis

from recstack.events import UserEvent, new_event
from recstack.events.producer import EventProducer
from recstack.features.keys import Keys
from recstack.features.writer import FeatureWriter
from recstack.metrics_text import sample, scrape
from recstack.redis_cluster import async_from_url

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 30.0


def write_catalog(root: Path, genres: dict[str, list[str]]) -> Path:
    """A minimal bundle (CURRENT -> v1/catalog.json) with the given item genres."""
    (root / "v1").mkdir(parents=True)
    catalog = {"item_ids": sorted(genres), "genres": genres}
    (root / "v1" / "catalog.json").write_text(json.dumps(catalog))
    (root / "CURRENT").write_text("v1\n")
    return root


def wait_for(
    predicate: Callable[[], Any],
    what: str,
    procs: subprocess.Popen | Sequence[subprocess.Popen],
    log: Path,
    timeout: float = DEADLINE_S,
    interval: float = 0.1,
) -> Any:
    """Poll until predicate() is truthy; fail with the worker log when a worker exits or time is up."""
    procs = [procs] if isinstance(procs, subprocess.Popen) else list(procs)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        for proc in procs:
            if proc.poll() is not None:
                tail = log.read_text(errors="replace")[-3000:]
                pytest.fail(f"worker exited with {proc.returncode} while waiting for {what}:\n{tail}")
        time.sleep(interval)
    pytest.fail(
        f"timed out after {timeout:.0f}s waiting for {what}:\n{log.read_text(errors='replace')[-3000:]}"
    )


def worker_env(
    kafka_broker: str,
    events_topic: str,
    dlq_topic: str,
    redis_url: str,
    artifacts: Path,
    metrics_port: int,
    **extra: str,
) -> dict[str, str]:
    """Environment of one worker: its own Redis prefix and consumer group (override with extra)."""
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": kafka_broker,
        "REDIS_URL": redis_url,
        "RECSTACK_EVENTS_TOPIC": events_topic,
        "RECSTACK_DEAD_LETTER_TOPIC": dlq_topic,
        "RECSTACK_ARTIFACTS": str(artifacts),
        "RECSTACK_METRICS_PORT": str(metrics_port),
        "RECSTACK_REDIS_PREFIX": f"t{uuid.uuid4().hex[:6]}:",
        "RECSTACK_STREAM_GROUP": f"fs-{uuid.uuid4().hex[:8]}",
        "RECSTACK_REWARD_WINDOW_S": "1",
        "RECSTACK_SETTLE_INTERVAL_S": "0.5",
        "RECSTACK_CATALOG_CHECK_S": "0.5",
        "RECSTACK_LAG_INTERVAL_S": "0.2",
        # Tansu holds a JoinGroup for half the session timeout; a killed member is evicted after it
        "RECSTACK_STREAM_SESSION_TIMEOUT_S": "4",
        "RECSTACK_LOG_LEVEL": "INFO",
        **extra,
    }


def start_worker(env: dict[str, str], log: Path) -> subprocess.Popen:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "services.feature_stream"], cwd=REPO, env=env, stdout=out, stderr=out
        )


def stop_worker(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)


def metric(port: int, name: str) -> float:
    """Value of the unlabelled sample ``name`` on the port's /metrics (0.0 when absent or unreachable)."""
    return sample(scrape(port), name) or 0.0


async def produce(bootstrap: str, topic: str, values: Sequence[tuple[bytes | None, bytes | None]]) -> None:
    """Send raw (key, value) records in order, one acknowledged send at a time."""
    async with EventProducer(bootstrap, topic) as producer:
        for key, value in values:
            await producer.send_raw(value, key=key)  # type: ignore[arg-type]


async def produce_batched(bootstrap: str, topic: str, values: Sequence[tuple[bytes, bytes]]) -> None:
    """Send raw records without waiting for each acknowledgement (order per partition is kept)."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        futures = [await producer.send(topic, value=value, key=key) for key, value in values]
        for future in futures:
            await future
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, n: int, timeout: float = DEADLINE_S) -> list:
    """Up to n records of a topic from the beginning (stops at n or after timeout)."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        records: list = []
        deadline = time.monotonic() + timeout
        while len(records) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


async def committed_offsets(bootstrap: str, group: str, topic: str, partitions: int) -> list[int]:
    """The group's committed offset of each partition (0 where none), read without joining it."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    await consumer.start()
    try:
        return [await consumer.committed(TopicPartition(topic, p)) or 0 for p in range(partitions)]
    finally:
        await consumer.stop()


# --- a small event world: the expected Redis state is one in-order FeatureWriter pass over the
# distinct events (exactly-once and rebuild tests) ---------------------------------------------------

USERS = [f"u{n}" for n in range(24)]
ITEMS = [f"i{n}" for n in range(40)]
GENRES = {item: [["Action", "Drama", "Comedy", "Horror"][n % 4]] for n, item in enumerate(ITEMS)}


def make_events(rng: random.Random, n: int) -> list[UserEvent]:
    """n events (interactions, impressions, rewards) with ~10% re-sent duplicates of earlier ones."""
    t0 = time.time() - 60
    events: list[UserEvent] = []
    for k in range(n):
        if events and rng.random() < 0.1:
            events.append(rng.choice(events))  # a producer retry: same event_id, same bytes
            continue
        user, ts = rng.choice(USERS), t0 + k * 0.01
        kind = rng.choice(["view", "view", "click", "like", "purchase", "rating", "impression"])
        if kind == "impression":
            slate = rng.sample(ITEMS, 3)
            events.append(new_event(user, "impression", items=slate, request_id=f"r{k}", timestamp=ts))
            events.append(new_event(user, "click", slate[0], request_id=f"r{k}", timestamp=ts))
        elif kind == "rating":
            events.append(new_event(user, "rating", rng.choice(ITEMS), rating=4.0, timestamp=ts))
        else:
            events.append(new_event(user, kind, rng.choice(ITEMS), timestamp=ts))
    return events


def snapshot(r: redis.Redis, prefix: str) -> dict[str, object]:
    keys = Keys(prefix)
    state: dict[str, object] = {}
    for user in USERS:
        state[f"recent:{user}"] = r.lrange(keys.recent_items(user), 0, -1)
        state[f"genres:{user}"] = {k: float(v) for k, v in r.hgetall(keys.genre_scores(user)).items()}
        state[f"stats:{user}"] = {k: float(v) for k, v in r.hgetall(keys.user_stats(user)).items()}
    for item in ITEMS:
        state[f"item:{item}"] = {k: float(v) for k, v in r.hgetall(keys.item_stats(item)).items()}
        state[f"arm:{item}"] = {k: float(v) for k, v in r.hgetall(keys.bandit_arm(item)).items()}
    state["popularity"] = dict(r.zrange(keys.popularity(), 0, -1, withscores=True))
    return state


async def apply_reference(redis_url: str, prefix: str, events: list[UserEvent]) -> None:
    client = async_from_url(redis_url, decode_responses=True)
    try:
        await FeatureWriter(client, Keys(prefix), catalog=GENRES).apply(events)
    finally:
        await client.aclose()
