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
from recstack.rpc.balancing import channel_options, check_target
from recstack.rpc.server import REQUEST_ID_METADATA
from recstack.rpc.tracing import client_interceptors

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


def check_address(address: str, variable: str) -> str:
    """Return ``address`` if it is a gRPC target (host:port, dns:///host:port, ipv4:a:p,b:p ...; see
    recstack.rpc.balancing), else raise AddressError naming ``variable``."""
    return check_target(address, variable)


def insecure_channel(address: str) -> grpc.aio.Channel:
    """An aio channel with keepalive, fast reconnect, RECSTACK_GRPC_LB load balancing over the
    target's addresses, retries of UNAVAILABLE, TLS (mTLS) when RECSTACK_TLS_CA is set
    (recstack/rpc/tls.py, despite the name) and, while tracing is on, trace propagation; close it
    with ``await channel.close()``."""
    return tls.aio_channel(
        address, options=[*CHANNEL_OPTIONS, *channel_options()], interceptors=client_interceptors()
    )


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
