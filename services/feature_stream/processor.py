"""One batch of raw Kafka messages -> validated events -> Redis (no Faust here, so it unit-tests plainly).

Invalid messages go to the dead-letter sink with their original bytes, the reason code and the
source topic/partition/offset; valid ones are applied with one FeatureWriter call, and events whose
Redis writes raised (e.g. WRONGTYPE) are dead-lettered too, reason ``write_failed``. An unreachable
Redis (no connection, a timeout, or an error reply that says it cannot write now: OOM, READONLY,
LOADING, ...) is retried with exponential backoff (0.1 s doubling to max_backoff_s) until it succeeds
or the task is cancelled, so the caller acknowledges (commits) the batch only after the writes landed.

Any other error of a whole batch call (a Redis ResponseError of the script itself, an encoding
error in the client) is blamed on its content, not on Redis: the batch is split in halves and each
half applied in order until the single events that fail are found; those are dead-lettered
``write_failed``. Halves that are re-sent after a partial write are harmless, because the writer
skips event_ids it has applied. So no event content can crash or stall the worker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import (
    ClusterDownError,
    MasterDownError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from recstack import tracing
from recstack.events.schema import InvalidEvent, UserEvent, parse_event
from recstack.events.signing import PRODUCER_HEADER, UNAUTHENTICATED, Verifier, producer_of
from recstack.features.writer import ApplyResult, FeatureWriter
from services.feature_stream import metrics

log = logging.getLogger(__name__)

DLQ_HEADER_REASON = "recstack-reason"
DLQ_HEADER_MESSAGE = "recstack-error"
DLQ_HEADER_TOPIC = "recstack-source-topic"
DLQ_HEADER_PARTITION = "recstack-source-partition"
DLQ_HEADER_OFFSET = "recstack-source-offset"
DLQ_HEADER_SIZE = "recstack-original-size"
DLQ_HEADER_SHA256 = "recstack-original-sha256"
DLQ_HEADER_TRUNCATED = "recstack-truncated"
# A dead letter carries the original bytes when they fit well under the producer's message limit
# (Kafka's default 1,000,000 bytes); a bigger one carries this many of its first bytes, with the
# original size and sha256 in its headers, so that no event can stall a partition.
DLQ_MAX_VALUE_BYTES = 256 * 1024
DLQ_MAX_KEY_BYTES = 1024


@dataclass(frozen=True)
class RawMessage:
    """A consumed message: its bytes and where it came from."""

    value: bytes
    key: bytes | None
    topic: str
    partition: int
    offset: int
    headers: tuple[tuple[str, bytes], ...] = ()


def record_headers(headers: Any) -> tuple[tuple[str, bytes], ...]:
    """A consumed record's headers (aiokafka: a sequence of (str, bytes); Faust: that or a mapping)."""
    if not headers:
        return ()
    items = headers.items() if isinstance(headers, Mapping) else headers
    return tuple((k.decode() if isinstance(k, bytes) else str(k), bytes(v or b"")) for k, v in items)


WRITE_FAILED = "write_failed"

# (message, reason code, human-readable detail): reason is a schema REASON_CODES entry or WRITE_FAILED.
DeadLetterSink = Callable[[RawMessage, str, str], Awaitable[None]]


def dead_letter_headers(message: RawMessage, reason: str, detail: str) -> dict[str, bytes]:
    """Kafka headers of a dead letter: reason code, detail, source topic/partition/offset, and the
    original value's size and sha256 (a truncated dead letter says so)."""
    value = message.value or b""
    headers = {
        DLQ_HEADER_REASON: reason.encode(),
        DLQ_HEADER_MESSAGE: detail.encode("utf-8", "backslashreplace")[:1024],
        DLQ_HEADER_TOPIC: message.topic.encode(),
        DLQ_HEADER_PARTITION: str(message.partition).encode(),
        DLQ_HEADER_OFFSET: str(message.offset).encode(),
        DLQ_HEADER_SIZE: str(len(value)).encode(),
        DLQ_HEADER_SHA256: hashlib.sha256(value).hexdigest().encode(),
    }
    if len(value) > DLQ_MAX_VALUE_BYTES or len(message.key or b"") > DLQ_MAX_KEY_BYTES:
        headers[DLQ_HEADER_TRUNCATED] = b"1"
    producer = producer_of(message.headers)
    if producer is not None:  # the producer the record claimed to come from (signed or not)
        headers[PRODUCER_HEADER] = producer.encode("utf-8", "replace")[:128]
    return headers


def dead_letter_record(
    message: RawMessage, reason: str, detail: str
) -> tuple[bytes | None, bytes, dict[str, bytes]]:
    """(key, value, headers) of the dead letter of ``message``: the original bytes, or their first
    DLQ_MAX_VALUE_BYTES when bigger (the headers keep the original size and hash)."""
    key = message.key[:DLQ_MAX_KEY_BYTES] if message.key else message.key
    value = (message.value or b"")[:DLQ_MAX_VALUE_BYTES]
    return key, value, dead_letter_headers(message, reason, detail)


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
        verifier: Verifier | None = None,
    ) -> None:
        """verifier: with one, only records signed by a known producer are applied; the others
        are dead-lettered ``unauthenticated`` (recstack/events/signing.py)."""
        self.verifier = verifier
        self.writer = writer
        self.dead_letter = dead_letter
        self.clock = clock
        self.initial_backoff_s = initial_backoff_s
        self.max_backoff_s = max_backoff_s

    async def process(self, messages: Sequence[RawMessage]) -> BatchOutcome:
        if not tracing.enabled():
            return await self._process(messages)
        with tracing.span("stream.apply_batch", {"recstack.messages": len(messages)}) as span:
            outcome = await self._process(messages, span)
            span.set_attributes({"recstack.applied": outcome.applied, "recstack.invalid": outcome.invalid})
            return outcome

    async def _process(
        self, messages: Sequence[RawMessage], span: tracing.Span | None = None
    ) -> BatchOutcome:
        started = time.perf_counter()
        now = self.clock()
        valid: list[UserEvent] = []
        sources: list[RawMessage] = []
        invalid = 0
        for message in messages:
            if self.verifier is not None:
                problem = self.verifier.check(message.value, message.headers)
                if problem is not None:
                    invalid += 1
                    await self._dead_letter(message, UNAUTHENTICATED, problem)
                    continue
                metrics.SIGNED_EVENTS.labels(producer=producer_of(message.headers) or "").inc()
            try:
                valid.append(parse_event(message.value, now=now))
                sources.append(message)
            except InvalidEvent as exc:
                invalid += 1
                await self._dead_letter(message, exc.reason_code, exc.message)
        if span is not None:  # each traced impression's span (the gateway's trace) is linked
            for event in valid:
                link = tracing.link_to(event.context.get(tracing.TRACEPARENT, ""))
                if link is not None:
                    span.add_link(link.context, {"recstack.event_id": event.event_id})
        result = await self._apply_isolating(
            valid, 0, [(f"{m.topic}:{m.partition}", m.offset) for m in sources]
        )
        for index, error in result.failed:
            await self._dead_letter(sources[index], WRITE_FAILED, error)
        written_at = self.clock()
        failed = {index for index, _ in result.failed}
        by_type: dict[str, int] = {}
        observe = metrics.EVENT_TO_FEATURE.observe
        for index, event in enumerate(valid):
            if index not in failed:  # the failed ones are counted as dead letters (write_failed)
                by_type[event.event_type] = by_type.get(event.event_type, 0) + 1
                observe(max(0.0, written_at - event.timestamp))
        for event_type, count in by_type.items():  # one labelled increment per type and batch
            metrics.EVENTS.labels(type=event_type).inc(count)
        metrics.DUPLICATES.inc(result.duplicates)
        metrics.REWARDS.labels(value="1").inc(result.rewards)
        metrics.BATCH_SIZE.observe(len(messages))
        metrics.BATCH_LATENCY.observe(time.perf_counter() - started)
        return BatchOutcome(
            len(valid), invalid + len(result.failed), result.applied, result.duplicates, result.rewards
        )

    async def _dead_letter(self, message: RawMessage, reason: str, detail: str) -> None:
        metrics.DEAD_LETTERS.labels(reason=reason).inc()
        log.warning(
            "dead letter %s[%d]@%d: %s: %s", message.topic, message.partition, message.offset, reason, detail
        )
        await self.dead_letter(message, reason, detail)

    async def _apply_isolating(
        self, events: Sequence[UserEvent], offset: int = 0, sources: Sequence[tuple[str, int]] | None = None
    ) -> ApplyResult:
        """Apply in order; a batch rejected as a whole is bisected down to the events that fail.

        ``offset`` is the index of events[0] in the processed batch (indices in ``failed``);
        ``sources`` each event's (topic:partition, offset)."""
        try:
            result = await self._apply_with_retry(events, sources)
        except (RedisError, ValueError, TypeError) as exc:
            if len(events) == 1:
                return ApplyResult(0, 0, 0, ((offset, f"{type(exc).__name__}: {exc}"),))
            log.warning("batch of %d events rejected (%r); isolating the failing events", len(events), exc)
            half = len(events) // 2
            first = await self._apply_isolating(events[:half], offset, sources[:half] if sources else None)
            second = await self._apply_isolating(
                events[half:], offset + half, sources[half:] if sources else None
            )
            return ApplyResult(
                first.applied + second.applied,
                first.duplicates + second.duplicates,
                first.rewards + second.rewards,
                first.failed + second.failed,
            )
        if offset and result.failed:
            return ApplyResult(
                result.applied,
                result.duplicates,
                result.rewards,
                tuple((offset + i, error) for i, error in result.failed),
            )
        return result

    async def _apply_with_retry(
        self, events: Sequence[UserEvent], sources: Sequence[tuple[str, int]] | None = None
    ) -> ApplyResult:
        backoff = self.initial_backoff_s
        while True:
            try:
                return await self.writer.apply(events, sources)
            except (RedisError, OSError) as exc:
                if not is_transient(exc):
                    raise
                metrics.REDIS_RETRIES.inc()
                log.warning(
                    "redis write of %d events failed (%s); retrying in %.1f s", len(events), exc, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)


# Error replies of a Redis that cannot take writes right now (out of memory, a replica after a
# failover, a busy script, a cluster moving slots; LOADING is a ConnectionError): retried like a lost
# connection, never blamed on the events (that would dead-letter every event until it recovers).
TRANSIENT_ERRORS = (
    RedisConnectionError,
    RedisTimeoutError,
    OSError,
    OutOfMemoryError,
    ReadOnlyError,
    TryAgainError,
    ClusterDownError,
    MasterDownError,
)


def is_transient(exc: BaseException) -> bool:
    """True for errors that say Redis is unavailable, not that the batch is bad."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, ResponseError) and str(exc).startswith("BUSY")


class LagTracker:
    """Consumer lag per partition: log end offset (highwater) - next offset to process.

    ``processed(messages)`` after a batch is in Redis; ``update(...)`` from a timer sets the
    ``recstack_stream_consumer_lag{topic,partition}`` gauge of every assigned partition and drops
    the partitions that were revoked. A partition with nothing processed here yet uses
    ``positions`` (the consumer's fetch position: equal to the committed offset until records are
    fetched, so an idle partition reads 0). Partitions whose highwater is unknown are not reported.
    """

    def __init__(self) -> None:
        self.next_offset: dict[tuple[str, int], int] = {}
        self._reported: set[tuple[str, int]] = set()

    def processed(self, messages: Sequence[RawMessage]) -> None:
        for m in messages:
            key = (m.topic, m.partition)
            if m.offset + 1 > self.next_offset.get(key, -1):
                self.next_offset[key] = m.offset + 1

    def unknown(self, assignment: Collection[tuple[str, int]]) -> list[tuple[str, int]]:
        """Assigned partitions with nothing processed here yet (they need a fallback position)."""
        return [tp for tp in assignment if tp not in self.next_offset]

    def update(
        self,
        assignment: Collection[tuple[str, int]],
        highwaters: Mapping[tuple[str, int], int | None],
        positions: Mapping[tuple[str, int], int | None] | None = None,
    ) -> dict[tuple[str, int], int]:
        lags: dict[tuple[str, int], int] = {}
        for tp in assignment:
            end = highwaters.get(tp)
            position = self.next_offset.get(tp)
            if position is None and positions is not None:
                position = positions.get(tp)
            if end is None or position is None:
                continue
            lags[tp] = max(0, end - position)
        for tp in set(self.next_offset) - set(assignment):
            del self.next_offset[tp]  # revoked: another worker moves it on
        for topic, partition in self._reported - set(lags):
            metrics.CONSUMER_LAG.remove(topic, str(partition))
        for (topic, partition), lag in lags.items():
            metrics.CONSUMER_LAG.labels(topic=topic, partition=str(partition)).set(lag)
        self._reported = set(lags)
        metrics.ASSIGNED_PARTITIONS.set(len(assignment))
        return lags
