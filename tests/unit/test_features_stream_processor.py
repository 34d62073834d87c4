"""BatchProcessor: dead letters with reasons, Redis retry with backoff, settings from the environment."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import OutOfMemoryError, ResponseError

from recstack.events import UserEvent, event_to_json, new_event
from recstack.features.writer import ApplyResult
from services.feature_stream.processor import BatchProcessor, LagTracker, RawMessage, dead_letter_headers
from services.feature_stream.settings import StreamSettings


class FlakyWriter:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.batches: list[list[UserEvent]] = []

    async def apply(self, events: Sequence[UserEvent], sources=None) -> ApplyResult:  # noqa: ANN001
        if self.failures:
            self.failures -= 1
            raise RedisConnectionError("connection refused")
        self.batches.append(list(events))
        return ApplyResult(len(events), 0, 0)


def msg(value: bytes, offset: int) -> RawMessage:
    return RawMessage(value=value, key=b"u1", topic="user-events", partition=2, offset=offset)


async def test_invalid_messages_are_dead_lettered_and_valid_ones_applied() -> None:
    dead: list[tuple[RawMessage, str, str]] = []

    async def sink(message: RawMessage, reason: str, detail: str) -> None:
        dead.append((message, reason, detail))

    writer = FlakyWriter(failures=0)
    good = new_event("u1", "click", "i1")
    processor = BatchProcessor(writer, sink)  # type: ignore[arg-type]
    outcome = await processor.process([msg(event_to_json(good), 7), msg(b"{oops", 8)])
    assert (outcome.valid, outcome.invalid, outcome.applied) == (1, 1, 1)
    assert writer.batches == [[good]]
    message, reason, detail = dead[0]
    assert message.offset == 8 and reason == "malformed_json" and "JSON" in detail
    headers = dead_letter_headers(message, reason, detail)
    assert headers["recstack-reason"] == b"malformed_json"
    assert headers["recstack-source-partition"] == b"2" and headers["recstack-source-offset"] == b"8"


async def test_redis_failures_are_retried_until_success() -> None:
    async def sink(message: RawMessage, reason: str, detail: str) -> None:
        raise AssertionError("no dead letters expected")

    writer = FlakyWriter(failures=3)
    processor = BatchProcessor(writer, sink, initial_backoff_s=0.001, max_backoff_s=0.002)  # type: ignore[arg-type]
    outcome = await processor.process([msg(event_to_json(new_event("u1", "view", "i1")), 1)])
    assert outcome.applied == 1 and writer.failures == 0 and len(writer.batches) == 1


def test_settings_name_the_missing_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("REDIS_URL", raising=False)
    with pytest.raises(Exception, match="KAFKA_BOOTSTRAP_SERVERS") as info:
        StreamSettings()
    assert "REDIS_URL" in str(info.value)


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "a:1, b:2")
    monkeypatch.setenv("REDIS_URL", "redis://x:1/0")
    monkeypatch.setenv("RECSTACK_EVENTS_TOPIC", "ev")
    monkeypatch.setenv("RECSTACK_METRICS_PORT", "0")
    settings = StreamSettings()
    assert settings.kafka_urls() == ["kafka://a:1", "kafka://b:2"]
    assert (settings.events_topic, settings.dead_letter_topic, settings.metrics_port) == (
        "ev",
        "user-events.dlq",
        0,
    )


class PartlyFailingWriter:
    async def apply(self, events: Sequence[UserEvent], sources=None) -> ApplyResult:  # noqa: ANN001
        return ApplyResult(len(events) - 1, 0, 0, failed=((1, "WRONGTYPE Operation against a key"),))


async def test_events_failing_in_redis_are_dead_lettered() -> None:
    dead: list[tuple[int, str]] = []

    async def sink(message: RawMessage, reason: str, detail: str) -> None:
        dead.append((message.offset, reason))

    processor = BatchProcessor(PartlyFailingWriter(), sink)  # type: ignore[arg-type]
    values = [event_to_json(new_event("u1", "view", f"i{n}")) for n in range(3)]
    outcome = await processor.process([msg(b"{", 10)] + [msg(v, 11 + n) for n, v in enumerate(values)])
    # batch index 1 of the valid events is offset 12 (offset 10 was invalid JSON)
    assert dead == [(10, "malformed_json"), (12, "write_failed")]
    assert outcome.invalid == 2 and outcome.applied == 2


class PoisonWriter:
    """Rejects any batch holding a 'poison' event as a whole, like a script error would."""

    def __init__(self) -> None:
        self.applied: list[str] = []

    async def apply(self, events: Sequence[UserEvent], sources=None) -> ApplyResult:  # noqa: ANN001
        if any(e.user_id == "poison" for e in events):
            raise ResponseError("Error running script: bad payload")
        self.applied.extend(e.event_id for e in events)
        return ApplyResult(len(events), 0, 0)


async def test_a_batch_rejected_as_a_whole_is_bisected_to_the_failing_events() -> None:
    dead: list[tuple[int, str, str]] = []

    async def sink(message: RawMessage, reason: str, detail: str) -> None:
        dead.append((message.offset, reason, detail))

    events = [new_event("poison" if n in (2, 5) else "u", "view", f"i{n}") for n in range(8)]
    writer = PoisonWriter()
    processor = BatchProcessor(writer, sink)  # type: ignore[arg-type]
    outcome = await processor.process([msg(event_to_json(e), 100 + n) for n, e in enumerate(events)])
    # every other event applied, in order; the two poison events dead-lettered with their offsets
    assert writer.applied == [e.event_id for n, e in enumerate(events) if n not in (2, 5)]
    assert [(o, r) for o, r, _ in dead] == [(102, "write_failed"), (105, "write_failed")]
    assert "ResponseError" in dead[0][2]
    assert (outcome.applied, outcome.invalid) == (6, 2)


def test_lag_tracker_reports_assigned_partitions_and_drops_revoked(monkeypatch: pytest.MonkeyPatch) -> None:
    from prometheus_client import REGISTRY

    def lag(partition: int) -> float | None:
        labels = {"topic": "ev", "partition": str(partition)}
        return REGISTRY.get_sample_value("recstack_stream_consumer_lag", labels)

    tracker = LagTracker()
    tracker.processed([RawMessage(b"", None, "ev", 0, 9), RawMessage(b"", None, "ev", 0, 4)])
    assert tracker.unknown([("ev", 0), ("ev", 1)]) == [("ev", 1)]
    lags = tracker.update([("ev", 0), ("ev", 1)], {("ev", 0): 15, ("ev", 1): 7}, {("ev", 1): 7})
    assert lags == {("ev", 0): 5, ("ev", 1): 0}  # next offset to process on p0 is 10
    assert (lag(0), lag(1)) == (5.0, 0.0)
    assert REGISTRY.get_sample_value("recstack_stream_assigned_partitions") == 2.0
    tracker.update([("ev", 1)], {("ev", 1): 9}, {("ev", 1): 7})  # p0 revoked
    assert (lag(0), lag(1)) == (None, 2.0)
    assert tracker.unknown([("ev", 0)]) == [("ev", 0)]


class OutOfMemoryWriter:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.applied = 0

    async def apply(self, events: Sequence[UserEvent], sources=None) -> ApplyResult:  # noqa: ANN001
        if self.failures:
            self.failures -= 1
            # what redis-py raises for the reply "OOM command not allowed when used memory > ..."
            raise OutOfMemoryError("command not allowed when used memory > 'maxmemory'.")
        self.applied += len(events)
        return ApplyResult(len(events), 0, 0)


async def test_redis_refusing_writes_is_retried_not_dead_lettered() -> None:
    async def sink(message: RawMessage, reason: str, detail: str) -> None:
        raise AssertionError("an OOM Redis must not dead-letter the events")

    writer = OutOfMemoryWriter(failures=2)
    processor = BatchProcessor(writer, sink, initial_backoff_s=0.001, max_backoff_s=0.002)  # type: ignore[arg-type]
    values = [event_to_json(new_event("u1", "view", f"i{n}")) for n in range(3)]
    outcome = await processor.process([msg(v, n) for n, v in enumerate(values)])
    assert outcome.applied == 3 and writer.failures == 0 and writer.applied == 3


def test_dead_letter_record_truncates_what_cannot_be_sent_whole() -> None:
    import hashlib

    from services.feature_stream.processor import DLQ_MAX_VALUE_BYTES, dead_letter_record

    small = RawMessage(b"{bad json", b"k", "t", 0, 7)
    key, value, headers = dead_letter_record(small, "malformed_json", "Expecting value")
    assert (key, value) == (b"k", b"{bad json") and "recstack-truncated" not in headers
    assert headers["recstack-original-size"] == b"9"
    big = RawMessage(b"x" * (DLQ_MAX_VALUE_BYTES + 10), b"k" * 5000, "t", 2, 9)
    key, value, headers = dead_letter_record(big, "too_large", "event is big")
    assert len(value) == DLQ_MAX_VALUE_BYTES and len(key) == 1024 and headers["recstack-truncated"] == b"1"
    assert headers["recstack-original-sha256"] == hashlib.sha256(big.value).hexdigest().encode()
    assert headers["recstack-source-offset"] == b"9" and headers["recstack-source-partition"] == b"2"
