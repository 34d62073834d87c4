"""Prometheus metrics of the feature stream (served by prometheus_client.start_http_server).

| metric                                      | kind      | labels            |
|---------------------------------------------|-----------|-------------------|
| recstack_stream_events_total                | counter   | type              |
| recstack_stream_dead_letters_total          | counter   | reason            |
| recstack_stream_signed_events_total         | counter   | producer          |
| recstack_stream_duplicates_total            | counter   |                   |
| recstack_stream_rewards_total               | counter   | value (1 / 0)     |
| recstack_stream_redis_retries_total         | counter   |                   |
| recstack_stream_batch_size                  | histogram |                   |
| recstack_stream_batch_seconds               | histogram | (processing time) |
| recstack_stream_event_to_feature_seconds    | histogram | (event ts -> Redis write) |
| recstack_stream_consumer_lag                | gauge     | topic, partition  |
| recstack_stream_assigned_partitions         | gauge     |                   |
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

EVENTS = Counter(
    "recstack_stream_events_total",
    "Valid events written to Redis (duplicates included), by event type",
    ["type"],
)
DEAD_LETTERS = Counter(
    "recstack_stream_dead_letters_total", "Events sent to the dead-letter topic", ["reason"]
)
SIGNED_EVENTS = Counter(
    "recstack_stream_signed_events_total",
    "Events whose signature verified (RECSTACK_EVENT_KEYS_FILE), by producer id (ids of the keys file)",
    ["producer"],
)
DUPLICATES = Counter("recstack_stream_duplicates_total", "Events skipped because their event_id was applied")
REWARDS = Counter("recstack_stream_rewards_total", "Bandit rewards written", ["value"])
REDIS_RETRIES = Counter("recstack_stream_redis_retries_total", "Failed Redis batch writes that were retried")
BATCH_SIZE = Histogram(
    "recstack_stream_batch_size",
    "Messages per processed batch",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000),
)
BATCH_LATENCY = Histogram(
    "recstack_stream_batch_seconds",
    "Time to validate and apply one batch (including dead letters and retries)",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
EVENT_TO_FEATURE = Histogram(
    "recstack_stream_event_to_feature_seconds",
    "Event timestamp to features written in Redis",
    buckets=(
        0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5,
        0.75, 1, 2.5, 5, 10, 30, 60,
    ),
)  # fmt: skip
CONSUMER_LAG = Gauge(
    "recstack_stream_consumer_lag",
    "Records in the partition not yet written to Redis (log end offset - next offset to process)",
    ["topic", "partition"],
)
ASSIGNED_PARTITIONS = Gauge(
    "recstack_stream_assigned_partitions", "Partitions of the events topic assigned to this worker"
)
