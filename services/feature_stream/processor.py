"""One batch of raw Kafka messages -> validated events -> Redis (no Faust here, so it unit-tests plainly).

Invalid messages go to the dead-letter sink with their original bytes, the reason code and the
source topic/partition/offset; valid ones are applied with one FeatureWriter call. A Redis failure
is retried with exponential backoff (0.1 s doubling to max_backoff_s) until it succeeds or the task
is cancelled, so the caller acknowledges (commits) the batch only after the writes landed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from recstack.events.schema import InvalidEvent, UserEvent, parse_event
from recstack.features.writer import ApplyResult, FeatureWriter
from services.feature_stream import metrics

log = logging.getLogger(__name__)

DLQ_HEADER_REASON = "recstack-reason"
DLQ_HEADER_MESSAGE = "recstack-error"
DLQ_HEADER_TOPIC = "recstack-source-topic"
DLQ_HEADER_PARTITION = "recstack-source-partition"
DLQ_HEADER_OFFSET = "recstack-source-offset"


@dataclass(frozen=True)
class RawMessage:
    """A consumed message: its bytes and where it came from."""

    value: bytes
    key: bytes | None
    topic: str
    partition: int
    offset: int


DeadLetterSink = Callable[[RawMessage, InvalidEvent], Awaitable[None]]


def dead_letter_headers(message: RawMessage, error: InvalidEvent) -> dict[str, bytes]:
    """Kafka headers of a dead letter: reason code, message, source topic/partition/offset."""
    return {
        DLQ_HEADER_REASON: error.reason_code.encode(),
        DLQ_HEADER_MESSAGE: error.message.encode()[:1024],
        DLQ_HEADER_TOPIC: message.topic.encode(),
        DLQ_HEADER_PARTITION: str(message.partition).encode(),
        DLQ_HEADER_OFFSET: str(message.offset).encode(),
    }


@dataclass(frozen=True)
class BatchOutcome:
    valid: int
    invalid: int
    applied: int
    duplicates: int
    rewards: int


class BatchProcessor:
    """Validates and applies batches; see the module docstring for the retry and ack contract."""

    def __init__(
        self,
        writer: FeatureWriter,
        dead_letter: DeadLetterSink,
        *,
        clock: Callable[[], float] = time.time,
        initial_backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
    ) -> None:
        self.writer = writer
        self.dead_letter = dead_letter
        self.clock = clock
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s

    async def process(self, messages: Sequence[RawMessage]) -> BatchOutcome:
        started = time.perf_counter()
        now = self.clock()
        valid: list[UserEvent] = []
        invalid = 0
        for message in messages:
            try:
                valid.append(parse_event(message.value, now=now))
            except InvalidEvent as exc:
                invalid += 1
                metrics.DEAD_LETTERS.labels(reason=exc.reason_code).inc()
                log.warning(
                    "dead letter %s[%d]@%d: %s", message.topic, message.partition, message.offset, exc
                )
                await self.dead_letter(message, exc)
        result = await self._apply_with_retry(valid)
        written_at = self.clock()
        for event in valid:
            metrics.EVENTS.labels(type=event.event_type).inc()
            metrics.EVENT_TO_FEATURE.observe(max(0.0, written_at - event.timestamp))
        metrics.DUPLICATES.inc(result.duplicates)
        metrics.REWARDS.labels(value="1").inc(result.rewards)
        metrics.BATCH_SIZE.observe(len(messages))
        metrics.BATCH_LATENCY.observe(time.perf_counter() - started)
        return BatchOutcome(len(valid), invalid, result.applied, result.duplicates, result.rewards)

    async def _apply_with_retry(self, events: Sequence[UserEvent]) -> ApplyResult:
        backoff = self.initial_backoff_s
        while True:
            try:
                return await self.writer.apply(events)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                metrics.REDIS_RETRIES.inc()
                log.warning(
                    "redis write of %d events failed (%s); retrying in %.1f s", len(events), exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
