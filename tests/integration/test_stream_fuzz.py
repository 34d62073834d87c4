"""A seeded fuzz of bad records mixed with good events through the real worker (Tansu + Redis):
every bad record lands in the dead-letter topic with its original bytes, reason and source offset;
every good event is applied; the per-reason counter matches; the worker stays alive and keeps going."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from recstack.devstack.embedded import free_port
from recstack.events import event_to_json, new_event
from recstack.events.schema import MAX_EVENT_BYTES
from recstack.features.keys import Keys
from recstack.metrics_text import sample, samples, scrape
from recstack.redis_cluster import sync_from_url
from tests.integration.stream_support import (
    produce_batched,
    read_topic,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
    write_catalog,
)

pytestmark = pytest.mark.integration


def good(rng: random.Random, user: str) -> dict[str, Any]:
    kind = rng.choice(["view", "click", "like", "purchase", "rating", "impression", "session_start"])
    item = f"i{rng.randrange(20)}"
    if kind == "impression":
        return new_event(user, kind, items=[item, "i99"], request_id=f"r{rng.random()}").to_dict()
    if kind == "rating":
        return new_event(user, kind, item, rating=rng.choice([0.5, 3.0, 5.0])).to_dict()
    return new_event(user, kind, item if kind != "session_start" else "").to_dict()


def with_(obj: dict[str, Any], **changes: Any) -> bytes:
    out = {**obj, **changes}
    return json.dumps({k: v for k, v in out.items() if v is not _DROP}).encode()


_DROP = object()


def bad(rng: random.Random, base: dict[str, Any]) -> tuple[bytes | None, str]:
    """One invalid record derived from a valid event, and the reason the worker must give."""
    now = time.time()
    cases: list[Callable[[], tuple[bytes | None, str]]] = [
        lambda: (json.dumps(base).encode()[: rng.randrange(1, 40)], "malformed_json"),
        lambda: (b"\xff" + rng.randbytes(rng.randrange(0, 200)), "malformed_json"),
        lambda: (b"[" * 50_000, "malformed_json"),  # nesting deeper than the parser's recursion limit
        lambda: (b'{"schema_version": 1, "timestamp": ' + b"9" * 5000 + b"}", "malformed_json"),
        lambda: (json.dumps([base]).encode(), "malformed_json"),
        lambda: (b"", "malformed_json"),
        lambda: (None, "malformed_json"),  # a tombstone record
        lambda: (with_(base, **{rng.choice(["event_id", "user_id", "event_type"]): _DROP}), "missing_field"),
        lambda: (with_(base, timestamp=_DROP), "missing_field"),
        lambda: (with_(base, event_id=""), "missing_field"),
        lambda: (with_(base, schema_version=_DROP), "missing_field"),
        lambda: (with_(base, user_id=rng.randrange(100)), "wrong_type"),
        lambda: (with_(base, timestamp=str(now)), "wrong_type"),
        lambda: (with_(base, schema_version="1"), "wrong_type"),
        lambda: (with_(base, context=["not", "a", "map"]), "wrong_type"),
        lambda: (with_(base, event_type=rng.choice(["teleport", "VIEW", "clicks"])), "unknown_event_type"),
        lambda: (with_(base, timestamp=now + rng.uniform(3600, 1e6)), "future_timestamp"),
        lambda: (with_(base, timestamp=now * 1000), "future_timestamp"),  # milliseconds
        lambda: (with_(base, context={"pad": "x" * (MAX_EVENT_BYTES + 10)}), "too_large"),
        lambda: (rng.randbytes(MAX_EVENT_BYTES + 1), "too_large"),
        lambda: (with_(base, schema_version=rng.choice([0, 2, 99])), "unknown_schema_version"),
        lambda: (with_(base, timestamp=-5), "invalid_value"),
        lambda: (with_(base, timestamp=10**400), "invalid_value"),
        lambda: (json.dumps({**base, "timestamp": float("nan")}).encode(), "invalid_value"),
        lambda: (with_(base, user_id="\ud800"), "invalid_value"),  # lone surrogate via a JSON escape
        lambda: (with_(base, event_type="rating", item_id="i1", rating=7), "invalid_value"),
    ]
    return rng.choice(cases)()


def test_fuzzed_bad_records_are_dead_lettered_and_good_ones_applied(
    kafka_broker: str, kafka_topic: Callable[..., str], redis_url: str, tmp_path: Path
) -> None:
    rng = random.Random(20261128)
    records: list[tuple[bytes, bytes | None]] = []
    expected_bad: dict[int, tuple[bytes | None, str]] = {}  # source offset -> (value, reason)
    good_events: list[dict[str, Any]] = []
    for n in range(400):
        if n in (3, 77, 201):  # valid, but its Redis writes fail: a string where a list should be
            value = event_to_json(new_event("poison", "view", "i1"))
            expected_bad[len(records)] = (value, "write_failed")
            records.append((b"poison", value))
        user = f"u{rng.randrange(8)}"
        base = good(rng, user)
        if rng.random() < 0.4:
            value, reason = bad(rng, base)
            expected_bad[len(records)] = (value, reason)
            records.append((user.encode(), value))
        else:
            good_events.append(base)
            records.append((user.encode(), json.dumps(base).encode()))
    sentinel = new_event("sentinel", "view", "i0")  # produced last: written once everything before is
    records.append((b"sentinel", event_to_json(sentinel)))
    assert len(set(r for _, r in expected_bad.values())) == 9  # every reason code is exercised

    env = worker_env(
        kafka_broker,
        kafka_topic(1, "events"),
        kafka_topic(1, "dlq"),
        redis_url,
        write_catalog(tmp_path / "artifacts", {"i1": ["Action"]}),
        free_port(),
        RECSTACK_LOG_LEVEL="WARNING",
    )
    prefix, port, log = env["RECSTACK_REDIS_PREFIX"], int(env["RECSTACK_METRICS_PORT"]), tmp_path / "w.log"
    r = sync_from_url(redis_url, decode_responses=True)
    r.set(Keys(prefix).recent_items("poison"), "not a list")
    proc = start_worker(env, log)
    try:
        asyncio.run(produce_batched(kafka_broker, env["RECSTACK_EVENTS_TOPIC"], records))  # type: ignore[arg-type]
        wait_for(lambda: r.exists(Keys(prefix).user_stats("sentinel")), "the sentinel event", proc, log)
        dead = asyncio.run(read_topic(kafka_broker, env["RECSTACK_DEAD_LETTER_TOPIC"], len(expected_bad)))
        topic = env["RECSTACK_EVENTS_TOPIC"]

        def caught_up() -> bool:  # the lag gauge is set by a timer: poll it
            text = scrape(port)
            lag = sample(text, "recstack_stream_consumer_lag", topic=topic, partition="0")
            return lag == 0 and sample(text, "recstack_stream_assigned_partitions") == 1

        wait_for(caught_up, "consumer lag 0 on the one assigned partition", proc, log)
        text = scrape(port)
        assert proc.poll() is None, "the worker died"
    finally:
        stop_worker(proc)

    # every bad record: in the dead-letter topic once, original bytes, reason, source offset
    got = {}
    for record in dead:
        headers = {k: v.decode() for k, v in record.headers}
        assert headers["recstack-source-topic"] == env["RECSTACK_EVENTS_TOPIC"]
        assert headers["recstack-source-partition"] == "0" and headers["recstack-error"]
        offset = int(headers["recstack-source-offset"])
        assert offset not in got, f"offset {offset} dead-lettered twice"
        got[offset] = (record.value, headers["recstack-reason"])
    assert got.keys() == expected_bad.keys()
    for offset, (value, reason) in expected_bad.items():
        assert got[offset][1] == reason, (offset, value[:200] if value else value, got[offset][1])
        assert (got[offset][0] or b"") == (value or b""), offset

    # every good event applied exactly once
    per_user = Counter((e["user_id"], e["event_type"]) for e in good_events)
    for (user, etype), count in per_user.items():
        assert r.hget(Keys(prefix).user_stats(user), etype) == str(count), (user, etype)

    # metrics: dead letters per reason, events per type, batch size, latencies, lag
    reasons = Counter(reason for _, reason in expected_bad.values())
    dlq = {labels["reason"]: v for labels, v in samples(text, "recstack_stream_dead_letters_total")}
    assert dlq == {reason: float(n) for reason, n in reasons.items()}
    types = Counter(e["event_type"] for e in good_events) + Counter(["view"])  # + sentinel
    assert {labels["type"]: v for labels, v in samples(text, "recstack_stream_events_total")} == {
        t: float(n) for t, n in types.items()
    }
    assert sample(text, "recstack_stream_batch_size_sum") == len(records)
    assert sample(text, "recstack_stream_batch_seconds_count") == sample(
        text, "recstack_stream_batch_size_count"
    )
    assert sample(text, "recstack_stream_event_to_feature_seconds_count") == len(good_events) + 1
    r.close()
