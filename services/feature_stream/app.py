"""The Faust app: user-events -> BatchProcessor -> Redis; invalid events -> dead-letter topic.

Offsets: the agent reads with ``noack_take`` and acknowledges events only after their batch's Redis
writes (and dead letters) succeeded, so Faust commits nothing that is not in Redis. Cutting the next
chunk of the stream overlaps with writing the previous batch (one writer task, batches in order). A
crash between the write and the commit replays the batch; the writer's event_id check makes that a
no-op. Throughput and latency: see bench.py and transport.py."""

from __future__ import annotations

import asyncio
import gc
import logging
import tempfile
from pathlib import Path
from typing import Any

import faust
from aiokafka.errors import KafkaError
from prometheus_client import start_http_server
from redis.exceptions import RedisError

from recstack.artifacts.layout import read_current
from recstack.events.topics import TopicError, ensure_topics
from recstack.features.catalog import CatalogError, ItemCatalog
from recstack.redis_cluster import async_from_url
from services.feature_stream import metrics, transport
from services.feature_stream.processor import (
    BatchProcessor,
    LagTracker,
    RawMessage,
    dead_letter_record,
)
from services.feature_stream.settings import StreamSettings, writer_from_settings

log = logging.getLogger(__name__)


def _current_version(artifacts: str) -> str:
    return read_current(artifacts)


async def _put_or_raise(queue: asyncio.Queue, item: Any, consumer: asyncio.Task) -> None:
    """queue.put(item), unless the task that consumes the queue has died: then raise its error."""
    if queue.full():
        put = asyncio.ensure_future(queue.put(item))
        await asyncio.wait({put, consumer}, return_when=asyncio.FIRST_COMPLETED)
        if not put.done():
            put.cancel()
    else:
        queue.put_nowait(item)
    if consumer.done():
        consumer.result()  # raises the writer's exception (the agent crashes rather than stalls)
        raise RuntimeError("the batch writer stopped")


def create_app(settings: StreamSettings) -> faust.App:
    """Build the Faust app with its agent and timers (nothing connects until the worker starts)."""
    transport.register()
    app = faust.App(
        settings.group_id,
        broker=settings.kafka_urls(scheme=transport.SCHEME),
        store="memory://",
        # Faust creates "<datadir>/v1/tables" even with the memory store; keep it out of the cwd.
        datadir=str(Path(tempfile.gettempdir()) / f"{settings.group_id}-data"),
        autodiscover=False,
        web_enabled=settings.web_port > 0,
        web_port=settings.web_port or 6066,
        web_bind="127.0.0.1",
        # Stop and rebalance without waiting for in-flight events: a batch stuck on an unreachable
        # Redis would block SIGTERM forever. Unacked events are not committed; the next owner
        # replays them and the writer's event_id check makes the replay a no-op.
        stream_wait_empty=False,
        # A worker killed without leaving the group holds its partitions this long.
        broker_session_timeout=settings.session_timeout_s,
        broker_rebalance_timeout=3,
        broker_heartbeat_interval=1,
        # Offsets of acknowledged events (whose Redis writes landed) are committed this often.
        broker_commit_interval=settings.commit_interval_s,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        topic_partitions=1,
        value_serializer="raw",
        key_serializer="raw",
    )
    events_topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes)
    dlq_topic = app.topic(settings.dead_letter_topic, key_type=bytes, value_type=bytes)

    redis = async_from_url(settings.redis_url, decode_responses=True)
    writer = writer_from_settings(redis, settings)

    async def send_dead_letter(message: RawMessage, reason: str, detail: str) -> None:
        key, value, headers = dead_letter_record(message, reason, detail)
        delivered = await dlq_topic.send(key=key, value=value, headers=headers)
        await delivered

    processor = BatchProcessor(writer, send_dead_letter)
    lag = LagTracker()

    @app.agent(events_topic)
    async def user_events(stream: Any) -> None:
        # Two stages: this loop cuts the stream into chunks (batch_size events, or what arrived within
        # batch_within_s); one writer task applies them in order, merging the chunks that queued up
        # while it was busy (up to batch_size events, one Lua call). So an idle worker writes within
        # ~batch_within_s, and batches grow with the load. In order by one task: a partition's events
        # are applied in offset order; each event is acked after its batch's writes.
        pending: asyncio.Queue[tuple[list[Any], list[RawMessage]]] = asyncio.Queue(maxsize=8)

        async def write_batches() -> None:
            while True:
                events, messages = await pending.get()
                while len(messages) < settings.batch_size and not pending.empty():
                    more_events, more_messages = pending.get_nowait()
                    events += more_events
                    messages += more_messages
                await processor.process(messages)
                lag.processed(messages)
                for event in events:
                    await stream.ack(event)

        writer_task = asyncio.create_task(write_batches())
        try:
            async for batch in stream.noack_take(settings.batch_size, within=settings.batch_within_s):
                messages = [
                    RawMessage(
                        value=e.message.value,
                        key=e.message.key,
                        topic=e.message.topic,
                        partition=e.message.partition,
                        offset=e.message.offset,
                    )
                    for e in batch
                ]
                await _put_or_raise(pending, (batch, messages), writer_task)
        finally:
            writer_task.cancel()

    @app.timer(interval=settings.lag_interval_s)
    async def report_lag() -> None:
        consumer = app.consumer
        assigned = {(tp.topic, tp.partition): tp for tp in consumer.assignment()}
        assigned = {k: tp for k, tp in assigned.items() if k[0] == settings.events_topic}
        highwaters: dict[tuple[str, int], int | None] = {}
        positions: dict[tuple[str, int], int | None] = {}
        try:
            for key, tp in assigned.items():
                highwaters[key] = consumer.highwater(tp)
            for key in lag.unknown(assigned):
                if highwaters.get(key) is not None:
                    positions[key] = await consumer.position(assigned[key])
        except (KafkaError, AssertionError) as exc:  # revoked while asking (aiokafka asserts assignment)
            log.debug("consumer lag not updated: %r", exc)
            return
        lag.update(list(assigned), highwaters, positions)

    @app.timer(interval=settings.settle_interval_s)
    async def settle_rewards() -> None:
        try:
            result = await writer.settle()
        except (RedisError, OSError) as exc:  # Redis down: the next tick settles the backlog
            log.warning("settling impression windows failed: %s", exc)
            return
        if result.zero_rewards:
            metrics.REWARDS.labels(value="0").inc(result.zero_rewards)
            log.info("closed %d impression windows, %d zero rewards", result.requests, result.zero_rewards)

    @app.timer(interval=settings.catalog_check_s)
    async def reload_catalog() -> None:
        version = _current_version(settings.artifacts)
        if version and version != writer.catalog.version:
            try:
                writer.catalog = ItemCatalog.from_artifacts(settings.artifacts)
            except CatalogError as exc:  # a bundle being written: keep the old catalogue
                log.warning("item catalogue not reloaded: %s", exc)
                return
            log.info("item catalogue %s loaded (%d items)", writer.catalog.version, len(writer.catalog))

    return app


def declare_topics(settings: StreamSettings) -> None:
    """Create the events and dead-letter topics when missing (existing topics are left as they are)."""
    try:
        ensure_topics(
            settings.kafka_bootstrap_servers,
            {settings.events_topic: settings.events_partitions, settings.dead_letter_topic: 1},
        )
    except TopicError as exc:
        log.warning("could not declare topics (%s); they must exist before events arrive", exc)


def run_worker(settings: StreamSettings | None = None) -> int:
    """Run the worker until SIGTERM/SIGINT; returns the exit code (0 on a clean stop)."""
    settings = settings or StreamSettings()
    declare_topics(settings)
    app = create_app(settings)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)
        log.info("metrics on :%d/metrics", settings.metrics_port)
    worker = faust.Worker(app, loglevel=settings.log_level, quiet=True)
    worker.spinner = None  # terminal escape codes would end up in container logs
    # Everything imported and built so far lives for the whole process: keep it out of the cyclic
    # GC's generations, so full collections scan only what the stream allocates (shorter pauses).
    gc.freeze()
    try:
        worker.execute_from_commandline()
    except SystemExit as exc:  # mode's worker always leaves through sys.exit
        return int(exc.code or 0)
    return 0
