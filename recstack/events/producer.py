"""Async Kafka producer of user events (JSON schema v1, key = user_id).

Used by the gateway (impressions), the demo and `recstack events produce` (dataset replay).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaConnectionError, KafkaError

from recstack.events.kafka_security import aiokafka_kwargs
from recstack.events.schema import EVENT_TYPES, InvalidEvent, UserEvent, event_to_json, new_event
from recstack.events.signing import Signer

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

DEFAULT_TOPIC = "user-events"


class ProducerError(RuntimeError):
    """The producer could not connect or deliver; the message names the bootstrap servers."""


class EventProducer:
    """Sends UserEvents to Kafka with acks=all (and idempotence when ``idempotent``).

    Usage::

        async with EventProducer("127.0.0.1:9092") as producer:
            await producer.send(new_event("u1", "click", "i9"))
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = DEFAULT_TOPIC,
        *,
        idempotent: bool = True,
        linger_ms: int = 5,
        request_timeout_ms: int = 30_000,
        signer: Signer | None | str = "env",
    ) -> None:
        """signer: signs every event (recstack/events/signing.py); "env" (default): the Signer of
        RECSTACK_EVENT_PRODUCER_ID / RECSTACK_EVENT_KEYS_FILE, None when they are unset."""
        if not bootstrap_servers:
            raise ValueError(
                "bootstrap_servers is empty; set KAFKA_BOOTSTRAP_SERVERS (host:port[,host:port])"
            )
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.idempotent = idempotent
        self._options = {
            "bootstrap_servers": bootstrap_servers,
            "acks": "all",
            "linger_ms": linger_ms,
            "request_timeout_ms": request_timeout_ms,
        }
        self._producer: AIOKafkaProducer | None = None
        self._started = False
        self.signer = Signer.from_env() if signer == "env" else signer
        assert self.signer is None or isinstance(self.signer, Signer)

    def _headers(self, value: bytes) -> list[tuple[str, bytes]] | None:
        return self.signer.headers(value) if isinstance(self.signer, Signer) else None

    async def start(self) -> None:
        """Connect to the cluster. Raises ProducerError when no broker answers.

        A broker without idempotent producers (InitProducerId fails, e.g. Tansu) gets a plain
        acks=all producer instead, with a warning.
        """
        try:
            self._producer = await self._connect(self.idempotent)
        except KafkaError as exc:
            if not self.idempotent or isinstance(exc, KafkaConnectionError):
                raise self._error(exc) from exc
            log.warning("broker refused an idempotent producer (%s); using acks=all without idempotence", exc)
            try:
                self._producer = await self._connect(False)
            except KafkaError as exc2:
                raise self._error(exc2) from exc2
            self.idempotent = False
        self._started = True

    async def _connect(self, idempotent: bool) -> AIOKafkaProducer:
        producer = AIOKafkaProducer(enable_idempotence=idempotent, **self._options, **aiokafka_kwargs())
        try:
            await producer.start()
        except BaseException:
            await producer.stop()
            raise
        return producer

    def _error(self, exc: Exception) -> ProducerError:
        return ProducerError(
            f"cannot connect to Kafka at {self.bootstrap_servers!r}: {exc!r}; "
            "check KAFKA_BOOTSTRAP_SERVERS or start the dev stack with `recstack up`"
        )

    async def stop(self) -> None:
        """Flush pending messages and disconnect."""
        if self._started and self._producer is not None:
            await self._producer.stop()
            self._started = False

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def _check_started(self) -> AIOKafkaProducer:
        if not self._started or self._producer is None:
            raise ProducerError("EventProducer is not started; use `async with` or await start()")
        return self._producer

    async def send(self, event: UserEvent) -> None:
        """Send one event and wait for the broker's acknowledgement."""
        producer = self._check_started()
        value = event_to_json(event)
        await producer.send_and_wait(
            self.topic, value=value, key=event.user_id.encode("utf-8"), headers=self._headers(value)
        )

    async def send_raw(
        self, value: bytes, key: bytes | None = None, headers: list[tuple[str, bytes]] | None = None
    ) -> None:
        """Send bytes as they are, unsigned unless ``headers`` says otherwise (tests and tools that
        need invalid or forged events)."""
        producer = self._check_started()
        await producer.send_and_wait(self.topic, value=value, key=key, headers=headers)

    async def send_many(self, events: Iterable[UserEvent]) -> int:
        """Send events (batched by the client) and wait until all are acknowledged; returns the count."""
        producer = self._check_started()
        futures = []
        for e in events:
            value = event_to_json(e)
            futures.append(
                await producer.send(
                    self.topic, value=value, key=e.user_id.encode("utf-8"), headers=self._headers(value)
                )
            )
        if futures:
            await asyncio.gather(*futures)
        return len(futures)


def events_from_interactions(interactions: pd.DataFrame, *, retime: bool = True) -> Iterator[UserEvent]:
    """Yield one UserEvent per interaction row in time order (stable: file order breaks ties).

    interactions: the Dataset contract (user_id, item_id, timestamp, event_type, rating).
    retime: stamp events with the wall clock at creation (replay as live traffic) instead of the
    dataset's historical timestamp. Rows with an unknown event_type are skipped with a warning.
    """
    frame = interactions.sort_values("timestamp", kind="stable")
    skipped = 0
    for user_id, item_id, ts, event_type, rating in frame[
        ["user_id", "item_id", "timestamp", "event_type", "rating"]
    ].itertuples(index=False, name=None):
        if event_type not in EVENT_TYPES:
            skipped += 1
            continue
        value = None if rating is None or (isinstance(rating, float) and math.isnan(rating)) else rating
        try:
            yield new_event(
                str(user_id),
                str(event_type),
                str(item_id),
                timestamp=None if retime else float(ts),
                rating=float(value) if event_type == "rating" and value is not None else None,
            )
        except InvalidEvent as exc:
            skipped += 1
            log.debug("skipping row: %s", exc)
    if skipped:
        log.warning("skipped %d interactions that are not valid events", skipped)


async def replay(
    events: Iterable[UserEvent],
    producer: EventProducer,
    *,
    rate: float | None = None,
    limit: int | None = None,
    batch: int = 100,
    on_sent: Callable[[int], None] | None = None,
) -> int:
    """Send events at most ``rate`` per second (None: as fast as possible), stop after ``limit``.

    on_sent(n) is called after each acknowledged batch of n events (progress bars). Returns the count.
    """
    if rate is not None and rate <= 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate}")
    sent = 0
    started = time.monotonic()
    pending: list[UserEvent] = []

    async def flush() -> None:
        nonlocal sent
        n = await producer.send_many(pending)
        pending.clear()
        sent += n
        if on_sent is not None:
            on_sent(n)

    for event in events:
        if limit is not None and sent + len(pending) >= limit:
            break
        pending.append(event)
        if rate is not None:
            due = started + (sent + len(pending)) / rate
            delay = due - time.monotonic()
            if delay > 0:
                await flush()
                await asyncio.sleep(delay)
                continue
        if len(pending) >= batch:
            await flush()
    if pending:
        await flush()
    return sent
