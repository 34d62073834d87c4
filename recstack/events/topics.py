"""Kafka topic administration: create the topics a stream needs, list a broker's topics.

    ensure_topics(bootstrap, {"user-events": 4, "user-events.dlq": 1})   # -> names created

Used by the stream worker (it declares its events and dead-letter topics at start), `recstack up`
and the tests. Works against any broker that answers aiokafka's admin client (Kafka, Tansu: an
existing topic answers error 36, TopicAlreadyExists). ``TopicError`` names the broker and the fix.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

from recstack.events.kafka_security import aiokafka_kwargs

log = logging.getLogger(__name__)

T = TypeVar("T")

_TOPIC_ALREADY_EXISTS = 36


class TopicError(RuntimeError):
    """The broker could not be reached or a topic could not be created."""


def run_sync(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from sync code, also when an event loop is already running."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro_fn())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(coro_fn())).result()


async def _with_admin(bootstrap: str, timeout: float, fn: Callable[[Any], Awaitable[T]]) -> T:
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout * 1000), **aiokafka_kwargs()
    )
    await asyncio.wait_for(admin.start(), timeout)
    try:
        return await asyncio.wait_for(fn(admin), timeout)
    finally:
        await admin.close()


async def list_topics_async(bootstrap: str, timeout: float = 5.0) -> list[str]:
    """The broker's topic names (raises whatever the admin client raises)."""
    return await _with_admin(bootstrap, timeout, lambda admin: admin.list_topics())


def list_topics(bootstrap: str, timeout: float = 5.0) -> list[str]:
    """Sync wrapper of `list_topics_async`."""
    return run_sync(lambda: list_topics_async(bootstrap, timeout))


async def ensure_topics_async(bootstrap: str, topics: Mapping[str, int], timeout: float = 15.0) -> list[str]:
    """Create the missing topics (name -> partitions, replication 1); return the names created.

    An existing topic is left as it is, whatever its partition count.
    """
    from aiokafka.admin import NewTopic
    from aiokafka.errors import KafkaError

    async def create(admin: Any) -> list[str]:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, n, 1) for name, n in topics.items() if name not in existing]
        if not missing:
            return []
        response = await admin.create_topics(missing)
        created = []
        for name, code, message in (tuple(e)[:3] for e in response.topic_errors):
            if code == 0:
                created.append(name)
            elif code != _TOPIC_ALREADY_EXISTS:
                raise TopicError(f"cannot create topic {name!r} on {bootstrap}: error {code} {message}")
        return created

    try:
        created = await _with_admin(bootstrap, timeout, create)
    except (TimeoutError, OSError) as exc:
        raise TopicError(
            f"Kafka at {bootstrap} did not answer within {timeout:.0f}s ({exc!r}); "
            "check KAFKA_BOOTSTRAP_SERVERS or start the embedded broker."
        ) from exc
    except KafkaError as exc:
        raise TopicError(f"Kafka at {bootstrap}: {exc!r}; check KAFKA_BOOTSTRAP_SERVERS.") from exc
    if created:
        log.info("created topics %s on %s", ", ".join(created), bootstrap)
    return created


def ensure_topics(bootstrap: str, topics: Mapping[str, int], timeout: float = 15.0) -> list[str]:
    """Sync wrapper of `ensure_topics_async` (safe to call with or without a running loop)."""
    return run_sync(lambda: ensure_topics_async(bootstrap, topics, timeout))
