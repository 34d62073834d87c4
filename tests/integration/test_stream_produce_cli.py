"""`recstack events produce` replays a dataset into a real Kafka (Tansu) topic."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer

from recstack.events import new_event, parse_event
from recstack.events.producer import EventProducer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


async def consume_all(bootstrap: str, topic: str, n: int, timeout_s: float = 20.0) -> list[bytes]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    values: list[bytes] = []
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while len(values) < n and loop.time() < deadline:
            for records in (await consumer.getmany(timeout_ms=500)).values():
                values.extend(r.value for r in records)
    finally:
        await consumer.stop()
    return values


def test_produce_replays_dataset_in_time_order(kafka_broker: str, kafka_topic: Callable[..., str]) -> None:
    topic = kafka_topic(1, "replay")
    cmd = [
        sys.executable,
        "-m",
        "recstack.cli",
        "events",
        "produce",
        "--from",
        "synthetic:n_users=30",
        "--limit",
        "120",
        "--bootstrap",
        kafka_broker,
        "--topic",
        topic,
        "--original-timestamps",
    ]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "sent 120 events" in done.stdout
    values = asyncio.run(consume_all(kafka_broker, topic, 121, timeout_s=5))
    events = [parse_event(v) for v in values]
    assert len(events) == 120
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps)
    assert len({e.event_id for e in events}) == 120


def test_produce_reports_unreachable_broker() -> None:
    cmd = [sys.executable, "-m", "recstack.cli", "events", "produce", "--from", "synthetic:n_users=5"]
    done = subprocess.run(
        cmd + ["--bootstrap", "127.0.0.1:1"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "cannot connect to Kafka" in done.stderr


def test_tail_prints_records_as_json_lines(kafka_broker: str, kafka_topic: Callable[..., str]) -> None:
    topic = kafka_topic(1, "tail")
    events = [new_event(f"u{n}", "click", "i1") for n in range(3)]

    async def send() -> None:
        async with EventProducer(kafka_broker, topic) as producer:
            await producer.send_raw(b"not json", key=b"k")
            await producer.send_many(events)

    asyncio.run(send())
    cmd = [sys.executable, "-m", "recstack.cli", "events", "tail", "--topic", topic, "--limit", "3"]
    done = subprocess.run(
        cmd + ["--bootstrap", kafka_broker], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 3
    assert lines[0]["value"] == "not json" and lines[0]["offset"] == 0 and lines[0]["key"] == "k"
    assert lines[1]["value"]["event_id"] == events[0].event_id
