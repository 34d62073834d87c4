"""Impression events: fire-and-forget, Kafka failures counted and never raised."""

from __future__ import annotations

import asyncio
import json
import logging

import numpy as np
from prometheus_client import REGISTRY

from recstack.events.schema import UserEvent
from recstack.logging import JsonFormatter, reset_request_id, set_request_id
from recstack.serving.chain import RecommendState
from services.gateway.servicer import ImpressionPublisher


class FakeProducer:
    def __init__(self, fail_start: bool = False, delay: float = 0.0) -> None:
        self.fail_start = fail_start
        self.delay = delay
        self.starts = 0
        self.sent: list[UserEvent] = []
        self.stopped = False

    async def start(self) -> None:
        self.starts += 1
        if self.fail_start:
            raise ConnectionError("no broker")

    async def send(self, event: UserEvent) -> None:
        await asyncio.sleep(self.delay)
        self.sent.append(event)

    async def stop(self) -> None:
        self.stopped = True


def state() -> RecommendState:
    s = RecommendState(request_id="rid-1", user_id="u1", k=3, variant="control", experiment_id="exp")
    s.candidates = ["a", "b", "c"]
    s.scores = np.array([3.0, 2.0, 1.0])
    s.propensities = np.array([1.0, 1.0, 0.25])
    s.model_versions = {"ranking": "v1"}
    return s


def counter(outcome: str) -> float:
    return REGISTRY.get_sample_value("recstack_gateway_impressions_total", {"outcome": outcome}) or 0.0


async def test_publish_does_not_block_and_sends_the_slate() -> None:
    producer = FakeProducer(delay=0.2)
    pub = ImpressionPublisher(producer)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    pub.publish(state())
    assert loop.time() - t0 < 0.05
    await pub.close()
    (event,) = producer.sent
    assert event.event_type == "impression" and event.request_id == "rid-1"
    assert event.items == ("a", "b", "c") and event.positions == (0, 1, 2)
    assert event.propensities == (1.0, 1.0, 0.25)
    assert event.variant == "control" and event.model_versions == {"ranking": "v1"}
    assert producer.stopped


async def test_kafka_down_is_counted_and_retried_later() -> None:
    producer = FakeProducer(fail_start=True)
    pub = ImpressionPublisher(producer, retry_s=60)  # type: ignore[arg-type]
    before = counter("failed")
    pub.publish(state())
    pub.publish(state())
    await pub.close()
    assert counter("failed") - before == 2
    assert producer.starts == 1  # the second publish waits for the retry interval
    assert producer.sent == []


async def test_no_producer_means_disabled() -> None:
    before = counter("disabled")
    ImpressionPublisher(None).publish(state())
    assert counter("disabled") - before == 1


def test_json_log_lines_carry_the_request_id() -> None:
    record = logging.LogRecord("recstack.x", logging.WARNING, __file__, 1, "hello %s", ("world",), None)
    token = set_request_id("rid-9")
    try:
        line = JsonFormatter().format(record)
    finally:
        reset_request_id(token)
    obj = json.loads(line)
    assert obj["severity"] == "WARNING" and obj["logger"] == "recstack.x"
    assert obj["message"] == "hello world" and obj["request_id"] == "rid-9"


async def test_a_full_buffer_drops_and_counts_without_blocking() -> None:
    producer = FakeProducer(delay=0.3)  # a broker that does not acknowledge for a while
    pub = ImpressionPublisher(producer, max_pending=3)  # type: ignore[arg-type]
    dropped, sent = counter("dropped"), counter("sent")
    for _ in range(5):
        pub.publish(state())
    assert REGISTRY.get_sample_value("recstack_gateway_impressions_pending") == 3
    assert counter("dropped") - dropped == 2
    await asyncio.wait(set(pub._tasks))  # the broker acknowledges
    assert counter("sent") - sent == 3 and len(producer.sent) == 3
    assert REGISTRY.get_sample_value("recstack_gateway_impressions_pending") == 0
    pub.publish(state())  # room again
    await pub.close()
    assert counter("sent") - sent == 4 and counter("dropped") - dropped == 2
