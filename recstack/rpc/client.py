"""Client helpers: channels to recstack services and calls with a per-call deadline.

Every downstream call carries its own deadline (seconds) and the current request id in the
``x-request-id`` metadata, so the downstream service logs under the same id.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from recstack.logging import current_request_id
from recstack.rpc import tls
from recstack.rpc.server import REQUEST_ID_METADATA

Resp = TypeVar("Resp")

CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    # Reconnect quickly after a downstream restart instead of waiting out the default backoff.
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1_000),
)


class AddressError(ValueError):
    """A service address is not of the form host:port."""


def check_address(address: str, variable: str) -> str:
    """Return ``address`` if it looks like host:port, else raise AddressError naming ``variable``."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise AddressError(f"{variable} must be host:port (e.g. localhost:50052), got {address!r}")
    return address


def insecure_channel(address: str) -> grpc.aio.Channel:
    """An aio channel with keepalive and fast reconnect; close it with ``await channel.close()``.
    TLS (mTLS) when RECSTACK_TLS_CA is set (recstack/rpc/tls.py), despite the name."""
    return tls.aio_channel(address, options=list(CHANNEL_OPTIONS))


def request_metadata(request_id: str | None = None) -> tuple[tuple[str, str], ...]:
    """Metadata carrying the request id (the current one by default)."""
    rid = request_id if request_id is not None else current_request_id()
    return ((REQUEST_ID_METADATA, rid),) if rid else ()


async def call(
    method: Callable[..., Awaitable[Resp]],
    request: Any,
    timeout_s: float,
    request_id: str | None = None,
) -> Resp:
    """Call a unary stub method with a deadline of ``timeout_s`` seconds and the request id.

    Raises grpc.aio.AioRpcError (DEADLINE_EXCEEDED, UNAVAILABLE, ...) on failure.
    """
    return await method(request, timeout=timeout_s, metadata=request_metadata(request_id))
