"""The feature-stream worker as a real process against real Kafka (Tansu) and Redis."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from recstack.devstack.embedded import EmbeddedRedis, free_port
from recstack.events import event_to_json, new_event
from recstack.features.keys import Keys
from recstack.metrics_text import sample, scrape
from recstack.redis_cluster import sync_from_url
from tests.integration.stream_support import (
    metric,
    produce,
    read_topic,
    start_worker,
    stop_worker,
    wait_for,
    worker_env,
    write_catalog,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def artifacts(tmp_path: Path) -> Path:
    return write_catalog(tmp_path / "artifacts", {"i1": ["Action"], "i2": ["Drama", "Comedy"]})


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
        "redis": sync_from_url(redis_url, decode_responses=True),
        "artifacts": artifacts,
    }
    try:
        yield info
    finally:
        stop_worker(proc)
        info["redis"].close()


def test_worker_writes_features_dead_letters_and_dedups(worker: dict) -> None:
    r: redis.Redis = worker["redis"]
    p = worker["prefix"]
    K = Keys(p)  # noqa: N806
    proc, log = worker["proc"], worker["log"]
    impression = new_event("u1", "impression", items=["i1", "i2"], request_id="req1")
    view = new_event("u1", "view", "i2")
    click = new_event("u1", "click", "i1", request_id="req1")
    bad = b'{"schema_version": 1, "event_id": "x", "user_id": "u1", "event_type": "teleport", "timestamp": 1}'
    values = [(b"u1", event_to_json(e)) for e in (impression, view, click, click)] + [(b"u1", bad)]
    asyncio.run(produce(worker["bootstrap"], worker["events_topic"], values))

    wait_for(lambda: r.hget(K.user_stats("u1"), "click"), "features in redis", proc, log)
    assert r.lrange(K.recent_items("u1"), 0, -1) == ["i1", "i2"]
    stats = r.hgetall(K.user_stats("u1"))
    assert (stats["click"], stats["view"], stats["impression"], stats["total"]) == ("1", "1", "1", "2")
    genres = {k: float(v) for k, v in r.hgetall(K.genre_scores("u1")).items()}
    assert genres["Action"] == pytest.approx(0.1) and genres["Drama"] == pytest.approx(0.05 * 0.9)
    assert r.hget(K.item_stats("i1"), "impression") == "1"

    # reward window 1 s: i1 was clicked (alpha 2), i2 was not (beta 2 after settling)
    wait_for(lambda: r.hget(K.bandit_arm("i2"), "beta") == "2", "zero reward for i2", proc, log)
    assert r.hgetall(K.bandit_arm("i1")) == {"alpha": "2", "beta": "1"}

    dead = asyncio.run(read_topic(worker["bootstrap"], worker["dlq_topic"], 1))
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
        if r.hexists(K.genre_scores("u1"), "Horror"):
            return True
        view = new_event("u1", "view", "i3")
        asyncio.run(produce(worker["bootstrap"], worker["events_topic"], [(b"u1", event_to_json(view))]))
        return False

    wait_for(horror_seen, "the v2 catalogue", proc, log)

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0, log.read_text()[-3000:]


def _env_with_own_redis(
    kafka_broker: str, kafka_topic: Callable[..., str], artifacts: Path, tmp_path: Path
) -> tuple[EmbeddedRedis, dict[str, str]]:
    """A started Redis of the test's own (the test stops and restarts it) and a worker environment
    on fresh topics that writes to it."""
    server = EmbeddedRedis(log_dir=tmp_path).start()
    env = worker_env(
        kafka_broker, kafka_topic(1, "events"), kafka_topic(1, "dlq"), server.url, artifacts, free_port()
    )
    return server, env


def test_offsets_commit_only_after_redis_writes(
    kafka_broker: str, kafka_topic: Callable[..., str], artifacts: Path, tmp_path: Path
) -> None:
    """Redis goes down: the worker retries and commits nothing; stopped meanwhile (SIGTERM, exit 0)
    it loses nothing, because its replacement (same group) re-reads the unwritten events."""
    server, env = _env_with_own_redis(kafka_broker, kafka_topic, artifacts, tmp_path)
    port = server.port
    p, metrics_port = env["RECSTACK_REDIS_PREFIX"], int(env["RECSTACK_METRICS_PORT"])
    K = Keys(p)  # noqa: N806
    log = tmp_path / "worker.log"
    first = start_worker(env, log)
    second: subprocess.Popen | None = None
    events = [new_event(f"u{n}", "view", "i1") for n in range(3)]
    try:
        send = [(e.user_id.encode(), event_to_json(e)) for e in events]
        asyncio.run(produce(kafka_broker, env["RECSTACK_EVENTS_TOPIC"], send[:1]))
        r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        wait_for(lambda: r.exists(K.user_stats("u0")), "the first event in redis", first, log)
        r.close()
        server.stop()

        asyncio.run(produce(kafka_broker, env["RECSTACK_EVENTS_TOPIC"], send[1:]))
        retries = "recstack_stream_redis_retries_total"
        # five failed attempts take > 3 s of backoff: longer than Faust's 2.8 s commit interval
        wait_for(lambda: metric(metrics_port, retries) >= 5, "redis write retries", first, log)

        # the two unwritten events show as consumer lag of the partition
        def lag() -> float | None:
            text = scrape(metrics_port)
            return sample(
                text, "recstack_stream_consumer_lag", topic=env["RECSTACK_EVENTS_TOPIC"], partition="0"
            )

        wait_for(lambda: lag() == 2, "consumer lag 2 while redis is down", first, log)
        # SIGTERM while a batch is stuck: a clean, quick stop that commits only what was written
        first.send_signal(signal.SIGTERM)
        assert first.wait(20) == 0, log.read_text()[-3000:]

        server = EmbeddedRedis(port=port, log_dir=tmp_path).start()
        second = start_worker(env, log)
        r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        wait_for(
            lambda: r.exists(K.user_stats("u1"), K.user_stats("u2")) == 2, "replayed events", second, log
        )
        assert r.lrange(K.recent_items("u2"), 0, -1) == ["i1"]
        wait_for(lambda: lag() == 0, "consumer lag back to 0", second, log)
        r.close()
    finally:
        for proc in (first, second):
            if proc is not None:
                stop_worker(proc)
        server.stop()


@pytest.mark.chaos
def test_worker_pauses_while_redis_is_down_and_resumes_without_loss(
    kafka_broker: str, kafka_topic: Callable[..., str], artifacts: Path, tmp_path: Path
) -> None:
    """Redis goes away and comes back on the same port: the same worker retries with backoff,
    stays alive, then writes everything that arrived meanwhile, in order, once."""
    server, env = _env_with_own_redis(kafka_broker, kafka_topic, artifacts, tmp_path)
    port = server.port
    p, metrics_port = env["RECSTACK_REDIS_PREFIX"], int(env["RECSTACK_METRICS_PORT"])
    K = Keys(p)  # noqa: N806
    log = tmp_path / "worker.log"
    proc = start_worker(env, log)
    items = [f"i{n}" for n in range(20)]
    send = [(b"u", event_to_json(new_event("u", "view", item))) for item in items]
    try:
        asyncio.run(produce(kafka_broker, env["RECSTACK_EVENTS_TOPIC"], send[:1]))
        r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        wait_for(lambda: r.exists(K.user_stats("u")), "the first event in redis", proc, log)
        r.close()  # an open client would keep the port in FIN-WAIT-2, and the restart on it would fail
        server.stop()
        asyncio.run(produce(kafka_broker, env["RECSTACK_EVENTS_TOPIC"], send[1:]))
        retries = "recstack_stream_redis_retries_total"
        wait_for(lambda: metric(metrics_port, retries) >= 2, "redis write retries", proc, log)
        server = EmbeddedRedis(port=port, log_dir=tmp_path).start()  # empty: only the new writes land
        r = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
        wait_for(lambda: r.hget(K.user_stats("u"), "view") == "19", "the events held back", proc, log)
        assert r.lrange(K.recent_items("u"), 0, -1) == items[1:][::-1]
        r.close()
        assert proc.poll() is None
    finally:
        stop_worker(proc)
        server.stop()


@pytest.mark.chaos
def test_an_event_of_a_megabyte_is_dead_lettered_truncated_and_never_stalls_the_partition(
    worker: dict,
) -> None:
    """~1 MB (under Kafka's default limit, so any producer can send it) between valid events: the
    valid ones are applied, the big one is dead-lettered truncated with its size and hash, and the
    worker keeps committing."""
    import hashlib

    r: redis.Redis = worker["redis"]
    p = worker["prefix"]
    K = Keys(p)  # noqa: N806
    proc, log = worker["proc"], worker["log"]
    before = [new_event("u9", "view", f"i{k % 2 + 1}") for k in range(10)]
    huge = b'{"schema_version": 1, "pad": "' + b"x" * 999_000 + b'"}'
    after = [new_event("u9", "click", "i1") for _ in range(10)]
    values = (
        [(b"u9", event_to_json(e)) for e in before]
        + [(b"u9", huge)]
        + [(b"u9", event_to_json(e)) for e in after]
    )
    asyncio.run(produce(worker["bootstrap"], worker["events_topic"], values))
    wait_for(lambda: r.hget(K.user_stats("u9"), "click") == "10", "all 20 valid events applied", proc, log)
    assert r.hget(K.user_stats("u9"), "view") == "10"
    dead = asyncio.run(read_topic(worker["bootstrap"], worker["dlq_topic"], 1))
    headers = dict(dead[0].headers)
    assert headers["recstack-reason"] == b"too_large" and headers["recstack-truncated"] == b"1"
    assert headers["recstack-original-size"] == str(len(huge)).encode()
    assert headers["recstack-original-sha256"] == hashlib.sha256(huge).hexdigest().encode()
    assert dead[0].value == huge[: len(dead[0].value)] and len(dead[0].value) < len(huge)
    assert proc.poll() is None, log.read_text()[-3000:]
