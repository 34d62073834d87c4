"""The embedded Redis and Kafka (Tansu) processes and the shared fixtures, against the real binaries."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable

import psutil
import pytest
import redis

from recstack.devstack.embedded import EmbeddedError, EmbeddedKafka, EmbeddedRedis, free_port
from recstack.events.topics import TopicError, ensure_topics

pytestmark = pytest.mark.integration


def test_embedded_redis_starts_answers_and_stops() -> None:
    with EmbeddedRedis() as server:
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.set("k", "v")
        assert client.get("k") == b"v"
        assert client.config_get("save") == {"save": ""}
        client.close()
        pid = server.process.pid  # type: ignore[union-attr]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_embedded_redis_refuses_busy_port() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(EmbeddedError, match=f"port 127.0.0.1:{port} is already in use"):
            EmbeddedRedis(port=port).start()


def test_embedded_kafka_topics_produce_consume() -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    with EmbeddedKafka() as kafka:
        topics = {"user-events": 4, "user-events.dlq": 1}
        assert sorted(ensure_topics(kafka.bootstrap, topics)) == ["user-events", "user-events.dlq"]
        assert ensure_topics(kafka.bootstrap, topics) == []

        async def roundtrip() -> list[bytes]:
            producer = AIOKafkaProducer(bootstrap_servers=kafka.bootstrap)
            await producer.start()
            try:
                for i in range(3):
                    await producer.send_and_wait("user-events.dlq", f"m{i}".encode(), key=b"u1")
            finally:
                await producer.stop()
            consumer = AIOKafkaConsumer(
                "user-events.dlq",
                bootstrap_servers=kafka.bootstrap,
                auto_offset_reset="earliest",
                group_id=f"g-{uuid.uuid4().hex[:6]}",
            )
            await consumer.start()
            try:
                return [(await asyncio.wait_for(consumer.getone(), 30)).value for _ in range(3)]
            finally:
                await consumer.stop()

        assert asyncio.run(roundtrip()) == [b"m0", b"m1", b"m2"]
        pid = kafka.process.pid  # type: ignore[union-attr]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE


def test_ensure_topics_on_unreachable_broker_is_clear() -> None:
    port = free_port()
    with pytest.raises(TopicError, match=f"127.0.0.1:{port}.*KAFKA_BOOTSTRAP_SERVERS"):
        ensure_topics(f"127.0.0.1:{port}", {"x": 1}, timeout=2.0)


def test_fixtures_give_isolated_redis_and_fresh_topics(
    redis_url: str, kafka_broker: str, kafka_topic: Callable[..., str]
) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.dbsize() == 0
    client.set("left-over", "1")
    client.close()
    first, second = kafka_topic(partitions=2), kafka_topic()
    assert first != second
    assert ensure_topics(kafka_broker, {first: 2, second: 1}) == []


def test_redis_url_fixture_flushed_again(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    assert client.get("left-over") is None
    client.close()
