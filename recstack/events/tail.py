"""Read records from an events or dead-letter topic (debugging, `recstack events tail`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import KafkaError

from recstack.events.kafka_security import aiokafka_kwargs


class TailError(RuntimeError):
    """The topic could not be read; the message names the bootstrap servers and topic."""


def record_to_dict(record: Any) -> dict[str, Any]:
    """A consumer record as JSON-ready dict: value decoded as JSON when it is, else as text."""
    try:
        value: Any = json.loads(record.value)
    except (UnicodeDecodeError, json.JSONDecodeError, TypeError):
        value = record.value.decode("utf-8", "replace") if record.value is not None else None
    return {
        "topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "key": record.key.decode("utf-8", "replace") if record.key is not None else None,
        "headers": {k: v.decode("utf-8", "replace") for k, v in (record.headers or ())},
        "value": value,
    }


async def tail(
    bootstrap: str, topic: str, *, limit: int = 10, from_beginning: bool = True, idle_s: float = 2.0
) -> AsyncIterator[dict[str, Any]]:
    """Yield up to ``limit`` records; stop early after ``idle_s`` seconds without a new record."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        **aiokafka_kwargs(),
    )
    try:
        await consumer.start()
    except KafkaError as exc:
        await consumer.stop()
        raise TailError(f"cannot read {topic!r} from Kafka at {bootstrap!r}: {exc!r}") from exc
    try:
        seen = 0
        loop = asyncio.get_running_loop()
        last = loop.time()
        while seen < limit and loop.time() - last < idle_s:
            batch = await consumer.getmany(timeout_ms=200, max_records=limit - seen)
            for records in batch.values():
                for record in records:
                    seen += 1
                    last = loop.time()
                    yield record_to_dict(record)
    finally:
        await consumer.stop()
