"""Transport security and caller authentication with the five services as real processes.

Every service serves TLS and requires client certificates (mTLS) from a throwaway CA; the gateway
authenticates callers with API keys (a second gateway process with JWTs), rate-limits per caller,
reads Redis as an ACL user with a password, and signs the impressions it publishes. The stages
refuse callers without a certificate of the CA, so a gateway reply that ran every stage proves the
gateway -> stage hop over mTLS.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import jwt
import pytest
import redis
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc

from recstack.devstack.embedded import free_port
from recstack.events.signing import Verifier, new_secret
from recstack.events.topics import ensure_topics
from recstack.features.keys import Keys
from recstack.metrics_text import sample, scrape
from recstack.rpc import tls
from recstack.rpc.certs import DevPki, dev_pki
from recstack.v1 import gateway_pb2, gateway_pb2_grpc
from services.gateway.auth import hash_key
from tests.integration.procs import REPO, SERVICES, Service, service_stack, stop_all, wait_serving

pytestmark = pytest.mark.integration

KEYS = {"web": "key-web-0123456789", "flood": "key-flood-0123456789", "batch": "key-batch-0123456789"}
JWT_SECRET = "jwt-secret-for-tests-0123456789abcdef"
REDIS_USER, REDIS_PASSWORD = "recstack-svc", "redis-pw-0123456789"


def acl_url(redis_server: str) -> str:
    """A URL of the same Redis as an ACL user with a password (created here)."""
    client = redis.Redis.from_url(redis_server)
    try:
        client.acl_setuser(REDIS_USER, enabled=True, passwords=[f"+{REDIS_PASSWORD}"], keys=["*"],
                           channels=["*"], commands=["+@all"])  # fmt: skip
    finally:
        client.close()
    return redis_server.replace("redis://", f"redis://{REDIS_USER}:{REDIS_PASSWORD}@", 1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return dev_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secure(
    small_bundle: Path, redis_server: str, kafka_broker: str, pki: DevPki,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict]:  # fmt: skip
    root = tmp_path_factory.mktemp("secure")
    keys = root / "api-keys.yaml"
    entries = [{"caller": c, "sha256": hash_key(k)} for c, k in KEYS.items() if c != "batch"]
    entries.append({"caller": "batch", "sha256": hash_key(KEYS["batch"]), "methods": ["SomethingElse"]})
    keys.write_text(yaml.safe_dump({"keys": entries}))
    event_keys = root / "event-keys.yaml"
    secret = new_secret()
    event_keys.write_text(yaml.safe_dump({"producers": {"gateway": secret}}))
    (root / "jwt.secret").write_text(JWT_SECRET)
    services = service_stack(
        small_bundle, acl_url(redis_server), root, stage_timeout_s=3, **pki.env(mtls=True)
    )
    gw = services["gateway"].env
    topic = f"impressions-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_broker, {topic: 1})
    gw.update(
        RECSTACK_AUTH_MODE="api_key",
        RECSTACK_API_KEYS_FILE=str(keys),
        RECSTACK_RATE_LIMIT_RPS="2",
        RECSTACK_RATE_LIMIT_BURST="4",
        KAFKA_BOOTSTRAP_SERVERS=kafka_broker,
        RECSTACK_EVENTS_TOPIC=topic,
        RECSTACK_EVENT_KEYS_FILE=str(event_keys),
        RECSTACK_EVENT_PRODUCER_ID="gateway",
    )
    jwt_gw = Service("gateway", free_port(), free_port(), dict(gw), root / "gateway-jwt.log")
    jwt_gw.env.update(
        RECSTACK_PORT=str(jwt_gw.port),
        RECSTACK_METRICS_PORT=str(jwt_gw.metrics_port),
        RECSTACK_AUTH_MODE="jwt",
        RECSTACK_JWT_KEY_FILE=str(root / "jwt.secret"),
        RECSTACK_JWT_AUDIENCE="recstack-gateway",
        RECSTACK_JWT_ISSUER="https://idp.test",
        RECSTACK_RATE_LIMIT_RPS="0",
    )
    jwt_gw.env.pop("KAFKA_BOOTSTRAP_SERVERS")
    everything = [*services.values(), jwt_gw]
    try:
        for service in everything:
            service.start()
        for service in everything:
            wait_serving(service, timeout_s=240)
        yield {"services": services, "jwt_gateway": jwt_gw, "topic": topic, "event_secret": secret,
               "bootstrap": kafka_broker}  # fmt: skip
    finally:
        stop_all(everything)


@pytest.fixture(scope="module")
def known_user(small_bundle: Path, redis_server: str) -> str:
    version = (small_bundle / "CURRENT").read_text().strip()
    user = str(json.loads((small_bundle / version / "users.json").read_text())["user_ids"][0])
    items = json.loads((small_bundle / version / "catalog.json").read_text())["item_ids"][:3]
    client = redis.Redis.from_url(redis_server)
    client.delete(Keys().recent_items(user))
    client.rpush(Keys().recent_items(user), *items)
    client.close()
    return user


def client_settings(pki: DevPki, with_cert: bool = True) -> tls.TlsSettings:
    env = {"RECSTACK_TLS_CA": str(pki.ca)}
    if with_cert:
        env.update(RECSTACK_TLS_CLIENT_CERT=str(pki.client.cert), RECSTACK_TLS_CLIENT_KEY=str(pki.client.key))
    return tls.settings_from(env)


def health_check(channel: grpc.Channel, service: str) -> int:
    return (
        health_pb2_grpc.HealthStub(channel)
        .Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        .status
    )


def recommend(port: int, pki: DevPki, user: str, metadata: tuple = ()) -> gateway_pb2.RecommendResponse:
    with tls.sync_channel(f"127.0.0.1:{port}", settings=client_settings(pki)) as channel:
        return gateway_pb2_grpc.GatewayStub(channel).Recommend(
            gateway_pb2.RecommendRequest(user_id=user, k=5), timeout=20, metadata=metadata
        )


def refused(port: int, pki: DevPki, user: str, metadata: tuple = ()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        recommend(port, pki, user, metadata)
    return err.value


def test_plaintext_client_fails_against_a_tls_server(secure: dict) -> None:
    retrieval = secure["services"]["retrieval"]
    with grpc.insecure_channel(f"127.0.0.1:{retrieval.port}") as channel, pytest.raises(grpc.RpcError) as err:
        health_check(channel, SERVICES["retrieval"])
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_client_without_a_certificate_of_the_ca(
    secure: dict, pki: DevPki, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{secure['services']['ranking'].port}"
    with tls.sync_channel(address, settings=client_settings(pki, with_cert=False)) as channel:
        with pytest.raises(grpc.RpcError) as err:
            health_check(channel, SERVICES["ranking"])
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    rogue = dev_pki(tmp_path / "rogue")  # a certificate of another CA
    settings = tls.settings_from(
        {
            "RECSTACK_TLS_CA": str(pki.ca),
            "RECSTACK_TLS_CLIENT_CERT": str(rogue.client.cert),
            "RECSTACK_TLS_CLIENT_KEY": str(rogue.client.key),
        }
    )
    with tls.sync_channel(address, settings=settings) as channel, pytest.raises(grpc.RpcError):
        health_check(channel, SERVICES["ranking"])
    with tls.sync_channel(address, settings=client_settings(pki)) as channel:  # the CA's client cert
        assert health_check(channel, SERVICES["ranking"]) == health_pb2.HealthCheckResponse.SERVING


def test_gateway_to_stages_over_mtls_with_an_api_key(secure: dict, pki: DevPki, known_user: str) -> None:
    reply = recommend(secure["services"]["gateway"].port, pki, known_user, (("x-api-key", KEYS["web"]),))
    assert len(reply.items) == 5
    # every stage answered over mTLS, and Redis (ACL user) served the user's features
    assert not reply.degraded, dict(reply.skipped)
    assert list(reply.stages) == ["features", "retrieval", "ranking", "rerank", "bandit"]


def test_callers_without_valid_credentials_are_refused(secure: dict, pki: DevPki, known_user: str) -> None:
    gateway = secure["services"]["gateway"]
    err = refused(gateway.port, pki, known_user)
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "x-api-key" in err.details()
    err = refused(gateway.port, pki, known_user, (("x-api-key", "not-a-key"),))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and err.details() == "invalid API key"
    err = refused(gateway.port, pki, known_user, (("x-api-key", KEYS["batch"]),))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "'batch'" in err.details()
    # health stays open to probes without credentials
    with tls.sync_channel(f"127.0.0.1:{gateway.port}", settings=client_settings(pki)) as channel:
        assert health_check(channel, "") == health_pb2.HealthCheckResponse.SERVING
    text = scrape(gateway.metrics_port)
    assert (
        sample(text, "recstack_gateway_auth_requests_total", caller="unknown", outcome="unauthenticated") or 0
    ) >= 2
    assert (
        sample(text, "recstack_gateway_auth_requests_total", caller="batch", outcome="permission_denied") == 1
    )


async def test_over_rate_calls_are_resource_exhausted(secure: dict, pki: DevPki, known_user: str) -> None:
    gateway = secure["services"]["gateway"]
    async with tls.aio_channel(f"127.0.0.1:{gateway.port}", settings=client_settings(pki)) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)

        async def one() -> str:
            try:
                await stub.Recommend(gateway_pb2.RecommendRequest(user_id=known_user, k=5), timeout=20,
                                     metadata=(("x-api-key", KEYS["flood"]),))  # fmt: skip
            except grpc.aio.AioRpcError as exc:
                assert exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or "rate limit of 2" in exc.details()
                return exc.code().name
            return "OK"

        codes = await asyncio.gather(*(one() for _ in range(12)))
    # burst 4, 2/s refill: a dozen calls at once get 4 to 5 through, the rest are refused
    assert 4 <= codes.count("OK") <= 6 and codes.count("RESOURCE_EXHAUSTED") == 12 - codes.count("OK"), codes
    text = scrape(gateway.metrics_port)
    limited = sample(text, "recstack_gateway_auth_requests_total", caller="flood", outcome="rate_limited")
    assert limited == codes.count("RESOURCE_EXHAUSTED")


def test_jwt_callers(secure: dict, pki: DevPki, known_user: str) -> None:
    port = secure["jwt_gateway"].port

    def bearer(**claims: object) -> tuple:
        body = {"sub": "shop-frontend", "aud": "recstack-gateway", "iss": "https://idp.test",
                "exp": int(time.time()) + 300, "scope": "recstack.recommend"}  # fmt: skip
        body.update(claims)
        return (("authorization", "Bearer " + jwt.encode(body, JWT_SECRET, algorithm="HS256")),)

    assert len(recommend(port, pki, known_user, bearer()).items) == 5
    err = refused(port, pki, known_user, bearer(scope="profile"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED and "recstack.recommend" in err.details()
    err = refused(port, pki, known_user, bearer(exp=int(time.time()) - 600))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "expired" in err.details()
    err = refused(port, pki, known_user, bearer(aud="another-api"))
    assert err.code() == grpc.StatusCode.UNAUTHENTICATED and "audience" in err.details()
    assert refused(port, pki, known_user).code() == grpc.StatusCode.UNAUTHENTICATED
    text = scrape(secure["jwt_gateway"].metrics_port)
    assert sample(text, "recstack_gateway_auth_requests_total", caller="shop-frontend", outcome="ok") == 1


async def test_gateway_signs_its_impressions(secure: dict, pki: DevPki, known_user: str) -> None:
    from aiokafka import AIOKafkaConsumer

    recommend(secure["services"]["gateway"].port, pki, known_user, (("x-api-key", KEYS["web"]),))
    consumer = AIOKafkaConsumer(secure["topic"], bootstrap_servers=secure["bootstrap"],
                                auto_offset_reset="earliest", group_id=None)  # fmt: skip
    await consumer.start()
    records = []
    try:
        deadline = time.monotonic() + 20
        while not records and time.monotonic() < deadline:
            for part in (await consumer.getmany(timeout_ms=500)).values():
                records.extend(part)
    finally:
        await consumer.stop()
    assert records, "no impression reached Kafka"
    verifier = Verifier({"gateway": secure["event_secret"].encode()})
    assert all(verifier.check(r.value, r.headers) is None for r in records)
    assert verifier.check(records[0].value + b" ", records[0].headers) is not None


@pytest.mark.parametrize(
    ("name", "env", "variable"),
    [
        ("ranking", {"RECSTACK_TLS_CERT": "/nonexistent/tls.crt", "RECSTACK_TLS_KEY": "/nonexistent/tls.key"},
         "RECSTACK_TLS_CERT=/nonexistent/tls.crt"),
        ("gateway", {"RECSTACK_AUTH_MODE": "api_key", "RECSTACK_API_KEYS_FILE": "/nonexistent/keys.yaml"},
         "RECSTACK_API_KEYS_FILE=/nonexistent/keys.yaml"),
    ],
)  # fmt: skip
def test_a_bad_file_is_a_clear_startup_error(name: str, env: dict, variable: str, small_bundle: Path,
                                             redis_server: str) -> None:  # fmt: skip
    from tests.integration.procs import service_env

    senv = service_env(name, free_port(), free_port(), small_bundle, redis_server)
    senv.update(env)
    done = subprocess.run([sys.executable, "-m", f"services.{name}"], cwd=REPO, env=senv, capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert done.returncode == 2, done.stderr[-2000:]
    assert variable in done.stderr
