"""The raw ceiling of the feature stream: a plain aiokafka consumer loop around the same
BatchProcessor (schema validation, one FeatureWriter Lua call per batch, dead letters, metrics).

It exists to measure what Faust costs (`recstack bench stream` runs both on the same broker and
Redis); production runs the Faust app. Same settings and metrics as the worker, same guarantees:
offsets are committed after each batch's Redis writes, so a crash replays at most one batch.

    python -m recstack.bench.stream_raw        # environment as for python -m services.feature_stream
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from prometheus_client import start_http_server
from pydantic import ValidationError

from recstack.redis_cluster import async_from_url
from services.feature_stream.processor import BatchProcessor, LagTracker, RawMessage, dead_letter_record
from services.feature_stream.settings import StreamSettings, writer_from_settings
from services.feature_stream.transport import FETCH_MAX_WAIT_MS

log = logging.getLogger(__name__)


async def run_raw_consumer(settings: StreamSettings, stop: asyncio.Event) -> None:
    """Consume until ``stop`` is set (SIGTERM in main); commit after every batch's writes."""
    bootstrap = settings.kafka_bootstrap_servers
    consumer = AIOKafkaConsumer(
        settings.events_topic,
        bootstrap_servers=bootstrap,
        group_id=settings.group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        max_poll_records=settings.batch_size,
        session_timeout_ms=int(settings.session_timeout_s * 1000),
        heartbeat_interval_ms=1000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    redis = async_from_url(settings.redis_url, decode_responses=True)
    writer = writer_from_settings(redis, settings)

    async def send_dead_letter(message: RawMessage, reason: str, detail: str) -> None:
        key, value, headers = dead_letter_record(message, reason, detail)
        await producer.send_and_wait(
            settings.dead_letter_topic, value=value, key=key, headers=list(headers.items())
        )

    processor = BatchProcessor(writer, send_dead_letter)
    lag = LagTracker()
    await producer.start()
    await consumer.start()
    try:
        while not stop.is_set():
            fetched = await consumer.getmany(
                timeout_ms=int(settings.batch_within_s * 1000), max_records=settings.batch_size
            )
            messages = [
                RawMessage(r.value, r.key, r.topic, r.partition, r.offset)
                for records in fetched.values()
                for r in records
            ]
            if messages:
                await processor.process(messages)
                lag.processed(messages)
                await consumer.commit({tp: records[-1].offset + 1 for tp, records in fetched.items()})
            assigned = {(tp.topic, tp.partition): tp for tp in consumer.assignment()}
            lag.update(list(assigned), {k: consumer.highwater(tp) for k, tp in assigned.items()})
    except KafkaError as exc:
        log.error("raw consumer stopped: %r", exc)
        raise
    finally:
        await consumer.stop()
        await producer.stop()
        await redis.aclose()


def main() -> int:
    try:
        settings = StreamSettings()
    except ValidationError as exc:
        sys.stderr.write(f"feature_stream.raw: invalid or missing settings\n{exc}\n")
        return 2
    logging.basicConfig(level=settings.log_level.upper(), stream=sys.stderr)
    if settings.metrics_port:
        start_http_server(settings.metrics_port)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_raw_consumer(settings, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
