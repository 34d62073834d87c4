"""Feature-stream settings, read once from the environment, and the writer they configure."""

from __future__ import annotations

import redis.asyncio as aioredis
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recstack.exploration.rewards import LinearRewardWriter
from recstack.features.catalog import load_catalog_or_empty
from recstack.features.keys import Keys
from recstack.features.writer import FeatureWriter


def _env(name: str, field_name: str) -> AliasChoices:
    return AliasChoices(name, field_name)


class StreamSettings(BaseSettings):
    """Environment of `python -m services.feature_stream` (the variable name is in each alias).

    Required: KAFKA_BOOTSTRAP_SERVERS (host:port[,host:port]) and REDIS_URL (redis://host:port/db).
    """

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore")

    kafka_bootstrap_servers: str = Field(
        validation_alias=_env("KAFKA_BOOTSTRAP_SERVERS", "kafka_bootstrap_servers")
    )
    redis_url: str = Field(validation_alias=_env("REDIS_URL", "redis_url"))
    events_topic: str = Field("user-events", validation_alias=_env("RECSTACK_EVENTS_TOPIC", "events_topic"))
    dead_letter_topic: str = Field(
        "user-events.dlq", validation_alias=_env("RECSTACK_DEAD_LETTER_TOPIC", "dead_letter_topic")
    )
    events_partitions: int = Field(
        4, ge=1, validation_alias=_env("RECSTACK_EVENTS_PARTITIONS", "events_partitions")
    )
    artifacts: str = Field("artifacts", validation_alias=_env("RECSTACK_ARTIFACTS", "artifacts"))
    metrics_port: int = Field(9106, ge=0, validation_alias=_env("RECSTACK_METRICS_PORT", "metrics_port"))
    redis_prefix: str = Field("", validation_alias=_env("RECSTACK_REDIS_PREFIX", "redis_prefix"))
    group_id: str = Field(
        "recstack-feature-stream", validation_alias=_env("RECSTACK_STREAM_GROUP", "group_id")
    )
    batch_size: int = Field(500, ge=1, validation_alias=_env("RECSTACK_STREAM_BATCH", "batch_size"))
    batch_within_s: float = Field(
        0.01, gt=0, validation_alias=_env("RECSTACK_STREAM_BATCH_WITHIN_S", "batch_within_s")
    )
    reward_window_s: float = Field(
        1800.0, ge=0, validation_alias=_env("RECSTACK_REWARD_WINDOW_S", "reward_window_s")
    )
    settle_interval_s: float = Field(
        5.0, gt=0, validation_alias=_env("RECSTACK_SETTLE_INTERVAL_S", "settle_interval_s")
    )
    catalog_check_s: float = Field(
        10.0, gt=0, validation_alias=_env("RECSTACK_CATALOG_CHECK_S", "catalog_check_s")
    )
    dedup_ttl_s: int = Field(3600, ge=1, validation_alias=_env("RECSTACK_DEDUP_TTL_S", "dedup_ttl_s"))
    segment_arm_ttl_s: int = Field(
        30 * 86400, ge=0, validation_alias=_env("RECSTACK_SEGMENT_ARM_TTL_S", "segment_arm_ttl_s")
    )
    session_timeout_s: float = Field(
        10.0, gt=1, validation_alias=_env("RECSTACK_STREAM_SESSION_TIMEOUT_S", "session_timeout_s")
    )
    commit_interval_s: float = Field(
        2.8, gt=0, validation_alias=_env("RECSTACK_STREAM_COMMIT_INTERVAL_S", "commit_interval_s")
    )
    popularity_half_life_s: float = Field(
        86400.0, ge=0, validation_alias=_env("RECSTACK_POPULARITY_HALF_LIFE_S", "popularity_half_life_s")
    )
    lag_interval_s: float = Field(
        1.0, gt=0, validation_alias=_env("RECSTACK_LAG_INTERVAL_S", "lag_interval_s")
    )
    web_port: int = Field(0, ge=0, validation_alias=_env("RECSTACK_STREAM_WEB_PORT", "web_port"))
    log_level: str = Field("info", validation_alias=_env("RECSTACK_LOG_LEVEL", "log_level"))

    def kafka_urls(self, scheme: str = "kafka") -> list[str]:
        """Faust broker URLs (scheme://host:port) of KAFKA_BOOTSTRAP_SERVERS."""
        hosts = [h.strip().removeprefix("kafka://") for h in self.kafka_bootstrap_servers.split(",")]
        hosts = [h for h in hosts if h]
        if not hosts:
            raise ValueError("KAFKA_BOOTSTRAP_SERVERS is empty; set it to host:port[,host:port]")
        return [f"{scheme}://{h}" for h in hosts]


def writer_from_settings(redis: aioredis.Redis, settings: StreamSettings) -> FeatureWriter:
    """The FeatureWriter both stream transports (Faust and raw aiokafka) write with; it applies the
    contextual bandit's rewards too (``LinearRewardWriter``)."""
    return FeatureWriter(
        redis,
        keys=Keys(settings.redis_prefix),
        catalog=load_catalog_or_empty(settings.artifacts),
        dedup_ttl_s=settings.dedup_ttl_s,
        reward_window_s=settings.reward_window_s,
        popularity_half_life_s=settings.popularity_half_life_s,
        segment_arm_ttl_s=settings.segment_arm_ttl_s,
        bandit_rewards=LinearRewardWriter(redis, settings.redis_prefix, settings.reward_window_s),
    )
