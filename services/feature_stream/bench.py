"""Feature-stream benchmark: FeatureWriter throughput and the worker's end-to-end throughput/latency.

Uses real processes: an embedded redis-server and Tansu broker (unless REDIS_URL /
KAFKA_BOOTSTRAP_SERVERS are given) and the worker as `python -m services.feature_stream`.
Events are the synthetic dataset's interactions, stamped with the current time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import redis.asyncio as aioredis

from recstack.data import load_dataset
from recstack.devstack.embedded import EmbeddedKafka, EmbeddedRedis, ensure_topics, free_port
from recstack.events.producer import EventProducer, events_from_interactions
from recstack.events.schema import UserEvent, new_event
from recstack.features.keys import Keys
from recstack.features.writer import FeatureWriter

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
E2F = "recstack_stream_event_to_feature_seconds"
PACED_RATE = 500.0


class BenchError(RuntimeError):
    """The benchmark could not run (a process did not start or did not finish in time)."""


def bench_events(n: int, data_spec: str = "synthetic") -> list[UserEvent]:
    """n valid events from the dataset's interactions (repeated when the dataset is smaller)."""
    dataset = load_dataset(data_spec)
    out: list[UserEvent] = []
    while len(out) < n:
        before = len(out)
        out.extend(events_from_interactions(dataset.interactions))
        if len(out) == before:
            raise BenchError(f"dataset {data_spec!r} yields no valid events")
    return out[:n]


async def bench_writer(redis_url: str, events: list[UserEvent], batch: int) -> dict[str, float]:
    """Apply events in batches with one FeatureWriter; events/s and batch latency percentiles."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        writer = FeatureWriter(client, keys=Keys(f"bench-w-{uuid.uuid4().hex[:6]}:"))
        latencies = []
        started = time.perf_counter()
        for start in range(0, len(events), batch):
            t0 = time.perf_counter()
            await writer.apply(events[start : start + batch])
            latencies.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - started
    finally:
        await client.aclose()
    lat = np.array(latencies) * 1000
    return {
        "events": len(events),
        "batch_size": batch,
        "events_per_s": round(len(events) / elapsed, 1),
        "batch_p50_ms": round(float(np.percentile(lat, 50)), 3),
        "batch_p99_ms": round(float(np.percentile(lat, 99)), 3),
    }


def _metrics(port: int) -> str:
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return ""


def _events_done(text: str) -> float:
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("recstack_stream_events_total{")
    )


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def _buckets(text: str, name: str) -> list[tuple[float, float]]:
    out = []
    for line in text.splitlines():
        if line.startswith(f"{name}_bucket{{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            out.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    return out


def histogram_quantile(text: str, name: str, q: float, before: str = "") -> float:
    """Upper bound of the bucket that holds quantile q of a Prometheus histogram (nan when empty).

    before: an earlier scrape; its counts are subtracted (the quantile of what happened since).
    """
    buckets = _buckets(text, name)
    if before:
        earlier = dict(_buckets(before, name))
        buckets = [(le, count - earlier.get(le, 0.0)) for le, count in buckets]
    if not buckets or buckets[-1][1] == 0:
        return float("nan")
    total = buckets[-1][1]
    return next(le for le, count in buckets if count >= q * total)


def _wait(predicate: Any, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise BenchError(f"worker exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


async def _produce(bootstrap: str, topic: str, events: list[UserEvent]) -> None:
    """Send in chunks of 1000, each event stamped with the time its chunk is sent."""
    async with EventProducer(bootstrap, topic) as producer:
        for start in range(0, len(events), 1000):
            now = time.time()
            await producer.send_many(replace(e, timestamp=now) for e in events[start : start + 1000])


async def _produce_paced(bootstrap: str, topic: str, events: list[UserEvent], rate: float) -> None:
    """Send at a steady rate, each event stamped just before it is sent (latency, not backlog)."""
    async with EventProducer(bootstrap, topic) as producer:
        started = time.monotonic()
        for n, event in enumerate(events):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await producer.send(replace(event, event_id=uuid.uuid4().hex, timestamp=time.time()))


def bench_end_to_end(
    redis_url: str,
    bootstrap: str,
    events: list[UserEvent],
    batch: int,
    partitions: int = 4,
    timeout: float = 300.0,
) -> dict[str, float]:
    """Start the worker, produce the events as fast as possible and wait until all are in Redis
    (throughput, backlog latency); then 1000 events at PACED_RATE/s (steady-state latency)."""
    topic = f"bench-events-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: partitions, f"{topic}.dlq": 1})
    port = free_port()
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "REDIS_URL": redis_url,
        "RECSTACK_EVENTS_TOPIC": topic,
        "RECSTACK_DEAD_LETTER_TOPIC": f"{topic}.dlq",
        "RECSTACK_METRICS_PORT": str(port),
        "RECSTACK_REDIS_PREFIX": f"bench-e-{uuid.uuid4().hex[:6]}:",
        "RECSTACK_STREAM_GROUP": f"bench-{uuid.uuid4().hex[:8]}",
        "RECSTACK_STREAM_BATCH": str(batch),
        "RECSTACK_LOG_LEVEL": "warning",
    }
    with tempfile.TemporaryFile() as out:
        t_start = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.feature_stream"], cwd=REPO, env=env, stdout=out, stderr=out
        )
        try:
            asyncio.run(_produce(bootstrap, topic, [new_event("bench-warmup", "view", "i0")]))
            _wait(lambda: _events_done(_metrics(port)) >= 1, 60, "the worker to start", proc)
            startup_s = time.monotonic() - t_start
            t0 = time.monotonic()
            asyncio.run(_produce(bootstrap, topic, events))
            produced_s = time.monotonic() - t0
            _wait(lambda: _events_done(_metrics(port)) >= len(events) + 1, timeout, "all events", proc)
            drained_s = time.monotonic() - t0
            text = _metrics(port)
            paced = events[: min(len(events), 1000)]
            asyncio.run(_produce_paced(bootstrap, topic, paced, PACED_RATE))
            _wait(
                lambda: _events_done(_metrics(port)) >= len(events) + len(paced) + 1, 60, "paced events", proc
            )
            paced_text = _metrics(port)
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
    return {
        "events": len(events),
        "batch_size": batch,
        "partitions": partitions,
        "worker_startup_s": round(startup_s, 2),
        "produce_s": round(produced_s, 3),
        "drain_s": round(drained_s, 3),
        "events_per_s": round(len(events) / drained_s, 1),
        "event_to_feature_p50_s_le": histogram_quantile(
            text, "recstack_stream_event_to_feature_seconds", 0.5
        ),
        "event_to_feature_p99_s_le": histogram_quantile(
            text, "recstack_stream_event_to_feature_seconds", 0.99
        ),
        "batch_p50_s_le": histogram_quantile(text, "recstack_stream_batch_seconds", 0.5),
        "paced_rate_per_s": PACED_RATE,
        "paced_event_to_feature_p50_s_le": histogram_quantile(paced_text, E2F, 0.5, before=text),
        "paced_event_to_feature_p99_s_le": histogram_quantile(paced_text, E2F, 0.99, before=text),
        "mean_batch_size": round(
            _sample(text, "recstack_stream_batch_size_sum")
            / max(1.0, _sample(text, "recstack_stream_batch_size_count")),
            1,
        ),
    }


@contextlib.contextmanager
def _services(redis_url: str | None, bootstrap: str | None) -> Iterator[tuple[str, str]]:
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        if bootstrap is None:
            bootstrap = stack.enter_context(EmbeddedKafka()).bootstrap
        yield redis_url, bootstrap


def run_stream_bench(
    events: int = 20_000,
    batch: int = 500,
    data_spec: str = "synthetic",
    redis_url: str | None = None,
    bootstrap: str | None = None,
    end_to_end: bool = True,
) -> dict[str, Any]:
    """Both benchmarks; returns a JSON-ready dict. redis_url/bootstrap None: embedded servers."""
    if events < 1 or batch < 1:
        raise ValueError(f"events and batch must be >= 1, got events={events} batch={batch}")
    sample = bench_events(events, data_spec)
    with _services(redis_url, bootstrap) as (r_url, k_boot):
        result: dict[str, Any] = {
            "benchmark": "stream",
            "data": data_spec,
            "cpus": os.cpu_count(),
            "writer": asyncio.run(bench_writer(r_url, sample, batch)),
        }
        if end_to_end:
            fresh = bench_events(events, data_spec)  # new event ids and timestamps
            result["end_to_end"] = bench_end_to_end(r_url, k_boot, fresh, batch)
    return result
