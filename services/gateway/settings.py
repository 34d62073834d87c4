"""Gateway settings (environment variables in parentheses)."""

from __future__ import annotations

from pydantic import Field, field_validator

from recstack.rpc.client import check_address
from recstack.rpc.settings import ModelServiceSettings, env


class GatewaySettings(ModelServiceSettings):
    """Ports 50051 / 9101 by default; downstream addresses and per-stage deadlines (seconds)."""

    port: int = Field(50051, ge=0, le=65535, validation_alias=env("RECSTACK_PORT"))
    metrics_port: int = Field(9101, ge=0, le=65535, validation_alias=env("RECSTACK_METRICS_PORT"))
    retrieval_addr: str = Field("localhost:50052", validation_alias=env("RETRIEVAL_ADDR"))
    ranking_addr: str = Field("localhost:50053", validation_alias=env("RANKING_ADDR"))
    rerank_addr: str = Field("localhost:50054", validation_alias=env("RERANK_ADDR"))
    bandit_addr: str = Field("localhost:50055", validation_alias=env("BANDIT_ADDR"))
    # Load-balancing policy over the addresses of a stage target (recstack/rpc/balancing.py).
    grpc_lb: str = Field(
        "round_robin", pattern="^(round_robin|pick_first)$", validation_alias=env("RECSTACK_GRPC_LB")
    )
    redis_url: str = Field("redis://localhost:6379/0", validation_alias=env("REDIS_URL"))
    redis_prefix: str = Field("", validation_alias=env("RECSTACK_REDIS_PREFIX"))
    # Empty: impressions are not published.
    kafka_bootstrap_servers: str = Field("", validation_alias=env("KAFKA_BOOTSTRAP_SERVERS"))
    events_topic: str = Field("user-events", validation_alias=env("RECSTACK_EVENTS_TOPIC"))
    # Impressions held while the broker does not acknowledge them; past it they are dropped (counted).
    impression_buffer: int = Field(10_000, ge=1, validation_alias=env("RECSTACK_IMPRESSION_BUFFER"))
    n_candidates: int = Field(200, ge=1, le=2000, validation_alias=env("RECSTACK_N_CANDIDATES"))
    features_timeout_s: float = Field(0.05, gt=0, validation_alias=env("RECSTACK_FEATURES_TIMEOUT_S"))
    retrieval_timeout_s: float = Field(0.15, gt=0, validation_alias=env("RECSTACK_RETRIEVAL_TIMEOUT_S"))
    ranking_timeout_s: float = Field(0.15, gt=0, validation_alias=env("RECSTACK_RANKING_TIMEOUT_S"))
    rerank_timeout_s: float = Field(0.15, gt=0, validation_alias=env("RECSTACK_RERANK_TIMEOUT_S"))
    bandit_timeout_s: float = Field(0.1, gt=0, validation_alias=env("RECSTACK_BANDIT_TIMEOUT_S"))
    diversity_timeout_s: float = Field(0.05, gt=0, validation_alias=env("RECSTACK_DIVERSITY_TIMEOUT_S"))
    popularity_timeout_s: float = Field(0.05, gt=0, validation_alias=env("RECSTACK_POPULARITY_TIMEOUT_S"))
    # Stream popularity (time-decayed weighted events) an item needs before it moves ahead of the
    # bundle's popularity order in the cold-start list; the half-life must be the stream's.
    popularity_min_support: float = Field(5.0, ge=0, validation_alias=env("RECSTACK_POPULARITY_MIN_SUPPORT"))
    popularity_half_life_s: float = Field(
        86400.0, ge=0, validation_alias=env("RECSTACK_POPULARITY_HALF_LIFE_S")
    )
    # Candidates (from the top of the ranked list) the diversity stage chooses the k items from.
    diversity_window: int = Field(50, ge=2, le=2000, validation_alias=env("RECSTACK_DIVERSITY_WINDOW"))
    # Experiments file (YAML or JSON, recstack/experiments/config.py); empty: DEFAULT_EXPERIMENT.
    experiments: str = Field("", validation_alias=env("RECSTACK_EXPERIMENTS"))
    # How often the experiments file is checked for changes (seconds; 0 = never reloaded).
    experiments_reload_s: float = Field(2.0, ge=0, validation_alias=env("RECSTACK_EXPERIMENTS_RELOAD_S"))
    # Sliding window of the catalogue-coverage gauge (seconds).
    coverage_window_s: float = Field(3600.0, gt=0, validation_alias=env("RECSTACK_COVERAGE_WINDOW_S"))

    # "inprocess": retrieval, ranking and rerank run in the gateway's process (the same cores, micro-
    # batched); "grpc": each stage is its own service at *_ADDR. A single stage can also be moved
    # in-process with its address set to "inprocess".
    stages: str = Field("grpc", pattern="^(grpc|inprocess)$", validation_alias=env("RECSTACK_STAGES"))
    # Gateway processes on the shared port (one Python process serves one core at most): worth
    # the cores of the machine with in-process stages (recstack/rpc/workers.py).
    workers: int = Field(1, ge=1, le=64, validation_alias=env("RECSTACK_GATEWAY_WORKERS"))

    @field_validator("retrieval_addr", "ranking_addr", "rerank_addr")
    @classmethod
    def _stage_address(cls, value: str, info: object) -> str:
        if value == "inprocess":
            return value
        name = getattr(info, "field_name", "address").upper()
        return check_address(value, name)

    @field_validator("bandit_addr")
    @classmethod
    def _address(cls, value: str, info: object) -> str:
        name = getattr(info, "field_name", "address").upper()
        return check_address(value, name)

    def in_process(self, stage: str) -> bool:
        """Whether ``stage`` (retrieval, ranking, rerank) runs in the gateway process."""
        return self.stages == "inprocess" or getattr(self, f"{stage}_addr") == "inprocess"
