"""Stage replicas and traces across real processes.

- Load balancing: two bandit processes behind one target ``ipv4:127.0.0.1:P1,127.0.0.1:P2``; the
  gateway's client (GrpcBandit over ``recstack.rpc.client.insecure_channel``) spreads its calls
  over both (their Prometheus counters), and when one replica is SIGKILLed under concurrent calls
  no call fails (the calls in flight on it are retried on the other).
- Tracing: the gateway, the bandit service and the feature stream export OTLP to a receiver this
  test runs (the opentelemetry-proto TraceService over grpc); the bandit's server span is in the
  trace of the caller's traceparent, the child of the gateway's client span, under
  ``stage.bandit`` and ``Recommend``; the impression on Kafka carries the traceparent of its
  ``impression.publish`` span, and the stream's ``stream.apply_batch`` span links to that span.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from recstack.devstack.embedded import free_port
from recstack.events.schema import parse_event
from recstack.features.types import UserFeatures
from recstack.rpc.backends import GrpcBandit
from recstack.rpc.client import insecure_channel
from recstack.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.procs import Service, metrics, service_env, service_stack, start_all, stop_all
from tests.integration.stream_support import read_topic, start_worker, stop_worker, wait_for, worker_env

pytestmark = pytest.mark.integration

N = 40
CONCURRENCY = 8


def explore_ok(service: Service) -> int:
    """The replica's count of successful Explore calls (its Prometheus counter)."""
    pattern = re.compile(
        r'^recstack_grpc_requests_total\{code="OK",method="Explore",service="recstack.v1.Bandit"\} (\S+)$',
        re.M,
    )
    match = pattern.search(metrics(service))
    return int(float(match.group(1))) if match else 0


@pytest.fixture
def bandit_replicas(small_bundle: Path, redis_url: str, tmp_path: Path) -> Iterator[list[Service]]:
    replicas = []
    for i in range(2):
        port, mport = free_port(), free_port()
        env = service_env("bandit", port, mport, small_bundle, redis_url)
        replicas.append(Service("bandit", port, mport, env, tmp_path / f"bandit-{i}.log"))
    try:
        start_all(replicas)
        yield replicas
    finally:
        stop_all(replicas)


async def test_calls_are_balanced_over_replicas_and_survive_a_killed_one(
    bandit_replicas: list[Service],
) -> None:
    target = "ipv4:" + ",".join(f"127.0.0.1:{r.port}" for r in bandit_replicas)
    channel = insecure_channel(target)
    bandit = GrpcBandit(channel, timeout_s=5.0)
    items = [f"i{i}" for i in range(20)]
    scores = np.linspace(1.0, 0.0, len(items))

    async def explore() -> None:
        result = await bandit.explore(UserFeatures("u1"), items, scores, 5, "thompson", 1)
        assert len(result.items) == 5

    try:
        for _ in range(N):
            await explore()
        first = [explore_ok(r) for r in bandit_replicas]
        assert sum(first) == N
        assert min(first) >= N // 4, f"round_robin should spread the calls: {first}"

        # The replica dies while calls are in flight on it (8 concurrent callers): those calls
        # fail UNAVAILABLE at the client and are retried on the survivor (the retry policy).
        survivor, victim = bandit_replicas
        assert victim.proc is not None
        failures: list[str] = []
        done = 0

        async def caller() -> None:
            nonlocal done
            while done < N:
                done += 1
                try:
                    await explore()
                except grpc.aio.AioRpcError as exc:
                    failures.append(f"{exc.code().name}: {exc.details()}")
                if done == N // 4:
                    victim.proc.send_signal(signal.SIGKILL)

        await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
        assert victim.proc.wait(10) == -signal.SIGKILL
        assert failures == []
        after = explore_ok(survivor) - first[0]
        assert N - N // 4 <= after <= N + CONCURRENCY
    finally:
        await channel.close()


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace receiver that keeps every span with its service name."""

    def __init__(self) -> None:
        self.spans: list[dict[str, object]] = []
        self.lock = threading.Lock()

    def Export(self, request, context):  # noqa: ANN001, N802
        with self.lock:
            for resource_spans in request.resource_spans:
                attrs = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append(
                            {
                                "service": attrs.get("service.name", ""),
                                "name": span.name,
                                "trace_id": span.trace_id.hex(),
                                "span_id": span.span_id.hex(),
                                "parent": span.parent_span_id.hex(),
                                "kind": span.kind,
                                "links": [(x.trace_id.hex(), x.span_id.hex()) for x in span.links],
                            }
                        )
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, int]]:
    servicer = Receiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield servicer, port
    finally:
        server.stop(0)


def test_one_trace_from_the_caller_to_the_stage_service_and_the_feature_stream(
    small_bundle: Path,
    redis_url: str,
    kafka_broker: str,
    kafka_topic: Callable[..., str],
    tmp_path: Path,
    receiver: tuple[Receiver, int],
) -> None:
    collector, port = receiver
    otel = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    topic = kafka_topic(prefix="traced-events")
    services = service_stack(small_bundle, redis_url, tmp_path, stage_timeout_s=5, **otel)
    gateway, bandit = services["gateway"], services["bandit"]
    for stage in ("retrieval", "ranking", "rerank"):  # in the gateway: only the bandit is remote
        gateway.env[f"{stage.upper()}_ADDR"] = "inprocess"
    gateway.env.update(
        OTEL_SERVICE_NAME="gateway-under-test",
        KAFKA_BOOTSTRAP_SERVERS=kafka_broker,
        RECSTACK_EVENTS_TOPIC=topic,
    )
    stream_log = tmp_path / "stream.log"
    stream_env = worker_env(
        kafka_broker, topic, kafka_topic(prefix="dlq"), redis_url, small_bundle, free_port(), **otel
    )
    stream = start_worker(stream_env, stream_log)
    try:
        start_all([bandit, gateway])
        trace_id, parent_id = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
        metadata = (("traceparent", f"00-{trace_id}-{parent_id}-01"),)
        with grpc.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            reply = gateway_pb2_grpc.GatewayStub(channel).Recommend(
                gateway_pb2.RecommendRequest(user_id="tracing-user", k=5), timeout=20, metadata=metadata
            )
        assert "bandit" in reply.stages, dict(reply.skipped)

        def spans() -> dict[tuple[str, str], dict[str, object]]:
            with collector.lock:
                return {(s["service"], s["name"]): s for s in collector.spans if s["trace_id"] == trace_id}

        wanted = {
            ("gateway-under-test", "/recstack.v1.Gateway/Recommend"),
            ("gateway-under-test", "Recommend"),
            ("gateway-under-test", "stage.bandit"),
            ("gateway-under-test", "/recstack.v1.Bandit/Explore"),
            ("gateway-under-test", "impression.publish"),
            ("recstack.v1.Bandit", "/recstack.v1.Bandit/Explore"),
        }
        got = wait_for(lambda: spans() if wanted <= set(spans()) else None, "the spans", stream, stream_log)
        server = got[("gateway-under-test", "/recstack.v1.Gateway/Recommend")]
        root = got[("gateway-under-test", "Recommend")]
        stage = got[("gateway-under-test", "stage.bandit")]
        client = got[("gateway-under-test", "/recstack.v1.Bandit/Explore")]
        remote = got[("recstack.v1.Bandit", "/recstack.v1.Bandit/Explore")]
        publish = got[("gateway-under-test", "impression.publish")]
        assert server["parent"] == parent_id
        assert root["parent"] == server["span_id"] and stage["parent"] == root["span_id"]
        assert client["parent"] == stage["span_id"]
        assert remote["parent"] == client["span_id"]
        assert remote["kind"] == 2 and client["kind"] == 3  # SPAN_KIND_SERVER, SPAN_KIND_CLIENT
        assert publish["parent"] == root["span_id"]

        # the impression on the topic names the publish span; the stream's batch span links to it
        (record,) = asyncio.run(read_topic(kafka_broker, topic, 1))
        event = parse_event(record.value)
        assert event.request_id == reply.request_id
        assert event.context["traceparent"].startswith(f"00-{trace_id}-{publish['span_id']}-")

        def stream_span() -> dict[str, object] | None:
            with collector.lock:
                for s in collector.spans:
                    if s["name"] == "stream.apply_batch" and (trace_id, publish["span_id"]) in s["links"]:
                        return s
            return None

        batch = wait_for(stream_span, "the stream's linked span", stream, stream_log)
        assert batch["service"] == "recstack-feature-stream"
        with collector.lock:
            health = [s for s in collector.spans if "Health" in str(s["name"])]
        assert health == []  # probes are not traced
    finally:
        stop_worker(stream)
        stop_all([bandit, gateway])
