"""The floor of the five-service architecture (``recstack bench serve``): the same transport, no
model work.

``python -m recstack.devstack.floor front --port P --redis URL --echo H:P1,H:P2,H:P3,H:P4`` serves
``recstack.v1.Gateway/Recommend``: one Redis pipeline (3 commands: the user's recent items, genre
scores and stats, as the gateway's features stage reads them), then a call to each of the four
echo servers one after another (a payload the size of a candidate list), and a reply of ``k``
items. ``python -m recstack.devstack.floor echo --port P`` returns what it receives. Each is a
grpc.aio server in its own process, as the stages are.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import grpc

from recstack import redis_client
from recstack.v1 import common_pb2, gateway_pb2

ECHO_METHOD = "/recstack.floor.Echo/Echo"
PAYLOAD = b"x" * 6000  # about 200 candidate ids with scores
ITEMS = [common_pb2.ScoredItem(item_id=f"i{k}", score=1.0 / (k + 1)) for k in range(100)]


def _identity(x: bytes) -> bytes:
    return x


async def _serve(server: grpc.aio.Server, port: int) -> int:
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1.0)
    return 0


async def echo(port: int) -> int:
    async def handle(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "recstack.floor.Echo",
        {"Echo": grpc.unary_unary_rpc_method_handler(handle, _identity, _identity)},
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    return await _serve(server, port)


async def front(port: int, redis_url: str, echoes: list[str]) -> int:

    from recstack.features.keys import Keys

    redis = redis_client.async_redis(redis_url)
    keys = Keys()
    channels = [grpc.aio.insecure_channel(a) for a in echoes]
    calls = [
        c.unary_unary(ECHO_METHOD, request_serializer=_identity, response_deserializer=_identity)
        for c in channels
    ]

    async def recommend(request: gateway_pb2.RecommendRequest, context: grpc.aio.ServicerContext):
        user = request.user_id
        async with redis.pipeline(transaction=False) as pipe:
            pipe.lrange(keys.recent_items(user), 0, 49)
            pipe.hgetall(keys.genre_scores(user))
            pipe.hgetall(keys.user_stats(user))
            await pipe.execute()
        for call in calls:
            await call(PAYLOAD, timeout=1.0)
        return gateway_pb2.RecommendResponse(items=ITEMS[: max(1, request.k)], request_id="floor")

    handler = grpc.method_handlers_generic_handler(
        "recstack.v1.Gateway",
        {
            "Recommend": grpc.unary_unary_rpc_method_handler(
                recommend,
                request_deserializer=gateway_pb2.RecommendRequest.FromString,
                response_serializer=gateway_pb2.RecommendResponse.SerializeToString,
            )
        },
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    try:
        return await _serve(server, port)
    finally:
        for c in channels:
            await c.close()
        await redis.aclose()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m recstack.devstack.floor")
    ap.add_argument("role", choices=("front", "echo"))
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis", default="")
    ap.add_argument("--echo", default="", help="comma-separated host:port of the four echo servers")
    args = ap.parse_args(argv)
    if args.role == "echo":
        return asyncio.run(echo(args.port))
    return asyncio.run(front(args.port, args.redis, [a for a in args.echo.split(",") if a]))


if __name__ == "__main__":
    sys.exit(main())
