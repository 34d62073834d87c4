"""Every Redis client of recstack is opened here, from REDIS_URL-style URLs.

- ``redis://[user:password@]host:port/db``: plain TCP; an ACL user and password in the URL are
  sent with AUTH (``redis://:password@...`` for the default user);
- ``rediss://user:password@host:port/db``: TLS, the server verified against RECSTACK_REDIS_CA (a
  PEM CA bundle; unset: the system's trust store), its host name checked.

A missing or unreadable RECSTACK_REDIS_CA raises RedisConfigError naming the variable; so does a URL
that is neither redis:// nor rediss:// (unix:// sockets are passed through).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

REDIS_CA_ENV = "RECSTACK_REDIS_CA"
SCHEMES = ("redis://", "rediss://", "unix://")


class RedisConfigError(ValueError):
    """REDIS_URL or RECSTACK_REDIS_CA is unusable; the message names the variable."""


def connection_kwargs(url: str, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Extra keyword arguments of ``from_url`` for ``url``: the CA of a rediss:// URL."""
    environ = os.environ if environ is None else environ
    if not url.startswith(SCHEMES):
        raise RedisConfigError(
            f"REDIS_URL must start with redis://, rediss:// or unix://, got {url.split('@')[-1]!r}"
        )
    if not url.startswith("rediss://"):
        return {}
    kwargs: dict[str, Any] = {"ssl_cert_reqs": "required", "ssl_check_hostname": True}
    ca = environ.get(REDIS_CA_ENV, "")
    if ca:
        try:
            data = Path(ca).read_bytes()
        except OSError as exc:
            raise RedisConfigError(
                f"{REDIS_CA_ENV}={ca}: cannot read the file ({exc.strerror or exc})"
            ) from exc
        if b"-----BEGIN CERTIFICATE" not in data:
            raise RedisConfigError(f"{REDIS_CA_ENV}={ca}: not a PEM certificate bundle")
        kwargs["ssl_ca_certs"] = ca
    return kwargs


def async_redis(url: str, **kwargs: Any) -> Any:
    """``redis.asyncio.Redis.from_url(url, **kwargs)`` with the TLS settings of the URL."""
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url, **connection_kwargs(url), **kwargs)


def sync_redis(url: str, **kwargs: Any) -> Any:
    """``redis.Redis.from_url(url, **kwargs)`` with the TLS settings of the URL."""
    import redis

    return redis.Redis.from_url(url, **connection_kwargs(url), **kwargs)
