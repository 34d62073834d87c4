"""Feature-stream benchmark: the raw ceiling against the Faust app, on the same broker and Redis.

Both consumers are child processes of the benchmark (one process tree) and run one after the other,
never together, so they do not compete for the CPUs:

* raw: ``python -m recstack.bench.stream_raw``, a plain aiokafka consumer loop around the same
  BatchProcessor and FeatureWriter Lua batch (validation, one script call per batch, commits after
  the writes);
* faust: ``python -m services.feature_stream``, the production worker.

Per consumer, on fresh 4-partition topics:

1. throughput: ``events`` events are produced first (a backlog), then the consumer starts; events/s
   is measured from its first written event to the last (startup and group join excluded; the end
   is seen in Redis, the last event of every partition, not by scraping the consumer). ``repeats``
   runs alternate raw, faust, raw, faust...; each mode reports its best run (all are listed);
2. latency: a fresh consumer is started and warmed up, then events are offered at a fixed ``rate``
   (default 2,000 events/s) for ``duration_s`` seconds, each stamped with the wall clock right before
   it is sent; event-to-feature latency (event timestamp -> Redis write, measured by the consumer) is
   read from its ``recstack_stream_event_to_feature_seconds`` histogram (quantiles interpolated within
   buckets, as Prometheus' histogram_quantile does).

Top-level JSON: ``raw_events_per_s``, ``faust_events_per_s``, ``ratio`` (faust / raw),
``p50_event_to_feature_ms`` and ``p99_event_to_feature_ms`` (Faust, at the offered rate), the load
average before and after, and the details of every phase under ``raw``, ``faust`` and ``writer``.
Uses an embedded redis-server and Tansu unless REDIS_URL / KAFKA_BOOTSTRAP_SERVERS are given.
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
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import IO, Any

import numpy as np

from recstack import redis_client
from recstack.data import load_dataset
from recstack.devstack.embedded import EmbeddedKafka, EmbeddedRedis, free_port
from recstack.events.kafka_security import aiokafka_kwargs
from recstack.events.producer import events_from_interactions
from recstack.events.schema import UserEvent, event_to_json, new_event
from recstack.events.topics import ensure_topics
from recstack.exploration.rewards import LinearRewardWriter
from recstack.features.keys import Keys
from recstack.features.writer import FeatureWriter
from recstack.metrics_text import sample, samples, scrape

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
E2F = "recstack_stream_event_to_feature_seconds"
MODULES = {"raw": "recstack.bench.stream_raw", "faust": "services.feature_stream"}
DEFAULT_RATE = 2000.0
DEFAULT_DURATION_S = 10.0
PARTITIONS = 4


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


def fresh(events: list[UserEvent]) -> list[UserEvent]:
    """The same events with new event ids (each phase writes every event, none is a duplicate)."""
    return [replace(e, event_id=uuid.uuid4().hex) for e in events]


async def bench_writer(redis_url: str, events: list[UserEvent], batch: int) -> dict[str, float]:
    """Apply events in batches with one FeatureWriter; events/s and batch latency percentiles."""
    client = redis_client.async_redis(redis_url, decode_responses=True)
    try:
        keys = Keys(f"bench-w-{uuid.uuid4().hex[:6]}:")  # the stream's writer: bandit rewards included
        writer = FeatureWriter(client, keys=keys, bandit_rewards=LinearRewardWriter(client, keys.prefix))
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


# --- Prometheus text ------------------------------------------------------------------------------


def _events_done(text: str) -> float:
    return sum(value for _, value in samples(text, "recstack_stream_events_total"))


def _sample(text: str, name: str) -> float:
    return sample(text, name) or 0.0


def _buckets(text: str, name: str) -> list[tuple[float, float]]:
    return [(float(labels["le"]), value) for labels, value in samples(text, f"{name}_bucket")]


def histogram_quantile(text: str, name: str, q: float, before: str = "") -> float:
    """Quantile q of a Prometheus histogram, linearly interpolated inside its bucket (nan when empty;
    the last finite bound when it falls in +Inf). before: an earlier scrape to subtract."""
    buckets = _buckets(text, name)
    if before:
        earlier = dict(_buckets(before, name))
        buckets = [(le, count - earlier.get(le, 0.0)) for le, count in buckets]
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    rank = q * buckets[-1][1]
    lower, below = 0.0, 0.0
    for le, count in buckets:
        if count >= rank:
            if le == float("inf"):
                return lower
            inside = count - below
            return lower + (le - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = le, count
    return lower


# --- processes ------------------------------------------------------------------------------------


class Consumer:
    """One consumer child process (raw or faust) with its own metrics port, group and key prefix."""

    def __init__(self, mode: str, redis_url: str, bootstrap: str, topic: str, batch: int, out: IO) -> None:
        self.mode = mode
        self.port = free_port()
        env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "REDIS_URL": redis_url,
            "RECSTACK_EVENTS_TOPIC": topic,
            "RECSTACK_DEAD_LETTER_TOPIC": f"{topic}.dlq",
            "RECSTACK_METRICS_PORT": str(self.port),
            "RECSTACK_REDIS_PREFIX": f"bench-{mode}-{uuid.uuid4().hex[:6]}:",
            "RECSTACK_STREAM_GROUP": f"bench-{mode}-{uuid.uuid4().hex[:8]}",
            "RECSTACK_STREAM_BATCH": str(batch),
            "RECSTACK_STREAM_SESSION_TIMEOUT_S": "4",  # Tansu holds a join for half of it
            "RECSTACK_LOG_LEVEL": "warning",
        }
        self.prefix = env["RECSTACK_REDIS_PREFIX"]
        self._redis = redis_client.sync_redis(redis_url)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", MODULES[mode]], cwd=REPO, env=env, stdout=out, stderr=out
        )
        self.out = out

    def metrics(self) -> str:
        return scrape(self.port)

    def wait(self, predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.02) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.proc.poll() is not None:
                raise BenchError(f"{self.mode} consumer exited with {self.proc.returncode} ({what})")
            if time.monotonic() > deadline:
                raise BenchError(f"{self.mode} consumer: timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    def done(self) -> float:
        return _events_done(self.metrics())

    def applied(self, last: dict[int, tuple[str, str]]) -> bool:
        """True once the last event of every partition is in Redis: a partition is applied in order,
        so everything before it is too. One EXISTS call: no load on the consumer (a /metrics
        scrape costs it ~10 ms of CPU)."""
        keys = [Keys(self.prefix).event_seen(user, event_id) for user, event_id in last.values()]
        return sum(self._redis.exists(key) for key in keys) == len(keys)  # one slot per key

    def close(self) -> None:
        self._redis.close()

    def stop(self) -> None:
        self.close()
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def _topic(bootstrap: str, mode: str, phase: str) -> str:
    topic = f"bench-{mode}-{phase}-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: PARTITIONS, f"{topic}.dlq": 1})
    return topic


async def _produce_backlog(bootstrap: str, topic: str, events: list[UserEvent]) -> dict[int, tuple[str, str]]:
    """Send all events (stamped now) and wait for the acks; returns partition -> (user, event_id) of
    its last event."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **aiokafka_kwargs())
    await producer.start()
    try:
        now = time.time()
        futures = [
            await producer.send(topic, event_to_json(replace(e, timestamp=now)), key=e.user_id.encode())
            for e in events
        ]
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return {m.partition: (e.user_id, e.event_id) for e, m in zip(events, metadata, strict=True)}


async def _produce_paced(
    bootstrap: str, topic: str, events: list[UserEvent], rate: float
) -> tuple[float, dict[int, tuple[str, str]]]:
    """Offer events at ``rate``/s in 5 ms ticks, each stamped just before it is handed to the client
    (so the latency includes producer batching); returns the achieved rate and partition -> last
    event_id."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=1, **aiokafka_kwargs())
    await producer.start()
    try:
        futures = []
        started = time.monotonic()
        sent = 0
        while sent < len(events):
            due = min(len(events), int((time.monotonic() - started) * rate) + 1)
            while sent < due:
                e = events[sent]
                value = event_to_json(replace(e, timestamp=time.time()))
                futures.append(await producer.send(topic, value, key=e.user_id.encode()))
                sent += 1
            await asyncio.sleep(0.005)
        elapsed = time.monotonic() - started
        metadata = await asyncio.gather(*futures)
    finally:
        await producer.stop()
    return len(events) / elapsed, {
        m.partition: (e.user_id, e.event_id) for e, m in zip(events, metadata, strict=True)
    }


def bench_throughput(
    mode: str, redis_url: str, bootstrap: str, events: list[UserEvent], batch: int, out: IO
) -> dict[str, float]:
    """Backlog of events, then the consumer: events/s from its first written batch to the last."""
    topic = _topic(bootstrap, mode, "tput")
    last = asyncio.run(_produce_backlog(bootstrap, topic, events))
    consumer = Consumer(mode, redis_url, bootstrap, topic, batch, out)
    try:
        t_start = time.monotonic()
        consumer.wait(lambda: consumer.done() >= 1, 90, "the first event", interval=0.005)
        t0, first = time.monotonic(), consumer.done()
        consumer.wait(lambda: consumer.applied(last), 300, "the backlog", interval=0.005)
        t1 = time.monotonic()
        text = consumer.metrics()
    finally:
        consumer.stop()
    return {
        "events": len(events),
        "startup_s": round(t0 - t_start, 2),
        "drain_s": round(t1 - t0, 3),
        "events_per_s": round((len(events) - first) / (t1 - t0), 1),
        "mean_batch_size": round(
            _sample(text, "recstack_stream_batch_size_sum")
            / max(1.0, _sample(text, "recstack_stream_batch_size_count")),
            1,
        ),
    }


def bench_latency(
    mode: str,
    redis_url: str,
    bootstrap: str,
    events: list[UserEvent],
    batch: int,
    rate: float,
    out: IO,
) -> dict[str, float]:
    """Warm consumer, events offered at a fixed rate: event-to-feature p50/p99 (ms)."""
    topic = _topic(bootstrap, mode, "lat")
    consumer = Consumer(mode, redis_url, bootstrap, topic, batch, out)
    try:
        warm = [new_event(f"bench-warm-{n}", "view", "i0") for n in range(4 * PARTITIONS)]
        warm_last = asyncio.run(_produce_backlog(bootstrap, topic, warm))
        consumer.wait(lambda: consumer.applied(warm_last), 90, "warm-up events", interval=0.05)
        before = consumer.metrics()
        achieved, last = asyncio.run(_produce_paced(bootstrap, topic, events, rate))
        consumer.wait(lambda: consumer.applied(last), 120, "the paced events", interval=0.05)
        text = consumer.metrics()
    finally:
        consumer.stop()

    def delta(name: str) -> float:
        return _sample(text, name) - _sample(before, name)

    batches, sizes = delta("recstack_stream_batch_size_count"), delta("recstack_stream_batch_size_sum")
    return {
        "offered_rate_per_s": rate,
        "achieved_rate_per_s": round(achieved, 1),
        "events": len(events),
        "p50_event_to_feature_ms": round(1000 * histogram_quantile(text, E2F, 0.5, before), 1),
        "p99_event_to_feature_ms": round(1000 * histogram_quantile(text, E2F, 0.99, before), 1),
        "mean_batch_size": round(sizes / max(1.0, batches), 1),
    }


@contextlib.contextmanager
def _services(redis_url: str | None, bootstrap: str | None) -> Iterator[tuple[str, str]]:
    with contextlib.ExitStack() as stack:
        if redis_url is None:
            redis_url = stack.enter_context(EmbeddedRedis()).url
        if bootstrap is None:
            bootstrap = stack.enter_context(EmbeddedKafka()).bootstrap
        yield redis_url, bootstrap


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def run_stream_bench(
    events: int = 20_000,
    batch: int = 500,
    data_spec: str = "synthetic",
    redis_url: str | None = None,
    bootstrap: str | None = None,
    end_to_end: bool = True,
    rate: float = DEFAULT_RATE,
    duration_s: float = DEFAULT_DURATION_S,
    modes: tuple[str, ...] = ("raw", "faust"),
    repeats: int = 2,
) -> dict[str, Any]:
    """The FeatureWriter micro-benchmark and, with end_to_end, raw vs Faust (module docstring).
    redis_url/bootstrap None: embedded servers. Returns a JSON-ready dict."""
    if events < 1 or batch < 1 or rate <= 0 or duration_s <= 0 or repeats < 1:
        raise ValueError(
            "events, batch, rate, duration and repeats must be > 0, got "
            f"{events=} {batch=} {rate=} {duration_s=} {repeats=}"
        )
    unknown = set(modes) - set(MODULES)
    if unknown:
        raise ValueError(f"unknown modes {sorted(unknown)}; use {sorted(MODULES)}")
    sample = bench_events(max(events, int(rate * duration_s)), data_spec)
    result: dict[str, Any] = {"benchmark": "stream", "data": data_spec, "cpus": os.cpu_count()}
    result["load_avg_before"] = _load()
    with _services(redis_url, bootstrap) as (r_url, k_boot), tempfile.TemporaryFile() as out:
        result["writer"] = asyncio.run(bench_writer(r_url, fresh(sample[:events]), batch))
        try:
            # throughput runs alternate between the modes (raw, faust, raw, faust, ...): on a machine
            # shared with other jobs, each mode's best run is its capacity, and load spikes hit both
            runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in modes}
            for _ in range(repeats if end_to_end else 0):
                for mode in modes:
                    tput = bench_throughput(mode, r_url, k_boot, fresh(sample[:events]), batch, out)
                    runs[mode].append(tput)
            for mode in modes if end_to_end else ():
                paced = fresh(sample[: int(rate * duration_s)])
                best = max(runs[mode], key=lambda run: run["events_per_s"])
                result[mode] = {
                    "throughput": {**best, "runs_events_per_s": [r["events_per_s"] for r in runs[mode]]},
                    "latency": bench_latency(mode, r_url, k_boot, paced, batch, rate, out),
                }
        except BenchError as exc:
            out.seek(0)
            tail = out.read().decode("utf-8", "replace")[-3000:]
            raise BenchError(f"{exc}\nconsumer output:\n{tail}") from exc
    result["load_avg_after"] = _load()
    if "raw" in result and "faust" in result:
        raw_rate = result["raw"]["throughput"]["events_per_s"]
        faust_rate = result["faust"]["throughput"]["events_per_s"]
        result = {
            "raw_events_per_s": raw_rate,
            "faust_events_per_s": faust_rate,
            "ratio": round(faust_rate / raw_rate, 3),
            "p50_event_to_feature_ms": result["faust"]["latency"]["p50_event_to_feature_ms"],
            "p99_event_to_feature_ms": result["faust"]["latency"]["p99_event_to_feature_ms"],
            "offered_rate_per_s": rate,
            **result,
        }
    return result
