"""In-process gRPC servers for unit tests: a real grpc.aio server on a free port and a channel."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc


@contextlib.asynccontextmanager
async def in_process_channel(
    *servicers: tuple[Callable[[Any, grpc.aio.Server], None], Any],
) -> AsyncIterator[grpc.aio.Channel]:
    """Serve ``(add_XServicer_to_server, servicer)`` pairs on 127.0.0.1 and yield a channel to
    them; the channel is closed and the server stopped on exit."""
    server = grpc.aio.server()
    for register, servicer in servicers:
        register(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield channel
    finally:
        await channel.close()
        await server.stop(0)
