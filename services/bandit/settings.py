"""Bandit settings (environment variables in parentheses)."""

from __future__ import annotations

from pydantic import Field

from recstack.rpc.settings import ServiceSettings, env


class BanditSettings(ServiceSettings):
    """Ports 50055 / 9105; Redis (REDIS_URL) holds the arms; cache TTL and Redis deadline in seconds."""

    port: int = Field(50055, ge=0, le=65535, validation_alias=env("RECSTACK_PORT"))
    metrics_port: int = Field(9105, ge=0, le=65535, validation_alias=env("RECSTACK_METRICS_PORT"))
    redis_url: str = Field("redis://localhost:6379/0", validation_alias=env("REDIS_URL"))
    redis_prefix: str = Field("", validation_alias=env("RECSTACK_REDIS_PREFIX"))
    explore_slots: int = Field(1, ge=0, le=100, validation_alias=env("RECSTACK_EXPLORE_SLOTS"))
    prior_alpha: float = Field(1.0, gt=0, validation_alias=env("RECSTACK_PRIOR_ALPHA"))
    prior_beta: float = Field(1.0, gt=0, validation_alias=env("RECSTACK_PRIOR_BETA"))
    n_draws: int = Field(200, ge=1, le=100_000, validation_alias=env("RECSTACK_PROPENSITY_DRAWS"))
    arms_ttl_s: float = Field(5.0, ge=0, validation_alias=env("RECSTACK_ARMS_TTL_S"))
    arms_timeout_s: float = Field(0.05, gt=0, validation_alias=env("RECSTACK_ARMS_TIMEOUT_S"))
    seed: int | None = Field(None, validation_alias=env("RECSTACK_BANDIT_SEED"))
