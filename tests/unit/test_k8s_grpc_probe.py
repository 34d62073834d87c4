"""The prod overlay's exec probe (deploy/k8s/overlays/prod/grpc_health_probe.py) against real gRPC servers.

A health server with mTLS (certificates from a throwaway CA), and a plaintext one: the probe exits 0
only for SERVING over a verified connection, 1 for NOT_SERVING, a wrong CA or a wrong name.
"""

from __future__ import annotations

import datetime
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

PROBE = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "overlays" / "prod" / "grpc_health_probe.py"
NAME = "ranking.recstack.svc"


def _issue(
    subject: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, san: str | None = None
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, issuer_key = issuer or (name, key)
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256()), key


def _pem(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> tuple[bytes, bytes]:
    return cert.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    ca_cert, ca_key = _issue("recstack-ca", None)
    other_ca, _ = _issue("other-ca", None)
    server = _issue(NAME, (ca_cert.subject, ca_key), san=NAME)
    files = {"ca": ca_cert, "other_ca": other_ca}
    paths = {n: root / f"{n}.crt" for n in files}
    for n, cert in files.items():
        paths[n].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    crt, key = _pem(*server)
    (root / "tls.crt").write_bytes(crt)
    (root / "tls.key").write_bytes(key)
    return {**paths, "crt": root / "tls.crt", "key": root / "tls.key"}


@pytest.fixture
def servers(pki: dict[str, Path]) -> Iterator[tuple[int, int, health.HealthServicer]]:
    servicer = health.HealthServicer()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    credentials = grpc.ssl_server_credentials(
        [(pki["key"].read_bytes(), pki["crt"].read_bytes())],
        root_certificates=pki["ca"].read_bytes(),
        require_client_auth=True,  # mTLS, as the stages run in prod
    )
    tls_port = server.add_secure_port("127.0.0.1:0", credentials)
    plain_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield tls_port, plain_port, servicer
    finally:
        server.stop(0)


def probe(port: int, env: dict[str, str], name: str = NAME) -> int:
    base = {k: v for k, v in os.environ.items() if not k.startswith("RECSTACK_TLS")}
    done = subprocess.run(
        [sys.executable, str(PROBE), name],
        env={**base, "RECSTACK_PORT": str(port), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode


def test_probe_checks_health_over_mtls_and_plaintext(
    pki: dict[str, Path], servers: tuple[int, int, health.HealthServicer]
) -> None:
    tls_port, plain_port, servicer = servers
    tls = {
        "RECSTACK_TLS_CA": str(pki["ca"]),
        "RECSTACK_TLS_CERT": str(pki["crt"]),
        "RECSTACK_TLS_KEY": str(pki["key"]),
    }
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert probe(tls_port, tls) == 0
    assert probe(plain_port, {}) == 0
    assert probe(tls_port, {**tls, "RECSTACK_TLS_CA": str(pki["other_ca"])}) == 1  # server not trusted
    assert probe(tls_port, tls, name="gateway.recstack.svc") == 1  # name not in the certificate
    assert probe(tls_port, {"RECSTACK_TLS_CA": str(pki["ca"])}) == 1  # no client certificate: mTLS refuses
    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)  # loading or draining
    assert probe(tls_port, tls) == 1
    assert probe(tls_port, {**tls, "RECSTACK_PORT": "x"}) == 2
