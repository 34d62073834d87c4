"""A Faust Kafka transport tuned for the feature stream (faust-streaming 0.15).

1. The consumer waits at most FETCH_MAX_WAIT_MS for new records. Faust's aiokafka driver hard-codes
   ``fetch_max_wait_ms=1500``. Brokers that hold a fetch until that wait expires (Tansu does, even
   with fetch_min_bytes=1) then add ~0.4 s median latency at low event rates; measured with a bare
   aiokafka consumer against Tansu at 200 events/s: p50 0.43 s with 1500 ms, 0.016 s with 50 ms.
   At 2,000 events/s (`recstack bench stream`) the worker's event-to-feature p50/p99 were ~31/154 ms with
   50 ms and ~21/39 ms with 25 ms; an idle consumer then sends ~40 empty fetches/s.
2. Delivery from the fetcher to the stream without four asyncio tasks per message. Faust's
   ``Consumer._drain_messages`` hands every message over with
   ``wait_first(callback(message), suspend_flow.wait())``, which creates a task for the callback,
   for the suspend event and for the consumer's stopped/crashed events, waits and cancels three of
   them: that was the largest per-event cost of the worker (py-spy; with it the worker drained
   ~4,700 events/s where a plain aiokafka loop around the same writer does ~12,000). Here the
   callback is awaited directly while the flow is active, and the original path is kept while a
   rebalance suspends the flow. A message whose hand-over was held up across a rebalance is dropped
   by Faust's stream (its generation_id is stale) and re-read from the committed offset, as before.

Broker URLs ``recstack-kafka://host:port`` select this transport.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from faust.transport import drivers
from faust.transport.consumer import CONSUMER_FETCHING
from faust.transport.drivers import aiokafka as aiokafka_driver
from mode import Service, ServiceT

SCHEME = "recstack-kafka"
FETCH_MAX_WAIT_MS = 25


class FastFetchConsumerThread(aiokafka_driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        # aiokafka reads this attribute when it builds its Fetcher in start(); Faust offers no setting.
        consumer._fetch_max_wait_ms = FETCH_MAX_WAIT_MS
        return consumer


class FastFetchConsumer(aiokafka_driver.Consumer):
    def _new_consumer_thread(self) -> FastFetchConsumerThread:
        return FastFetchConsumerThread(self, loop=self.loop, beacon=self.beacon)

    async def _drain_messages(self, fetcher: ServiceT) -> None:  # noqa: C901 (mirrors Faust's)
        """Faust 0.15.3's loop (gap tracking, commit_every, read offsets), see item 2 above."""
        callback = self.callback
        getmany = self.getmany
        consumer_should_stop = cast(Service, self)._stopped.is_set
        fetcher_should_stop = cast(Service, fetcher)._stopped.is_set
        flow_suspended = self.suspend_flow.is_set
        set_flag, unset_flag = self.diag.set_flag, self.diag.unset_flag
        get_read_offset = self._read_offset.__getitem__
        set_read_offset = self._read_offset.__setitem__
        commit_every = self._commit_every
        acks_enabled_for = self.app.topics.acks_enabled_for
        yield_every = 100
        num_since_yield = 0
        try:
            while not (consumer_should_stop() or fetcher_should_stop()):
                set_flag(CONSUMER_FETCHING)
                ait = getmany(timeout=1.0)
                await self.sleep(0)
                if self.should_stop:
                    continue
                async for tp, message in ait:
                    num_since_yield += 1
                    if num_since_yield > yield_every:
                        await asyncio.sleep(0)
                        num_since_yield = 0
                    offset = message.offset
                    r_offset = get_read_offset(tp)
                    if r_offset is not None and offset < r_offset:
                        continue  # already delivered (Faust logs and drops these too)
                    gap = offset - (r_offset or 0)
                    if gap > 1 and r_offset and acks_enabled_for(message.topic):
                        await self._add_gap(tp, r_offset + 1, offset)
                    if commit_every is not None and self._n_acked >= commit_every:
                        self._n_acked = 0
                        await self.commit()
                    if flow_suspended():
                        await self.wait_first(callback(message), self.suspend_flow.wait())
                    else:
                        await callback(message)
                    set_read_offset(tp, offset)
                unset_flag(CONSUMER_FETCHING)
        except self.consumer_stopped_errors:
            if self.transport.app.should_stop:
                self.log.info("Broker stopped consumer, shutting down...")
                return
            raise
        except asyncio.CancelledError:
            if self.transport.app.should_stop:
                self.log.info("Consumer shutting down for user cancel.")
                return
            raise
        except Exception as exc:
            self.log.exception("Drain messages raised: %r", exc)
            raise
        finally:
            unset_flag(CONSUMER_FETCHING)


class Transport(aiokafka_driver.Transport):
    Consumer = FastFetchConsumer


def register() -> None:
    """Make ``recstack-kafka://`` broker URLs resolve to this transport (idempotent)."""
    drivers.TRANSPORTS.aliases[SCHEME] = f"{__name__}:Transport"
