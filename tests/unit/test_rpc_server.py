"""serve(): health before/after load, metrics, request ids, shutdown, start-up errors."""

from __future__ import annotations

import asyncio
import socket
import urllib.request

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recstack.devstack.embedded import free_port
from recstack.logging import current_request_id
from recstack.rpc.client import call, insecure_channel
from recstack.rpc.server import ServeError, StartupError, serve
from recstack.rpc.settings import ServiceSettings
from recstack.v1 import common_pb2, ranking_pb2, ranking_pb2_grpc
from services.ranking.servicer import RankingServicer

SERVICE = "recstack.v1.Ranking"


class FakeRanker:
    def __init__(self) -> None:
        self.request_ids: list[str] = []

    def rank(
        self, user: object, candidates: list[str], model: str, weights: object
    ) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
        self.request_ids.append(current_request_id())
        scores = np.arange(len(candidates), dtype=np.float64)
        order = np.argsort(-scores)
        return [candidates[i] for i in order], scores[order], {"click": scores[order] / 10}

    def rank_many(self, requests: list) -> list:
        return [self.rank(*r) for r in requests]


def settings(metrics: bool = True) -> ServiceSettings:
    return ServiceSettings(
        host="127.0.0.1", port=free_port(), metrics_port=free_port() if metrics else 0, grace_s=1.0
    )


async def health_status(channel: grpc.aio.Channel, service: str) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=2)
    return reply.status


async def test_health_metrics_request_id_and_stop() -> None:
    cfg = settings()
    core = FakeRanker()
    servicer = RankingServicer()
    release = asyncio.Event()
    ready = asyncio.Event()
    stop = asyncio.Event()

    async def load() -> None:
        await release.wait()
        servicer.core, servicer.version = core, "v-test"

    task = asyncio.create_task(
        serve(
            lambda s: ranking_pb2_grpc.add_RankingServicer_to_server(servicer, s),
            SERVICE,
            cfg,
            load,
            ready=ready,
            stop=stop,
        )
    )
    channel = insecure_channel(f"127.0.0.1:{cfg.port}")
    try:
        for _ in range(50):
            try:
                status = await health_status(channel, SERVICE)
                break
            except grpc.aio.AioRpcError:
                await asyncio.sleep(0.1)
        assert status == health_pb2.HealthCheckResponse.NOT_SERVING
        stub = ranking_pb2_grpc.RankingStub(channel)
        request = ranking_pb2.RankRequest(
            candidates=common_pb2.Candidates(item_ids=["a", "b", "c"], scores=[0.0, 0.0, 0.0])
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Rank(request, timeout=2)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        release.set()
        await asyncio.wait_for(ready.wait(), 5)
        assert await health_status(channel, "") == health_pb2.HealthCheckResponse.SERVING
        assert await health_status(channel, SERVICE) == health_pb2.HealthCheckResponse.SERVING

        reply = await call(stub.Rank, request, 2.0, request_id="rid-123")
        assert list(reply.candidates.item_ids) == ["c", "b", "a"]
        assert reply.candidates.components["p_click"].values[0] == pytest.approx(0.2)
        assert reply.model_version == "v-test"
        assert core.request_ids == ["rid-123"]

        bad = ranking_pb2.RankRequest(model="xgboost", candidates=request.candidates)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Rank(bad, timeout=2)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "model must be one of" in info.value.details()

        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{cfg.metrics_port}/metrics", timeout=5).read()
        )
        text = body.decode()
        assert 'recstack_grpc_requests_total{code="OK",method="Rank",service="recstack.v1.Ranking"}' in text
        assert 'code="INVALID_ARGUMENT",method="Rank"' in text
        assert "recstack_grpc_request_latency_seconds_bucket" in text
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 10) == 0
        await channel.close()


async def test_port_in_use_is_a_serve_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        cfg = ServiceSettings(host="127.0.0.1", port=port, metrics_port=0)

        async def load() -> None:
            return None

        with pytest.raises(ServeError, match=f"port {port} is already in use.*RECSTACK_PORT"):
            await serve(lambda s: None, SERVICE, cfg, load)


async def test_loader_failure_stops_the_server() -> None:
    cfg = settings(metrics=False)

    async def load() -> None:
        raise StartupError(
            "artifacts/CURRENT is missing; run `recstack train --data synthetic --out artifacts`"
        )

    with pytest.raises(StartupError, match="CURRENT is missing"):
        await serve(lambda s: None, SERVICE, cfg, load)
    # the port is free again
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", cfg.port))


async def test_stop_drains_in_flight_calls() -> None:
    from recstack.exploration.arms import ArmCache
    from recstack.exploration.thompson import ThompsonSlatePolicy
    from recstack.v1 import bandit_pb2, bandit_pb2_grpc
    from services.bandit.servicer import BanditServicer

    async def slow_arms(items: object) -> dict[str, tuple[float, float]]:
        await asyncio.sleep(0.5)
        return {}

    servicer = BanditServicer(ThompsonSlatePolicy(seed=0), ArmCache(slow_arms, timeout_s=2.0))
    cfg = settings(metrics=False)
    ready, stop = asyncio.Event(), asyncio.Event()

    async def load() -> None:
        return None

    task = asyncio.create_task(
        serve(
            lambda s: bandit_pb2_grpc.add_BanditServicer_to_server(servicer, s),
            "recstack.v1.Bandit",
            cfg,
            load,
            ready=ready,
            stop=stop,
        )
    )
    await asyncio.wait_for(ready.wait(), 5)
    channel = insecure_channel(f"127.0.0.1:{cfg.port}")
    stub = bandit_pb2_grpc.BanditStub(channel)
    request = bandit_pb2.ExploreRequest(candidates=[common_pb2.ScoredItem(item_id="a", score=1.0)], k=1)
    in_flight = asyncio.ensure_future(stub.Explore(request, timeout=5))
    await asyncio.sleep(0.2)
    stop.set()
    reply = await in_flight  # finished within the grace period
    assert [x.item_id for x in reply.items] == ["a"]
    assert await asyncio.wait_for(task, 10) == 0
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.Explore(request, timeout=1)
    assert info.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    await channel.close()


async def test_malformed_request_bytes_are_invalid_argument_and_counted() -> None:
    cfg = settings()
    servicer = RankingServicer()
    servicer.core, servicer.version = FakeRanker(), "v"
    stop = asyncio.Event()
    ready = asyncio.Event()

    async def load() -> None:
        return None

    task = asyncio.create_task(
        serve(
            lambda s: ranking_pb2_grpc.add_RankingServicer_to_server(servicer, s),
            SERVICE,
            cfg,
            load,
            ready=ready,
            stop=stop,
        )  # fmt: skip
    )
    await asyncio.wait_for(ready.wait(), 10)
    channel = insecure_channel(f"127.0.0.1:{cfg.port}")
    try:
        raw = channel.unary_unary(
            "/recstack.v1.Ranking/Rank", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await raw(b"\xff\xff\xff garbage", timeout=2)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == "the request is not a valid Rank message"
        body = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{cfg.metrics_port}/metrics", timeout=5).read()
        )
        assert 'code="INVALID_ARGUMENT",method="Rank"' in body.decode()
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
        await channel.close()
