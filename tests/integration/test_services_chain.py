"""The five services as real processes over a real Redis and a trained bundle.

Starts retrieval, ranking, rerank, bandit and the gateway with `python -m services.NAME` on free
ports, then checks the public API, health, metrics, degradation when a downstream dies and
recovery after restart, and graceful shutdown.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recstack.artifacts import write_current
from recstack.devstack.embedded import free_port
from recstack.events.schema import parse_event
from recstack.events.topics import ensure_topics
from recstack.features.keys import Keys
from recstack.redis_cluster import sync_from_url
from recstack.v1 import gateway_pb2, gateway_pb2_grpc
from tests.integration.procs import (
    REPO,
    SERVICES,
    Service,
    metrics,
    service_env,
    service_stack,
    start_all,
    stop_all,
    wait_serving,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def stack(
    small_bundle: Path, redis_server: str, kafka_broker: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Service]]:
    logs = tmp_path_factory.mktemp("service-logs")
    # A private copy: the hot-reload test moves its CURRENT.
    artifacts = tmp_path_factory.mktemp("artifacts") / "bundle"
    shutil.copytree(small_bundle, artifacts)
    services = service_stack(artifacts, redis_server, logs, stage_timeout_s=3, RECSTACK_RELOAD_S="0.5")
    gw = services["gateway"].env
    gw["KAFKA_BOOTSTRAP_SERVERS"] = kafka_broker
    gw["RECSTACK_EVENTS_TOPIC"] = f"impressions-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_broker, {gw["RECSTACK_EVENTS_TOPIC"]: 1})
    try:
        start_all(services.values())
        yield services
    finally:
        stop_all(services.values())


@pytest.fixture(scope="module")
def known_user(small_bundle: Path, redis_server: str) -> tuple[str, list[str]]:
    """A user of the bundle with three recent items written to Redis."""
    version = (small_bundle / "CURRENT").read_text().strip()
    users = json.loads((small_bundle / version / "users.json").read_text())["user_ids"]
    items = json.loads((small_bundle / version / "catalog.json").read_text())["item_ids"]
    user, recent = str(users[0]), [str(x) for x in items[:3]]
    client = sync_from_url(redis_server)
    key = Keys().recent_items(user)
    client.delete(key)
    client.rpush(key, *recent)
    client.close()
    return user, recent


def recommend(
    stack: dict[str, Service], request: gateway_pb2.RecommendRequest
) -> gateway_pb2.RecommendResponse:
    with grpc.insecure_channel(f"127.0.0.1:{stack['gateway'].port}") as channel:
        return gateway_pb2_grpc.GatewayStub(channel).Recommend(request, timeout=20)


def test_recommend_runs_the_full_chain(stack: dict[str, Service], known_user: tuple[str, list[str]]) -> None:
    user, recent = known_user
    reply = recommend(
        stack, gateway_pb2.RecommendRequest(user_id=user, k=10, context={"attributes": {"device": "ios"}})
    )
    ids = [x.item_id for x in reply.items]
    assert len(ids) == 10 and len(set(ids)) == 10
    assert not set(recent) & set(ids)
    assert not reply.degraded, dict(reply.skipped)
    assert list(reply.stages) == ["features", "retrieval", "ranking", "rerank", "bandit"]
    assert reply.variant in {"control", "treatment"}
    assert reply.request_id
    assert {"retrieval", "ranking", "rerank", "bandit"} <= set(reply.model_versions)
    assert all(0 < x.propensity <= 1 for x in reply.items)
    assert "p_click" in reply.items[0].scores


def test_live_order_is_the_offline_pipeline_order(
    stack: dict[str, Service], known_user: tuple[str, list[str]], small_bundle: Path
) -> None:
    """One code path: the ranked part of a live reply (before the bandit's exploration slots) is the
    order the serving cores give in process for the same user features, fusion included."""
    import numpy as np

    from recstack.artifacts import load_bundle
    from recstack.features.types import UserFeatures
    from recstack.serving.ranker import Ranker, ranking_components
    from recstack.serving.reranker import Reranker
    from recstack.serving.retriever import Retriever

    user, recent = known_user
    reply = recommend(stack, gateway_pb2.RecommendRequest(user_id=user, k=10))
    assert list(reply.stages) == ["features", "retrieval", "ranking", "rerank", "bandit"], dict(reply.skipped)
    bundle = load_bundle(small_bundle)
    uf = UserFeatures(user_id=user, recent_items=recent)
    ids, _, comps = Retriever(bundle).retrieve(uf, 200, set(recent))
    combined, per_task = Ranker(bundle).score(uf, ids)
    comps = {**comps, **ranking_components(combined, per_task)}
    order = np.argsort(-combined, kind="stable")
    ranked = [ids[i] for i in order]
    final_ids, final = Reranker(bundle).rerank(
        uf, ranked, combined[order], components={k: np.asarray(v)[order] for k, v in comps.items()}
    )
    offline = dict(zip(final_ids, final, strict=True))
    live = [x.item_id for x in reply.items][:8]  # the bandit explores at most 2 of the 10 slots
    # the live chain carries scores as float32: allow ties to break the other way, nothing more
    assert all(offline[a] >= offline[b] - 1e-4 for a, b in zip(live, live[1:], strict=False)), live
    assert min(offline[x] for x in live) >= final[len(live) - 1] - 1e-4
    assert set(live) <= set(final_ids[:10])


async def test_impression_event_reaches_kafka(
    stack: dict[str, Service], known_user: tuple[str, list[str]], kafka_broker: str
) -> None:
    import asyncio

    from aiokafka import AIOKafkaConsumer

    request = gateway_pb2.RecommendRequest(user_id=known_user[0], k=4)
    reply = await asyncio.to_thread(recommend, stack, request)
    consumer = AIOKafkaConsumer(
        stack["gateway"].env["RECSTACK_EVENTS_TOPIC"],
        bootstrap_servers=kafka_broker,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        found = None
        deadline = time.monotonic() + 30
        while found is None and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=1000)
            for records in batches.values():
                for record in records:
                    event = parse_event(record.value)
                    if event.request_id == reply.request_id:
                        found = event
    finally:
        await consumer.stop()
    assert found is not None, "no impression event with the reply's request_id"
    assert found.event_type == "impression" and found.user_id == known_user[0]
    assert list(found.items) == [x.item_id for x in reply.items]
    assert list(found.positions) == [0, 1, 2, 3]
    assert found.propensities == pytest.approx([x.propensity for x in reply.items])
    assert found.variant == reply.variant and found.experiment_id
    assert found.model_versions == dict(reply.model_versions)


def test_unknown_user_gets_cold_start(stack: dict[str, Service]) -> None:
    reply = recommend(stack, gateway_pb2.RecommendRequest(user_id="never-seen-user", k=5))
    assert len({x.item_id for x in reply.items}) == 5
    assert list(reply.stages) == ["features", "popularity", "bandit"]
    assert not reply.degraded
    assert reply.variant in {"control", "treatment"}


def test_every_service_reports_serving(stack: dict[str, Service]) -> None:
    for service in stack.values():
        with grpc.insecure_channel(f"127.0.0.1:{service.port}") as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            for name in ("", SERVICES[service.name]):
                reply = stub.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
                assert reply.status == health_pb2.HealthCheckResponse.SERVING, service.name


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (gateway_pb2.RecommendRequest(user_id="u", k=0), "k must be between 1 and 100, got 0"),
        (gateway_pb2.RecommendRequest(user_id="", k=5), "user_id is required"),
        (
            gateway_pb2.RecommendRequest(user_id="u", k=5, context={"attributes": {"bad key!": "x"}}),
            "context.attributes key",
        ),
        (
            gateway_pb2.RecommendRequest(user_id="u", k=5, context={"force_variant": "nope"}),
            "force_variant 'nope'",
        ),
    ],
)
def test_bad_arguments(
    stack: dict[str, Service], request_: gateway_pb2.RecommendRequest, message: str
) -> None:
    with pytest.raises(grpc.RpcError) as info:
        recommend(stack, request_)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_metrics_endpoints(stack: dict[str, Service], known_user: tuple[str, list[str]]) -> None:
    recommend(stack, gateway_pb2.RecommendRequest(user_id=known_user[0], k=3))
    text = metrics(stack["gateway"])
    assert 'recstack_grpc_requests_total{code="OK",method="Recommend",service="recstack.v1.Gateway"}' in text
    assert "recstack_gateway_requests_total" in text
    assert 'recstack_gateway_stage_latency_seconds_bucket{le="0.1",outcome="ok",stage="retrieval"}' in text
    assert 'code="OK",method="Rank",service="recstack.v1.Ranking"' in metrics(stack["ranking"])


def test_ranking_down_degrades_then_recovers(
    stack: dict[str, Service], known_user: tuple[str, list[str]]
) -> None:
    ranking = stack["ranking"]
    request = gateway_pb2.RecommendRequest(user_id=known_user[0], k=10)
    ranking.stop()
    reply = recommend(stack, request)
    assert len({x.item_id for x in reply.items}) == 10
    assert reply.degraded
    assert "ranking" in reply.skipped and "ranking" not in reply.stages
    assert "retrieval" in reply.stages and "bandit" in reply.stages

    ranking.start()
    wait_serving(ranking)
    deadline = time.monotonic() + 20
    while True:
        reply = recommend(stack, request)
        if not reply.degraded or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert not reply.degraded, dict(reply.skipped)
    assert "ranking" in reply.stages


def test_new_bundle_is_picked_up_without_restart(
    stack: dict[str, Service], known_user: tuple[str, list[str]]
) -> None:
    artifacts = Path(stack["ranking"].env["RECSTACK_ARTIFACTS"])
    old = (artifacts / "CURRENT").read_text().strip()
    new = f"{old}-reloaded"
    shutil.copytree(artifacts / old, artifacts / new)
    manifest = json.loads((artifacts / new / "manifest.json").read_text())
    manifest["version"] = new
    (artifacts / new / "manifest.json").write_text(json.dumps(manifest))
    write_current(artifacts, new)
    request = gateway_pb2.RecommendRequest(user_id=known_user[0], k=5)
    deadline = time.monotonic() + 30
    versions: dict[str, str] = {}
    while time.monotonic() < deadline:
        reply = recommend(stack, request)
        versions = dict(reply.model_versions)
        if all(versions.get(s) == new for s in ("retrieval", "ranking", "rerank")):
            break
        time.sleep(0.3)
    assert all(versions.get(s) == new for s in ("retrieval", "ranking", "rerank")), versions
    assert not reply.degraded, dict(reply.skipped)


def test_sigterm_exits_zero(stack: dict[str, Service]) -> None:
    bandit = stack["bandit"]
    assert bandit.proc is not None
    bandit.proc.send_signal(signal.SIGTERM)
    assert bandit.proc.wait(20) == 0
    assert "stopped" in bandit.log_tail()


def test_missing_bundle_and_busy_port_exit_2(tmp_path: Path, redis_server: str) -> None:
    env = service_env("ranking", free_port(), 0, tmp_path / "nothing", redis_server)
    done = subprocess.run(
        [sys.executable, "-m", "services.ranking"], cwd=REPO, env=env, capture_output=True, timeout=120
    )
    assert done.returncode == 2
    err = done.stderr.decode()
    assert "recstack train --data synthetic --out artifacts" in err
    assert "Traceback" not in err

    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        env = service_env("bandit", sock.getsockname()[1], 0, tmp_path, redis_server)
        done = subprocess.run(
            [sys.executable, "-m", "services.bandit"], cwd=REPO, env=env, capture_output=True, timeout=120
        )
    assert done.returncode == 2
    err = done.stderr.decode().strip()
    assert "already in use" in err and "RECSTACK_PORT" in err
    assert len(err.splitlines()) == 1


def test_gateway_with_in_process_stages(
    small_bundle: Path, redis_server: str, known_user: tuple[str, list[str]], tmp_path: Path
) -> None:
    """RECSTACK_STAGES=inprocess: retrieval, ranking and rerank run inside the gateway (only the
    bandit is another process) and the reply is the same chain's."""
    services = service_stack(
        small_bundle, redis_server, tmp_path, stage_timeout_s=3, RECSTACK_STAGES="inprocess"
    )
    wanted = [services["bandit"], services["gateway"]]
    try:
        start_all(wanted)
        user, recent = known_user
        reply = recommend(services, gateway_pb2.RecommendRequest(user_id=user, k=10))
        assert list(reply.stages) == ["features", "retrieval", "ranking", "rerank", "bandit"], dict(
            reply.skipped
        )
        assert (
            not reply.degraded
            and len(reply.items) == 10
            and not set(recent) & {x.item_id for x in reply.items}
        )
        version = (small_bundle / "CURRENT").read_text().strip()
        assert reply.model_versions["retrieval"] == reply.model_versions["rerank"] == version
        assert "recstack_batch_size_bucket" in metrics(services["gateway"])  # micro-batched in process
    finally:
        stop_all(wanted)
