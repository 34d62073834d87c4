"""Every Redis client of recstack is opened here, from REDIS_URL-style URLs.

- ``redis://[user:password@]host:port/db``: plain TCP; an ACL user and password in the URL are
  sent with AUTH (``redis://:password@...`` for the default user);
- ``rediss://user:password@host:port/db``: TLS, the server verified against RECSTACK_REDIS_CA (a
  PEM CA bundle; unset: the system's trust store), its host name checked.

With RECSTACK_REDIS_CLUSTER=true the clients are Redis Cluster clients (``REDIS_URL`` names any
one node; recstack/redis_cluster.py has the rest of the cluster support).

A missing or unreadable RECSTACK_REDIS_CA raises RedisConfigError naming the variable; so does a URL
that is neither redis:// nor rediss:// (unix:// sockets are passed through).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from recstack.config_files import read_setting_file

REDIS_CA_ENV = "RECSTACK_REDIS_CA"
CLUSTER_ENV = "RECSTACK_REDIS_CLUSTER"
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
        data = read_setting_file(ca, REDIS_CA_ENV, RedisConfigError)
        if b"-----BEGIN CERTIFICATE" not in data:
            raise RedisConfigError(f"{REDIS_CA_ENV}={ca}: not a PEM certificate bundle")
        kwargs["ssl_ca_certs"] = ca
    return kwargs


def cluster_enabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when RECSTACK_REDIS_CLUSTER is true/1/yes/on."""
    value = (environ if environ is not None else os.environ).get(CLUSTER_ENV, "")
    return value.strip().lower() in ("1", "true", "yes", "on")


def async_redis(url: str, cluster: bool | None = None, **kwargs: Any) -> Any:
    """``redis.asyncio.Redis.from_url(url, **kwargs)`` with the TLS settings of the URL; with
    ``cluster`` (default: RECSTACK_REDIS_CLUSTER) ``redis.asyncio.cluster.RedisCluster.from_url``."""
    if cluster_enabled() if cluster is None else cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, **connection_kwargs(url), **kwargs)
    import redis.asyncio as aioredis

    return aioredis.Redis.from_url(url, **connection_kwargs(url), **kwargs)


def sync_redis(url: str, cluster: bool | None = None, **kwargs: Any) -> Any:
    """The synchronous counterpart of :func:`async_redis` (redis.Redis / redis.cluster.RedisCluster)."""
    if cluster_enabled() if cluster is None else cluster:
        from redis.cluster import RedisCluster

        return RedisCluster.from_url(url, **connection_kwargs(url), **kwargs)
    import redis

    return redis.Redis.from_url(url, **connection_kwargs(url), **kwargs)
