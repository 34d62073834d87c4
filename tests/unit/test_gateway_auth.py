"""Caller authentication of the gateway (services/gateway/auth.py): API keys, JWTs (HS256, RS256,
ES256), scopes, per-caller rate limits, the per-caller metric and its label cap, and the
interceptor on an in-process grpc.aio server. The gateway process with TLS is tested in
tests/integration/test_security_services.py."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from recstack.rpc.ratelimit import KeyedLimiter
from services.gateway import auth

SECRET = b"0123456789abcdef0123456789abcdef-secret"
GW = "/recstack.v1.Gateway/Recommend"


def keys_file(tmp_path: Path, entries: list[dict]) -> str:
    import yaml

    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": entries}))
    return str(path)


def counted(caller: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "recstack_gateway_auth_requests_total", {"caller": caller, "outcome": outcome}
        )
        or 0.0
    )


def api_key_authenticator(tmp_path: Path, rps: float = 0, burst: float = 0, cap: int = 100):
    path = keys_file(
        tmp_path,
        [
            {"caller": "web", "sha256": auth.hash_key("key-web")},
            {"caller": "batch", "sha256": auth.hash_key("key-batch"), "methods": ["Other"]},
        ],
    )
    settings = auth.AuthSettings(
        mode="api_key", api_keys_file=path, rate_limit_rps=rps, rate_limit_burst=burst, metrics_callers=cap
    )
    authenticator = auth.build_authenticator(settings)
    assert authenticator is not None
    return authenticator


def test_api_keys(tmp_path: Path) -> None:
    a = api_key_authenticator(tmp_path)
    ok_before = counted("web", "ok")
    unknown_before = counted("unknown", "unauthenticated")
    assert a.decide(GW, [("x-api-key", "key-web")]) == auth.Decision("web")
    missing = a.decide(GW, [])
    assert missing.code == grpc.StatusCode.UNAUTHENTICATED and "x-api-key" in missing.message
    wrong = a.decide(GW, [("x-api-key", "key-wrong")])
    assert wrong.code == grpc.StatusCode.UNAUTHENTICATED and wrong.message == "invalid API key"
    other_method = a.decide(GW, [("x-api-key", "key-batch")])
    assert other_method.code == grpc.StatusCode.PERMISSION_DENIED and other_method.caller == "batch"
    assert a.decide("/recstack.v1.Gateway/Other", [("x-api-key", "key-batch")]).code is None
    assert counted("web", "ok") == ok_before + 1
    assert counted("unknown", "unauthenticated") == unknown_before + 2


def test_keys_file_errors_name_the_variable(tmp_path: Path) -> None:
    with pytest.raises(auth.AuthConfigError, match="RECSTACK_API_KEYS_FILE=/nope: cannot read"):
        auth.load_api_keys("/nope")
    bad = keys_file(tmp_path, [{"caller": "web", "sha256": "plaintext-key"}])
    with pytest.raises(auth.AuthConfigError, match=r"keys\[0\] \(web\): 'sha256' must be"):
        auth.load_api_keys(bad)
    with pytest.raises(auth.AuthConfigError, match="RECSTACK_JWT_KEY_FILE"):
        auth.build_authenticator(auth.AuthSettings(mode="jwt"))


def test_rate_limit_per_caller(tmp_path: Path) -> None:
    a = api_key_authenticator(tmp_path, rps=0.001, burst=2)
    limited_before = counted("web", "rate_limited")
    codes = [a.decide(GW, [("x-api-key", "key-web")]).code for _ in range(4)]
    assert codes == [None, None, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.RESOURCE_EXHAUSTED]
    refused = a.decide(GW, [("x-api-key", "key-web")])
    assert "rate limit" in refused.message and "'web'" in refused.message
    assert counted("web", "rate_limited") == limited_before + 3
    # another caller has its own bucket
    assert a.decide("/recstack.v1.Gateway/Other", [("x-api-key", "key-batch")]).code is None


def token(key, alg: str = "HS256", **claims) -> str:
    now = int(time.time())
    body = {"sub": "alice", "exp": now + 60, "aud": "recstack", "iss": "idp", "scope": "a recstack.recommend"}
    body.update(claims)
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg)


def jwt_verifier(key, algs=("HS256",)) -> auth.JwtVerifier:
    return auth.JwtVerifier(key, list(algs), audience="recstack", issuer="idp")


def check(verifier: auth.JwtVerifier, tok: str) -> auth.Decision:
    return verifier.check({"authorization": f"Bearer {tok}"}, GW)


def test_jwt_hs256_claims_and_scope() -> None:
    v = jwt_verifier(SECRET)
    assert check(v, token(SECRET)) == auth.Decision("alice")
    assert check(v, token(SECRET, scope=None, roles=["recstack.recommend"])).code is None
    cases = {
        "the token has expired": token(SECRET, exp=int(time.time()) - 120),
        "not for this audience": token(SECRET, aud="someone-else"),
        "issuer is not trusted": token(SECRET, iss="evil"),
        "lacks the 'exp' claim": token(SECRET, exp=None),
        "invalid token (InvalidSignatureError)": token(b"another-secret-of-at-least-32-bytes!!"),
    }
    for message, tok in cases.items():
        decision = check(v, tok)
        assert decision.code == grpc.StatusCode.UNAUTHENTICATED and message in decision.message, message
    no_scope = check(v, token(SECRET, scope="read-only"))
    assert no_scope.code == grpc.StatusCode.PERMISSION_DENIED and no_scope.caller == "alice"
    assert "recstack.recommend" in no_scope.message
    assert v.check({}, GW).code == grpc.StatusCode.UNAUTHENTICATED
    assert v.check({"authorization": "Basic abc"}, GW).code == grpc.StatusCode.UNAUTHENTICATED


def test_jwt_alg_none_and_algorithm_confusion_are_refused(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "rsa.pub"
    path.write_bytes(pem)
    key, algs = auth.load_jwt_key(str(path))
    assert algs == ["RS256"]
    v = jwt_verifier(key, algs)
    assert check(v, token(private, "RS256")).code is None
    assert check(v, token(None, "none")).code == grpc.StatusCode.UNAUTHENTICATED
    assert check(v, token(SECRET, "HS256")).code == grpc.StatusCode.UNAUTHENTICATED


def test_jwt_es256_and_key_file_errors(tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.pub"
    path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    key, algs = auth.load_jwt_key(str(path))
    assert algs == ["ES256"] and check(jwt_verifier(key, algs), token(private, "ES256")).code is None
    short = tmp_path / "short"
    short.write_text("tiny")
    with pytest.raises(auth.AuthConfigError, match="at least 32 bytes"):
        auth.load_jwt_key(str(short))
    private_pem = tmp_path / "private.pem"
    private_pem.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(auth.AuthConfigError, match="RECSTACK_JWT_KEY_FILE=.*not a PEM public key"):
        auth.load_jwt_key(str(private_pem))


def test_caller_label_cap() -> None:
    labels = auth.CallerLabels(cap=2, known=["web"])
    assert [labels.label(c) for c in ("web", "a", "b", "a", None)] == ["web", "a", "other", "a", "unknown"]


def test_open_methods() -> None:
    assert auth.is_open("/grpc.health.v1.Health/Check")
    assert auth.is_open("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo")
    assert not auth.is_open(GW)


async def test_interceptor_on_a_real_server_leaves_health_open(tmp_path: Path) -> None:
    a = api_key_authenticator(tmp_path)
    server = grpc.aio.server(interceptors=[auth.AuthInterceptor(a)])
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=5
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            call = channel.unary_unary(GW)
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"", timeout=5)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "x-api-key" in err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(b"", timeout=5, metadata=(("x-api-key", "key-web"),))
            assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED  # authenticated: reaches routing
    finally:
        await server.stop(0)


def test_limiter_is_the_settings_rate(tmp_path: Path) -> None:
    a = api_key_authenticator(tmp_path, rps=7, burst=3)
    assert isinstance(a.limiter, KeyedLimiter) and (a.limiter.rate, a.limiter.burst) == (7, 3)


def test_cli_clients_send_credentials_from_the_environment() -> None:
    from recstack.rpc.caller import caller_metadata

    assert caller_metadata({}) == ()
    assert caller_metadata({"RECSTACK_CLIENT_API_KEY": "k"}) == (("x-api-key", "k"),)
    assert caller_metadata({"RECSTACK_CLIENT_TOKEN": "t"}) == (("authorization", "Bearer t"),)
