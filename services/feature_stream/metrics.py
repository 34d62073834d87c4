"""Prometheus metrics of the feature stream (served by prometheus_client.start_http_server)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

EVENTS = Counter("recstack_stream_events_total", "Valid events consumed, by event type", ["type"])
DEAD_LETTERS = Counter(
    "recstack_stream_dead_letters_total", "Events sent to the dead-letter topic", ["reason"]
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
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
