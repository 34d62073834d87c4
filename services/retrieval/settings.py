"""Retrieval settings: RECSTACK_PORT (50052), RECSTACK_METRICS_PORT (9102), RECSTACK_ARTIFACTS."""

from __future__ import annotations

from pydantic import Field

from recstack.rpc.settings import ModelServiceSettings, env


class RetrievalSettings(ModelServiceSettings):
    port: int = Field(50052, ge=0, le=65535, validation_alias=env("RECSTACK_PORT"))
    metrics_port: int = Field(9102, ge=0, le=65535, validation_alias=env("RECSTACK_METRICS_PORT"))
