"""`recstack stream --rebuild`: a lost Redis is rebuilt from the retained events topic, idempotently.

Real Tansu and redis-server; the CLI runs as a subprocess. The expected state is one in-order pass of
a FeatureWriter over the distinct events (as in the exactly-once test)."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from recstack.devstack.embedded import free_port
from recstack.events import event_to_json
from recstack.redis_cluster import sync_from_url
from tests.integration.stream_support import (
    GENRES,
    apply_reference,
    make_events,
    produce_batched,
    snapshot,
    worker_env,
    write_catalog,
)

pytestmark = pytest.mark.integration


def run_rebuild(env: dict[str, str]) -> dict[str, object]:
    proc = subprocess.run(
        [sys.executable, "-m", "recstack.cli", "stream", "--rebuild", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_rebuild_replays_the_topic_into_an_empty_redis_once(
    kafka_broker: str, kafka_topic: Callable[..., str], redis_url: str, tmp_path: Path
) -> None:
    events = make_events(random.Random(11), 1500)
    distinct = {e.event_id: e for e in events}
    invalid = [b"not json", b'{"schema_version": 1}', b"{}"]
    values = [(e.user_id.encode(), event_to_json(e)) for e in events] + [(b"x", v) for v in invalid]
    topic = kafka_topic(2, "events")
    asyncio.run(produce_batched(kafka_broker, topic, values))
    env = worker_env(
        kafka_broker,
        topic,
        kafka_topic(1, "dlq"),
        redis_url,
        write_catalog(tmp_path / "artifacts", GENRES),
        free_port(),
        RECSTACK_REWARD_WINDOW_S="1800",
        RECSTACK_STREAM_BATCH="200",
    )
    prefix = env["RECSTACK_REDIS_PREFIX"]
    r = sync_from_url(redis_url, decode_responses=True)
    assert not list(r.scan_iter(f"{prefix}*", count=1000))  # an empty Redis (for this prefix)

    first = run_rebuild(env)
    assert first["read"] == len(values)
    assert first["invalid"] == len(invalid)
    assert first["applied"] == len(distinct)  # producer retries (same event_id) applied once
    assert first["skipped"] == len(events) - len(distinct)
    assert first["truncated"] == []
    assert sum(p["read"] for p in first["partitions"].values()) == len(values)

    ref = f"ref{uuid.uuid4().hex[:6]}:"
    asyncio.run(apply_reference(redis_url, ref, events))
    rebuilt, expected = snapshot(r, prefix), snapshot(r, ref)
    for key, value in expected.items():
        if key.startswith("recent:"):
            assert rebuilt[key] == value, key
        else:
            assert rebuilt[key] == pytest.approx(value, rel=1e-9), key

    # a second rebuild (interrupted run restarted, or a rebuild beside the live worker) is a no-op
    second = run_rebuild(env)
    assert second["applied"] == 0
    assert second["skipped"] == len(events)
    assert snapshot(r, prefix) == rebuilt
    r.close()


def test_rebuild_of_a_missing_topic_is_one_clear_error(kafka_broker: str, redis_url: str) -> None:
    env = {
        **worker_env(kafka_broker, f"absent-{uuid.uuid4().hex[:6]}", "dlq", redis_url, Path("."), 0),
        "RECSTACK_METRICS_PORT": "0",
    }
    proc = subprocess.run(
        [sys.executable, "-m", "recstack.cli", "stream", "--rebuild"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr and "Traceback" not in proc.stderr
