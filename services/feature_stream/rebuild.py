"""Rebuild Redis from the events topic: Redis is derived state (`recstack stream --rebuild`).

Reads every partition of the events topic from its oldest retained offset up to the end offsets
seen at start, through the same BatchProcessor and Lua writer as the live stream, so the rebuilt
features, rewards, consumed sets and bandit statistics are those the live stream would have made.

Idempotent: the writer keeps each partition's applied offset in Redis in the same atomic call as
the batch's writes, so a rebuild that is interrupted and started again, or run beside (or after) the
live worker, applies every event at most once. No consumer group is used and nothing is committed:
the live worker's group offsets are untouched. Invalid events are counted and logged, not sent to
the dead-letter topic again (the live worker dead-lettered them when they first arrived).

What is rebuilt is what the topic still holds: events older than the topic's retention are gone,
and the report names every partition whose oldest offset is not 0 (``truncated``). Keep the events
topic's retention at least as long as the history the features need (``retention.ms=-1``, or
compaction off and a size limit above the topic's size), or Redis is not recoverable.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from recstack.redis_cluster import async_from_url
from services.feature_stream.processor import BatchProcessor, RawMessage
from services.feature_stream.settings import StreamSettings, writer_from_settings

log = logging.getLogger(__name__)


class RebuildError(RuntimeError):
    """The topic cannot be read (no such topic, broker unreachable)."""


@dataclass
class RebuildReport:
    topic: str
    partitions: dict[int, dict[str, int]] = field(default_factory=dict)
    """Per partition: ``start`` (oldest retained offset), ``end`` (end offset at start), ``read``."""
    read: int = 0
    applied: int = 0
    skipped: int = 0
    """Events already in Redis (their partition offset or event_id was applied before)."""
    invalid: int = 0
    seconds: float = 0.0

    @property
    def truncated(self) -> list[int]:
        """Partitions whose oldest retained offset is not 0: retention dropped their first events."""
        return [p for p, info in self.partitions.items() if info["start"] > 0]

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "truncated": self.truncated}


async def _count_only(message: RawMessage, reason: str, detail: str) -> None:
    """Dead-letter sink of a rebuild: the live worker already dead-lettered these events."""


async def rebuild(
    settings: StreamSettings,
    *,
    on_progress: Callable[[int, int], None] | None = None,
    metadata_timeout_s: float = 30.0,
    topic_wait_s: float = 5.0,
) -> RebuildReport:
    """Replay the retained events topic into Redis; see the module docstring.

    on_progress(done, total) is called after each batch (events read so far, events to read)."""
    started = time.monotonic()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=None,
        enable_auto_commit=False,
        max_poll_records=settings.batch_size,
        request_timeout_ms=int(metadata_timeout_s * 1000),
    )
    redis = async_from_url(settings.redis_url, decode_responses=True)
    report = RebuildReport(settings.events_topic)
    try:
        await consumer.start()
        partitions = await _partitions(consumer, settings.events_topic, topic_wait_s)
        tps = [TopicPartition(settings.events_topic, p) for p in partitions]
        consumer.assign(tps)
        begin = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        report.partitions = {tp.partition: {"start": begin[tp], "end": end[tp], "read": 0} for tp in tps}
        for p in report.truncated:
            log.warning(
                "partition %d of %s starts at offset %d: events before it are past the topic's "
                "retention and cannot be rebuilt",
                p,
                settings.events_topic,
                report.partitions[p]["start"],
            )
        total = sum(end[tp] - begin[tp] for tp in tps)
        # Every partition is fetched at least once: its end is the larger of the listed end offset
        # and the high watermark of the first fetch response (some Kafka-compatible brokers list a
        # stale end offset); later high watermarks (a live stream still writing) do not move it.
        pending = set(tps)
        for tp in tps:
            consumer.seek(tp, begin[tp])
        processor = BatchProcessor(writer_from_settings(redis, settings), _count_only)
        if on_progress is not None:
            on_progress(0, total)
        watermarked: set[TopicPartition] = set()
        while pending:
            fetched = await consumer.getmany(*pending, timeout_ms=1000, max_records=settings.batch_size)
            messages: list[RawMessage] = []
            for tp in list(pending):
                highwater = consumer.highwater(tp)
                if highwater is None:
                    continue  # no fetch response for it yet
                if tp not in watermarked:
                    watermarked.add(tp)
                    if highwater > end[tp]:
                        total += highwater - end[tp]
                        end[tp] = report.partitions[tp.partition]["end"] = highwater
                records = fetched.get(tp, [])
                for r in records:
                    if r.offset < end[tp]:
                        messages.append(RawMessage(r.value, r.key, r.topic, r.partition, r.offset))
                        report.partitions[tp.partition]["read"] += 1
                # the next offset to read: after the last record returned, else the consumer's
                # position (which also steps over offsets that hold no record, e.g. markers)
                following = records[-1].offset + 1 if records else await consumer.position(tp)
                if following >= end[tp]:
                    pending.discard(tp)
            if not messages:
                continue
            outcome = await processor.process(messages)
            report.read += len(messages)
            report.applied += outcome.applied
            report.skipped += outcome.duplicates
            report.invalid += outcome.invalid
            if on_progress is not None:
                on_progress(report.read, total)
    except RebuildError:
        raise
    except Exception as exc:
        raise RebuildError(
            f"cannot rebuild from {settings.events_topic!r} at {settings.kafka_bootstrap_servers!r}: {exc!r}"
        ) from exc
    finally:
        await consumer.stop()
        await redis.aclose()
    report.seconds = round(time.monotonic() - started, 3)
    return report


async def _partitions(consumer: AIOKafkaConsumer, topic: str, timeout_s: float) -> list[int]:
    """The topic's partitions, waiting for metadata up to timeout_s; RebuildError if there are none."""
    deadline = time.monotonic() + timeout_s
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return sorted(partitions)
        if time.monotonic() > deadline:
            raise RebuildError(f"topic {topic!r} does not exist or has no partitions")
        await consumer.topics()  # refreshes the cluster metadata
        await asyncio.sleep(0.2)
