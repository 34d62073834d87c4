"""Chaos: the Kafka broker is SIGKILLed for 10 s while a producer sends events and the stream worker
consumes them; once it is back, every event is in Redis once (nothing lost, nothing doubled).

The broker persists its log (Tansu's S3 storage engine against a local moto S3 server), as a real
Kafka cluster does; the worker is restarted if it exits, as `recstack up` or Kubernetes would."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from recstack.devstack.embedded import EmbeddedKafka, free_port
from recstack.events import event_to_json, new_event
from recstack.events.topics import ensure_topics
from recstack.features.keys import Keys
from tests.chaos.support import report
from tests.integration.stream_support import start_worker, stop_worker, worker_env, write_catalog

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

OUTAGE_S = 10.0
EVENTS = 240
WARM_UP = 20  # sent first, to see the stream flowing before the load starts
RATE = 10.0  # events/s: the producer is still sending when the broker dies, while it is away and after


@pytest.fixture
def s3_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A local S3 server (moto) with one bucket; the environment Tansu needs to use it."""
    moto = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "moto_server"
    command = [str(moto)] if moto.exists() else ["moto_server"]
    port = free_port()
    with (tmp_path / "moto.log").open("wb") as log:
        proc = subprocess.Popen([*command, "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(urllib.request.Request(f"{endpoint}/tansu", method="PUT"), timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(f"moto_server did not start: {(tmp_path / 'moto.log').read_text()[-2000:]}")
                time.sleep(0.2)
        yield {
            "AWS_ENDPOINT": endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
    finally:
        proc.terminate()
        proc.wait(10)


def produce_paced(bootstrap: str, topic: str, values: list[tuple[bytes, bytes]], failures: list[str]) -> None:
    """Send at RATE without waiting for acknowledgements; wait for all of them at the end (the
    client buffers and retries while the broker is away); failures collect what was not delivered."""
    from aiokafka import AIOKafkaProducer

    async def run() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", linger_ms=5, request_timeout_ms=90_000
        )
        await producer.start()
        try:
            futures = []
            start = time.monotonic()
            for n, (key, value) in enumerate(values):
                await asyncio.sleep(max(0.0, start + n / RATE - time.monotonic()))
                futures.append(await producer.send(topic, value=value, key=key))
            for result in await asyncio.gather(*futures, return_exceptions=True):
                if isinstance(result, BaseException):
                    failures.append(repr(result))
        finally:
            await producer.stop()

    asyncio.run(run())


def test_broker_down_10s_with_producer_and_stream_running_loses_nothing(
    s3_env: dict[str, str], redis_url: str, tmp_path: Path
) -> None:
    broker = EmbeddedKafka(log_dir=tmp_path, storage="s3://tansu/", env=s3_env).start()
    events_topic, dlq = f"events-{uuid.uuid4().hex[:8]}", f"dlq-{uuid.uuid4().hex[:8]}"
    ensure_topics(broker.bootstrap, {events_topic: 2, dlq: 1})
    users = [f"u{n}" for n in range(20)]
    events = [new_event(users[n % len(users)], "view", f"i{n % 37}") for n in range(EVENTS)]
    values = [(e.user_id.encode(), event_to_json(e)) for e in events]
    env = worker_env(
        broker.bootstrap,
        events_topic,
        dlq,
        redis_url,
        write_catalog(tmp_path / "artifacts", {"i1": ["Action"]}),
        free_port(),
        RECSTACK_STREAM_COMMIT_INTERVAL_S="0.5",
    )
    keys, log = Keys(env["RECSTACK_REDIS_PREFIX"]), tmp_path / "worker.log"
    r = redis.Redis.from_url(redis_url, decode_responses=True)

    def applied() -> int:
        return sum(int(r.hget(keys.user_stats(u), "view") or 0) for u in users)

    workers = [start_worker(env, log)]
    failures: list[str] = []
    producer = threading.Thread(
        target=produce_paced, args=(broker.bootstrap, events_topic, values[WARM_UP:], failures), daemon=True
    )
    try:
        produce_paced(broker.bootstrap, events_topic, values[:WARM_UP], failures)
        deadline = time.monotonic() + 120
        while applied() < WARM_UP and time.monotonic() < deadline:  # the stream is flowing
            time.sleep(0.05)
        assert applied() == WARM_UP, log.read_text()[-3000:]
        producer.start()
        time.sleep(3.0)
        port = broker.port
        assert broker.process is not None and broker.process.popen is not None
        broker.process.popen.kill()  # SIGKILL: no clean shutdown
        broker.process.popen.wait(10)
        broker.process = None
        time.sleep(OUTAGE_S)
        broker = EmbeddedKafka(port=port, log_dir=tmp_path, storage="s3://tansu/", env=s3_env).start()
        back = time.monotonic()
        restarts = 0
        # Tansu's S3 engine serves a fetch per stored batch (one per event here): the catch-up after
        # the outage runs at a few events/s, so the deadline is generous
        deadline = time.monotonic() + 240
        while applied() < EVENTS and time.monotonic() < deadline:
            if workers[-1].poll() is not None:  # a supervisor restarts a worker that gave up
                restarts += 1
                workers.append(start_worker(env, log))
            time.sleep(0.2)
        caught_up_s = round(time.monotonic() - back, 1)
        producer.join(120)
        time.sleep(2.0)  # anything replayed late would show up as doubled
    finally:
        for proc in workers:
            stop_worker(proc)
        broker.stop()
    expected = Counter(e.user_id for e in events)
    got = {u: int(r.hget(keys.user_stats(u), "view") or 0) for u in users}
    lost = sum(max(0, expected[u] - got[u]) for u in users)
    doubled = sum(max(0, got[u] - expected[u]) for u in users)
    report(
        "kafka broker down 10 s under a producer and the stream",
        events=EVENTS,
        producer_failures=len(failures),
        events_lost=lost,
        events_doubled=doubled,
        worker_restarts=restarts,
        caught_up_after_return_s=caught_up_s,
    )
    r.close()
    assert not failures, failures[:3]
    assert lost == 0 and doubled == 0, (lost, doubled, log.read_text()[-3000:])
