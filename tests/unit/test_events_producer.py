"""Dataset replay: event order, skipped rows, rate limit and limit (fake producer)."""

from __future__ import annotations

import math
import time

import pandas as pd
import pytest

from recstack.events import UserEvent
from recstack.events.producer import EventProducer, ProducerError, events_from_interactions, replay


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[UserEvent] = []
        self.calls = 0

    async def send_many(self, events: list[UserEvent]) -> int:
        self.calls += 1
        self.sent.extend(events)
        return len(events)


def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u1", "u3", "u2"],
            "item_id": ["a", "b", "c", "d", "e"],
            "timestamp": [30, 10, 10, 20, 40],
            "event_type": ["click", "rating", "view", "teleport", "rating"],
            "rating": [math.nan, 4.0, math.nan, math.nan, math.nan],
        }
    )


def test_events_in_time_order_stable_and_invalid_rows_skipped() -> None:
    events = list(events_from_interactions(frame(), retime=False))
    # teleport (unknown type) and the rating without a value are skipped; ties keep file order
    assert [(e.user_id, e.item_id, e.event_type) for e in events] == [
        ("u2", "b", "rating"),
        ("u1", "c", "view"),
        ("u1", "a", "click"),
    ]
    assert [e.timestamp for e in events] == [10.0, 10.0, 30.0]
    assert events[0].rating == 4.0 and events[1].rating is None
    assert len({e.event_id for e in events}) == 3


def test_retime_stamps_now() -> None:
    before = time.time()
    events = list(events_from_interactions(frame()))
    assert all(before <= e.timestamp <= time.time() for e in events)


async def test_replay_limit_and_batches() -> None:
    producer = FakeProducer()
    events = list(events_from_interactions(frame(), retime=False)) * 10
    sent = await replay(events, producer, limit=25, batch=10)  # type: ignore[arg-type]
    assert sent == 25 and len(producer.sent) == 25 and producer.calls == 3


async def test_replay_respects_rate() -> None:
    producer = FakeProducer()
    events = list(events_from_interactions(frame(), retime=False)) * 4  # 12 events
    started = time.monotonic()
    sent = await replay(events, producer, rate=40)  # type: ignore[arg-type]
    elapsed = time.monotonic() - started
    assert sent == 12
    assert 0.25 <= elapsed < 1.0  # 12 events at 40/s: the last one is due at 0.3 s


async def test_replay_rejects_bad_rate() -> None:
    with pytest.raises(ValueError, match="rate must be > 0"):
        await replay([], FakeProducer(), rate=0)  # type: ignore[arg-type]


async def test_producer_must_be_started_and_needs_bootstrap() -> None:
    with pytest.raises(ValueError, match="KAFKA_BOOTSTRAP_SERVERS"):
        EventProducer("")
    with pytest.raises(ProducerError, match="not started"):
        await EventProducer("127.0.0.1:1").send_raw(b"x")
