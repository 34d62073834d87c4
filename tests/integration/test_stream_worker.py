"""The feature-stream worker as a real process against real Kafka (Tansu) and Redis."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from recstack.devstack.embedded import EmbeddedRedis, free_port
from recstack.events import event_to_json, new_event
from recstack.events.producer import EventProducer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEADLINE_S = 30.0


def wait_for(predicate: Callable[[], object], what: str, proc: subprocess.Popen, log: Path) -> object:
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            pytest.fail(f"worker exited with {proc.returncode} while waiting for {what}:\n{tail}")
        time.sleep(0.1)
    pytest.fail(f"timed out after {DEADLINE_S:.0f}s waiting for {what}:\n{log.read_text()[-3000:]}")


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    (root / "v1").mkdir(parents=True)
    catalog = {"item_ids": ["i1", "i2"], "genres": {"i1": ["Action"], "i2": ["Drama", "Comedy"]}}
    (root / "v1" / "catalog.json").write_text(json.dumps(catalog))
    (root / "CURRENT").write_text("v1\n")
    return root


def worker_env(
    kafka_broker: str, events_topic: str, dlq_topic: str, redis_url: str, artifacts: Path, metrics_port: int
) -> dict[str, str]:
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
        "RECSTACK_LOG_LEVEL": "INFO",
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


def metric(port: int, line_prefix: str) -> float:
    """Value of the first sample whose line starts with line_prefix (0.0 when absent or unreachable)."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(line_prefix):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture
def worker(
    kafka_broker: str, kafka_topic: Callable[..., str], redis_url: str, artifacts: Path, tmp_path: Path
) -> Iterator[dict]:
    env = worker_env(
        kafka_broker, kafka_topic(1, "events"), kafka_topic(1, "dlq"), redis_url, artifacts, free_port()
    )
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    info = {
        "proc": proc,
        "log": log,
        "events_topic": env["RECSTACK_EVENTS_TOPIC"],
        "dlq_topic": env["RECSTACK_DEAD_LETTER_TOPIC"],
        "bootstrap": kafka_broker,
        "metrics_port": int(env["RECSTACK_METRICS_PORT"]),
        "prefix": env["RECSTACK_REDIS_PREFIX"],
        "redis": redis.Redis.from_url(redis_url, decode_responses=True),
        "artifacts": artifacts,
    }
    try:
        yield info
    finally:
        stop_worker(proc)
        info["redis"].close()


async def produce(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]]) -> None:
    async with EventProducer(bootstrap, topic) as producer:
        for key, value in values:
            await producer.send_raw(value, key=key)


async def read_dead_letters(bootstrap: str, topic: str, n: int) -> list:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        records = []
        deadline = time.monotonic() + DEADLINE_S
        while len(records) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            for part in batch.values():
                records.extend(part)
        return records
    finally:
        await consumer.stop()


def test_worker_writes_features_dead_letters_and_dedups(worker: dict) -> None:
    r: redis.Redis = worker["redis"]
    p = worker["prefix"]
    proc, log = worker["proc"], worker["log"]
    impression = new_event("u1", "impression", items=["i1", "i2"], request_id="req1")
    view = new_event("u1", "view", "i2")
    click = new_event("u1", "click", "i1", request_id="req1")
    bad = b'{"schema_version": 1, "event_id": "x", "user_id": "u1", "event_type": "teleport", "timestamp": 1}'
    values = [(b"u1", event_to_json(e)) for e in (impression, view, click, click)] + [(b"u1", bad)]
    asyncio.run(produce(worker["bootstrap"], worker["events_topic"], values))

    wait_for(lambda: r.hget(f"{p}user:u1:stats", "click"), "features in redis", proc, log)
    assert r.lrange(f"{p}user:u1:recent_items", 0, -1) == ["i1", "i2"]
    stats = r.hgetall(f"{p}user:u1:stats")
    assert (stats["click"], stats["view"], stats["impression"], stats["total"]) == ("1", "1", "1", "2")
    genres = {k: float(v) for k, v in r.hgetall(f"{p}user:u1:genre_scores").items()}
    assert genres["Action"] == pytest.approx(0.1) and genres["Drama"] == pytest.approx(0.05 * 0.9)
    assert r.hget(f"{p}item:i1:stats", "impression") == "1"

    # reward window 1 s: i1 was clicked (alpha 2), i2 was not (beta 2 after settling)
    wait_for(lambda: r.hget(f"{p}bandit:ts:i2", "beta") == "2", "zero reward for i2", proc, log)
    assert r.hgetall(f"{p}bandit:ts:i1") == {"alpha": "2", "beta": "1"}

    dead = asyncio.run(read_dead_letters(worker["bootstrap"], worker["dlq_topic"], 1))
    assert len(dead) == 1
    headers = dict(dead[0].headers)
    assert dead[0].value == bad and headers["recstack-reason"] == b"unknown_event_type"
    assert headers["recstack-source-offset"] == b"4" and headers["recstack-source-partition"] == b"0"

    metrics = urllib.request.urlopen(f"http://127.0.0.1:{worker['metrics_port']}/metrics", timeout=5).read()
    text = metrics.decode()
    assert 'recstack_stream_events_total{type="click"} 2.0' in text
    assert 'recstack_stream_dead_letters_total{reason="unknown_event_type"} 1.0' in text
    assert "recstack_stream_duplicates_total 1.0" in text

    # a new bundle version is picked up without a restart: i3 gains a genre
    (worker["artifacts"] / "v2").mkdir()
    catalog = {"item_ids": ["i1", "i2", "i3"], "genres": {"i3": ["Horror"]}}
    (worker["artifacts"] / "v2" / "catalog.json").write_text(json.dumps(catalog))
    (worker["artifacts"] / "CURRENT").write_text("v2\n")

    def horror_seen() -> bool:
        if r.hexists(f"{p}user:u1:genre_scores", "Horror"):
            return True
        view = new_event("u1", "view", "i3")
        asyncio.run(produce(worker["bootstrap"], worker["events_topic"], [(b"u1", event_to_json(view))]))
        return False

    wait_for(horror_seen, "the v2 catalogue", proc, log)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()[-3000:]


def test_offsets_commit_only_after_redis_writes(
    kafka_broker: str, kafka_topic: Callable[..., str], artifacts: Path, tmp_path: Path
) -> None:
    """Redis goes down: the worker retries and commits nothing; stopped meanwhile (SIGTERM, exit 0)
    it loses nothing, because its replacement (same group) re-reads the unwritten events."""
    server = EmbeddedRedis(log_dir=tmp_path).start()
    port = server.port
    env = worker_env(
        kafka_broker, kafka_topic(1, "events"), kafka_topic(1, "dlq"), server.url, artifacts, free_port()
    )
    p, metrics_port = env["RECSTACK_REDIS_PREFIX"], int(env["RECSTACK_METRICS_PORT"])
    log = tmp_path / "worker.log"
    first = start_worker(env, log)
    second: subprocess.Popen | None = None
    events = [new_event(f"u{n}", "view", "i1") for n in range(3)]
    try:
        send = [(e.user_id.encode(), event_to_json(e)) for e in events]
        asyncio.run(produce(kafka_broker, env["RECSTACK_EVENTS_TOPIC"], send[:1]))
        r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        wait_for(lambda: r.exists(f"{p}user:u0:stats"), "the first event in redis", first, log)
        r.close()
        server.stop()

        asyncio.run(produce(kafka_broker, env["RECSTACK_EVENTS_TOPIC"], send[1:]))
        retries = "recstack_stream_redis_retries_total "
        # five failed attempts take > 3 s of backoff: longer than Faust's 2.8 s commit interval
        wait_for(lambda: metric(metrics_port, retries) >= 5, "redis write retries", first, log)
        # SIGTERM while a batch is stuck: a clean, quick stop that commits only what was written
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0, log.read_text()[-3000:]

        server = EmbeddedRedis(port=port, log_dir=tmp_path).start()
        second = start_worker(env, log)
        r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        wait_for(
            lambda: r.exists(f"{p}user:u1:stats", f"{p}user:u2:stats") == 2, "replayed events", second, log
        )
        assert r.lrange(f"{p}user:u2:recent_items", 0, -1) == ["i1"]
        r.close()
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_worker(proc)
        server.stop()
