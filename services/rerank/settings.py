"""Rerank settings: RECSTACK_PORT (50054), RECSTACK_METRICS_PORT (9104), RECSTACK_ARTIFACTS."""

from __future__ import annotations

from pydantic import Field

from recstack.rpc.settings import ModelServiceSettings, env


class RerankSettings(ModelServiceSettings):
    port: int = Field(50054, ge=0, le=65535, validation_alias=env("RECSTACK_PORT"))
    metrics_port: int = Field(9104, ge=0, le=65535, validation_alias=env("RECSTACK_METRICS_PORT"))
