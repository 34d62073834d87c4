"""Ranking settings: RECSTACK_PORT (50053), RECSTACK_METRICS_PORT (9103), RECSTACK_ARTIFACTS."""

from __future__ import annotations

from pydantic import Field

from recstack.rpc.settings import ModelServiceSettings, env


class RankingSettings(ModelServiceSettings):
    port: int = Field(50053, ge=0, le=65535, validation_alias=env("RECSTACK_PORT"))
    metrics_port: int = Field(9103, ge=0, le=65535, validation_alias=env("RECSTACK_METRICS_PORT"))
