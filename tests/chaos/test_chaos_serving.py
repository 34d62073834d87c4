"""Chaos: the five services as real processes under a steady Recommend load, while one thing fails.

- each stage (retrieval, ranking, rerank, bandit) is SIGKILLed and restarted after 1 s (what
  `recstack up`'s supervisor does): no call fails, replies degrade meanwhile, the stage is back in
  non-degraded replies after its restart (time reported);
- Redis is down 10 s: no call fails;
- the Kafka broker is down 10 s: no call fails, impressions wait or are counted as failed/dropped,
  and are published again once it is back;
- two users send the same x-request-id: their replies and impressions carry distinct ids.

Real redis-server and Tansu of their own (so they can be stopped), a small trained bundle."""

from __future__ import annotations

import json
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import redis

from recstack.devstack.embedded import EmbeddedKafka, EmbeddedRedis
from recstack.events.schema import parse_event
from recstack.events.topics import ensure_topics
from recstack.features.keys import Keys
from recstack.metrics_text import sample
from recstack.v1 import gateway_pb2, gateway_pb2_grpc
from tests.chaos.support import Load, report
from tests.integration.procs import (
    DOWNSTREAM,
    Service,
    metrics,
    service_stack,
    start_all,
    stop_all,
    wait_serving,
)

pytestmark = [pytest.mark.integration, pytest.mark.chaos]

RESTART_AFTER_S = 1.0  # the supervisor's first restart backoff
OUTAGE_S = 10.0


@pytest.fixture(scope="module")
def infra(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, object]]:
    logs = tmp_path_factory.mktemp("chaos-infra")
    redis_server = EmbeddedRedis(log_dir=logs).start()
    kafka = EmbeddedKafka(log_dir=logs).start()
    try:
        yield {"redis": redis_server, "kafka": kafka, "logs": logs}
    finally:
        kafka.stop()
        redis_server.stop()


@pytest.fixture(scope="module")
def stack(
    small_bundle: Path, infra: dict[str, object], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Service]]:
    redis_server, kafka = infra["redis"], infra["kafka"]
    assert isinstance(redis_server, EmbeddedRedis) and isinstance(kafka, EmbeddedKafka)
    services = service_stack(small_bundle, redis_server.url, tmp_path_factory.mktemp("chaos-logs"), 1.0)
    gw = services["gateway"].env
    gw["KAFKA_BOOTSTRAP_SERVERS"] = kafka.bootstrap
    gw["RECSTACK_EVENTS_TOPIC"] = f"impressions-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka.bootstrap, {gw["RECSTACK_EVENTS_TOPIC"]: 1})
    try:
        start_all(services.values())
        yield services
    finally:
        stop_all(services.values())


@pytest.fixture(scope="module")
def users(small_bundle: Path, infra: dict[str, object]) -> list[str]:
    """40 users of the bundle, each with three recent items in Redis (every stage runs)."""
    version = (small_bundle / "CURRENT").read_text().strip()
    ids = [str(u) for u in json.loads((small_bundle / version / "users.json").read_text())["user_ids"][:40]]
    items = [str(i) for i in json.loads((small_bundle / version / "catalog.json").read_text())["item_ids"]]
    seed_recent(infra, ids, items)
    return ids


def seed_recent(infra: dict[str, object], ids: list[str], items: list[str]) -> None:
    server = infra["redis"]
    assert isinstance(server, EmbeddedRedis)
    client = redis.Redis.from_url(server.url)
    keys = Keys()
    for n, user in enumerate(ids):
        client.delete(keys.recent_items(user))
        client.rpush(keys.recent_items(user), *items[n : n + 3])
    client.close()


def gateway_address(stack: dict[str, Service]) -> str:
    return f"127.0.0.1:{stack['gateway'].port}"


def impressions(stack: dict[str, Service], outcome: str) -> float:
    return sample(metrics(stack["gateway"]), "recstack_gateway_impressions_total", outcome=outcome) or 0.0


@pytest.mark.parametrize("stage", list(DOWNSTREAM))
def test_a_killed_stage_fails_no_call_and_is_back_after_its_restart(
    stack: dict[str, Service], users: list[str], stage: str
) -> None:
    service = stack[stage]
    with Load(gateway_address(stack), users) as load:
        time.sleep(2.0)
        before = load.summary(load.mark() - 2.0)
        assert before["calls"] and not before["failed"], before
        start = load.mark()
        assert service.proc is not None
        service.proc.send_signal(signal.SIGKILL)
        service.proc.wait(10)
        time.sleep(RESTART_AFTER_S)
        restarted = load.mark()
        service.start()
        wait_serving(service)
        serving_s = round(load.mark() - restarted, 3)
        back_s = load.first_healthy_after(restarted, stage)
        time.sleep(1.0)
        during = load.summary(start)
    figures = report(
        f"kill {stage}",
        **during,
        serving_after_start_s=serving_s,
        back_in_replies_after_start_s=back_s,
    )
    assert not figures["failed"], figures
    assert back_s is not None, f"{stage} not back in non-degraded replies within 60 s of its restart"


def test_redis_down_fails_no_call(
    stack: dict[str, Service], users: list[str], infra: dict[str, object]
) -> None:
    server = infra["redis"]
    assert isinstance(server, EmbeddedRedis)
    with Load(gateway_address(stack), users) as load:
        time.sleep(1.0)
        start = load.mark()
        server.stop()
        time.sleep(OUTAGE_S)
        infra["redis"] = server = EmbeddedRedis(port=server.port, log_dir=infra["logs"]).start()
        back = load.mark()
        version = (Path(stack["gateway"].env["RECSTACK_ARTIFACTS"]) / "CURRENT").read_text().strip()
        bundle = Path(stack["gateway"].env["RECSTACK_ARTIFACTS"]) / version
        seed_recent(
            infra, users, [str(i) for i in json.loads((bundle / "catalog.json").read_text())["item_ids"]]
        )
        recovered_s = load.first_healthy_after(back, "features")
        time.sleep(1.0)
        outage = load.summary(start, back)
        after = load.summary(back)
    figures = report(
        "redis down 10 s",
        outage=outage,
        after=after,
        features_back_after_s=recovered_s,
    )
    assert not outage["failed"] and not after["failed"], figures
    assert recovered_s is not None


def test_broker_down_fails_no_call_and_impressions_resume(
    stack: dict[str, Service], users: list[str], infra: dict[str, object]
) -> None:
    kafka = infra["kafka"]
    assert isinstance(kafka, EmbeddedKafka)
    topic = stack["gateway"].env["RECSTACK_EVENTS_TOPIC"]
    with Load(gateway_address(stack), users) as load:
        time.sleep(1.0)
        sent_before = impressions(stack, "sent")
        start = load.mark()
        kafka.stop()
        time.sleep(OUTAGE_S)
        # Tansu's memory storage starts empty: the topic is declared again, as a persistent broker keeps it
        infra["kafka"] = kafka = EmbeddedKafka(port=kafka.port, log_dir=infra["logs"]).start()
        ensure_topics(kafka.bootstrap, {topic: 1})
        back = load.mark()
        deadline = time.monotonic() + 60
        sent_at_return = impressions(stack, "sent")
        while impressions(stack, "sent") <= sent_at_return and time.monotonic() < deadline:
            time.sleep(0.2)
        resumed_s = round(load.mark() - back, 3)
        outage = load.summary(start, back)
        after = load.summary(back)
    figures = report(
        "kafka broker down 10 s",
        outage=outage,
        after=after,
        impressions_sent_before=sent_before,
        impressions_failed=impressions(stack, "failed"),
        impressions_dropped=impressions(stack, "dropped"),
        impressions_resumed_after_s=resumed_s,
    )
    assert not outage["failed"] and not after["failed"], figures
    assert impressions(stack, "sent") > sent_at_return, "no impression published after the broker returned"


async def test_a_stale_request_id_collision_joins_nothing(
    stack: dict[str, Service], users: list[str], infra: dict[str, object]
) -> None:
    from aiokafka import AIOKafkaConsumer

    kafka = infra["kafka"]
    assert isinstance(kafka, EmbeddedKafka)
    shared = ("x-request-id", "same-id-from-two-callers")
    async with grpc.aio.insecure_channel(gateway_address(stack)) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        replies = [
            await stub.Recommend(gateway_pb2.RecommendRequest(user_id=u, k=5), metadata=[shared], timeout=10)
            for u in users[:2]
        ]
    ids = [r.request_id for r in replies]
    assert len(set(ids)) == 2 and shared[1] not in ids
    consumer = AIOKafkaConsumer(
        stack["gateway"].env["RECSTACK_EVENTS_TOPIC"],
        bootstrap_servers=kafka.bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    found: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 30
        while len(found) < 2 and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=1000)).values():
                for record in records:
                    event = parse_event(record.value)
                    if event.request_id in ids:
                        found[event.request_id] = event.user_id
    finally:
        await consumer.stop()
    report("request-id collision", replies=len(ids), distinct_ids=len(set(ids)), impressions=found)
    assert found == {ids[0]: users[0], ids[1]: users[1]}
