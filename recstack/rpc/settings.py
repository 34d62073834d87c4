"""Typed settings shared by every gRPC service, read once from the environment.

| variable               | field          | meaning                                              |
|------------------------|----------------|------------------------------------------------------|
| RECSTACK_HOST          | host           | bind address (default 0.0.0.0)                       |
| RECSTACK_PORT          | port           | gRPC port (per-service default, docs/DESIGN.md)      |
| RECSTACK_METRICS_PORT  | metrics_port   | Prometheus HTTP port; 0 disables the endpoint        |
| RECSTACK_GRACE_S       | grace_s        | drain time for in-flight calls on SIGTERM (10 s)     |
| RECSTACK_LOG_LEVEL     | log_level      | DEBUG, INFO, WARNING, ERROR                          |
| RECSTACK_MAX_CONNECTION_AGE_S | max_connection_age_s | reconnect/re-resolve after (300 s; 0 never) |
"""

from __future__ import annotations

import sys
from typing import TypeVar

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


def env(name: str) -> AliasChoices:
    """Alias so that a field is read from the environment variable ``name``."""
    return AliasChoices(name, name.lower())


class ServiceSettings(BaseSettings):
    """Settings every service has; subclasses override the port defaults."""

    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", case_sensitive=False)

    host: str = Field("0.0.0.0", validation_alias=env("RECSTACK_HOST"))
    port: int = Field(50050, ge=0, le=65535, validation_alias=env("RECSTACK_PORT"))
    metrics_port: int = Field(0, ge=0, le=65535, validation_alias=env("RECSTACK_METRICS_PORT"))
    grace_s: float = Field(10.0, ge=0.0, validation_alias=env("RECSTACK_GRACE_S"))
    log_level: str = Field("INFO", validation_alias=env("RECSTACK_LOG_LEVEL"))
    # A connection older than this is closed gracefully (GOAWAY after in-flight calls, up to the
    # grace time): clients reconnect and re-resolve dns:/// targets, so replicas added by a scale-out
    # get traffic within this time (gRPC does not re-resolve healthy connections). 0 = never.
    max_connection_age_s: float = Field(300.0, ge=0, validation_alias=env("RECSTACK_MAX_CONNECTION_AGE_S"))


RELOAD_S = 10.0  # default RECSTACK_RELOAD_S of every service that serves a bundle


class ModelServiceSettings(ServiceSettings):
    """Settings of a service that serves models from a bundle (retrieval, ranking, rerank)."""

    artifacts: str = Field("artifacts", validation_alias=env("RECSTACK_ARTIFACTS"))
    # Seconds between checks of artifacts/CURRENT for a new bundle (a stat of one small file); 0
    # disables hot reload. Every stage serves a promoted bundle within this plus its load time.
    reload_s: float = Field(RELOAD_S, ge=0, validation_alias=env("RECSTACK_RELOAD_S"))


S = TypeVar("S", bound=ServiceSettings)


def load_settings(cls: type[S]) -> S:
    """``cls()`` from the environment; on a bad value print which variable is wrong and exit 2."""
    try:
        return cls()
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = err.get("loc") or ("?",)
            problems.append(f"{str(loc[0]).upper()}: {err.get('msg')}")
        sys.stderr.write(f"error: invalid settings: {'; '.join(problems)}\n")
        raise SystemExit(2) from None
