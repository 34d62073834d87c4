"""Bandit settings (environment variables in parentheses)."""

from __future__ import annotations

from pydantic import Field

from recstack.rpc.settings import RELOAD_S, ServiceSettings, env


class BanditSettings(ServiceSettings):
    """Ports 50055 / 9105; Redis (REDIS_URL) holds the arms; cache TTL and Redis deadline in seconds.

    Thompson: Beta(RECSTACK_PRIOR_ALPHA, RECSTACK_PRIOR_BETA) is the prior of a cold item (no
    statistics; default 1, 1). A request with a segment draws from the segment's arm whose prior is
    that cold-item prior plus the global arm's evidence scaled down to at most
    RECSTACK_SEGMENT_PRIOR_STRENGTH pseudo-observations (default 10; 0: independent segments).

    Contextual policies (linucb, lints, linucb-hybrid): features of dimension RECSTACK_CONTEXT_DIM
    from the bundle catalogue (RECSTACK_ARTIFACTS; without a bundle the genre features are zero);
    LinUCB bonus RECSTACK_LINUCB_ALPHA, epsilon mix RECSTACK_LINUCB_EPSILON, ridge
    RECSTACK_LINUCB_RIDGE, LinTS scale RECSTACK_LINTS_V; hybrid LinUCB shares the first
    RECSTACK_HYBRID_SHARED_DIM context columns across items (0: the whole row); explored
    contexts are recorded for the stream's reward join with a TTL of RECSTACK_REWARD_WINDOW_S + 1 h
    (RECSTACK_RECORD_CONTEXTS=0 turns recording off). The catalogue is re-read when
    RECSTACK_ARTIFACTS/CURRENT changes (checked every RECSTACK_RELOAD_S, 0 = never).
    """

    port: int = Field(50055, ge=0, le=65535, validation_alias=env("RECSTACK_PORT"))
    metrics_port: int = Field(9105, ge=0, le=65535, validation_alias=env("RECSTACK_METRICS_PORT"))
    redis_url: str = Field("redis://localhost:6379/0", validation_alias=env("REDIS_URL"))
    redis_prefix: str = Field("", validation_alias=env("RECSTACK_REDIS_PREFIX"))
    explore_slots: int = Field(1, ge=0, le=100, validation_alias=env("RECSTACK_EXPLORE_SLOTS"))
    prior_alpha: float = Field(1.0, gt=0, validation_alias=env("RECSTACK_PRIOR_ALPHA"))
    prior_beta: float = Field(1.0, gt=0, validation_alias=env("RECSTACK_PRIOR_BETA"))
    segment_prior_strength: float = Field(
        10.0, ge=0, allow_inf_nan=False, validation_alias=env("RECSTACK_SEGMENT_PRIOR_STRENGTH")
    )
    n_draws: int = Field(200, ge=1, le=100_000, validation_alias=env("RECSTACK_PROPENSITY_DRAWS"))
    arms_ttl_s: float = Field(5.0, ge=0, validation_alias=env("RECSTACK_ARMS_TTL_S"))
    arms_timeout_s: float = Field(0.05, gt=0, validation_alias=env("RECSTACK_ARMS_TIMEOUT_S"))
    seed: int | None = Field(None, validation_alias=env("RECSTACK_BANDIT_SEED"))
    artifacts: str = Field("artifacts", validation_alias=env("RECSTACK_ARTIFACTS"))
    context_dim: int = Field(32, ge=5, le=1024, validation_alias=env("RECSTACK_CONTEXT_DIM"))
    linucb_alpha: float = Field(1.0, ge=0, validation_alias=env("RECSTACK_LINUCB_ALPHA"))
    linucb_epsilon: float = Field(0.05, ge=0, le=1, validation_alias=env("RECSTACK_LINUCB_EPSILON"))
    linucb_ridge: float = Field(1.0, gt=0, validation_alias=env("RECSTACK_LINUCB_RIDGE"))
    lints_v: float = Field(1.0, ge=0, validation_alias=env("RECSTACK_LINTS_V"))
    hybrid_shared_dim: int = Field(0, ge=0, validation_alias=env("RECSTACK_HYBRID_SHARED_DIM"))
    reward_window_s: float = Field(1800.0, ge=0, validation_alias=env("RECSTACK_REWARD_WINDOW_S"))
    record_contexts: bool = Field(True, validation_alias=env("RECSTACK_RECORD_CONTEXTS"))
    reload_s: float = Field(RELOAD_S, ge=0, validation_alias=env("RECSTACK_RELOAD_S"))
