"""TLS settings of the gRPC servers and clients (recstack/rpc/tls.py): clear errors naming the
variable, and which credentials each combination gives. Handshakes are in
tests/integration/test_security_services.py."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from recstack.rpc import tls
from recstack.rpc.certs import dev_pki


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):
    return dev_pki(tmp_path_factory.mktemp("pki"))


def settings(**env: str) -> tls.TlsSettings:
    return tls.settings_from({f"RECSTACK_TLS_{k.upper()}": v for k, v in env.items()})


def test_nothing_set_is_plaintext() -> None:
    s = settings()
    assert tls.server_credentials(s) is None and tls.channel_credentials(s) is None


def test_server_and_mtls_credentials(pki) -> None:
    s = settings(cert=str(pki.server.cert), key=str(pki.server.key))
    assert isinstance(tls.server_credentials(s), grpc.ServerCredentials)
    s = settings(cert=str(pki.server.cert), key=str(pki.server.key), ca=str(pki.ca), client_auth="true")
    assert isinstance(tls.server_credentials(s), grpc.ServerCredentials)
    assert isinstance(tls.channel_credentials(s), grpc.ChannelCredentials)  # presents the server cert


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"cert": "/nonexistent/tls.crt", "key": "KEY"}, "RECSTACK_TLS_CERT=/nonexistent/tls.crt"),
        ({"cert": "CERT", "key": "/nonexistent/tls.key"}, "RECSTACK_TLS_KEY=/nonexistent/tls.key"),
        ({"cert": "CERT", "key": "KEY", "client_auth": "true"}, "RECSTACK_TLS_CA"),
        ({"client_auth": "true"}, "RECSTACK_TLS_CERT"),
        ({"cert": "CERT"}, "RECSTACK_TLS_KEY is not set"),
    ],
)
def test_server_errors_name_the_variable(pki, env: dict[str, str], variable: str) -> None:
    env = {k: {"CERT": str(pki.server.cert), "KEY": str(pki.server.key)}.get(v, v) for k, v in env.items()}
    with pytest.raises(tls.TlsError, match=variable):
        tls.server_credentials(settings(**env))


def test_not_pem_and_mismatched_key(pki, tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("hello")
    with pytest.raises(tls.TlsError, match=f"RECSTACK_TLS_CERT={junk}: not a PEM file"):
        tls.server_credentials(settings(cert=str(junk), key=str(pki.server.key)))
    with pytest.raises(tls.TlsError, match="RECSTACK_TLS_KEY is not the key of the certificate"):
        tls.server_credentials(settings(cert=str(pki.server.cert), key=str(pki.client.key)))


def test_client_errors_name_the_variable(pki) -> None:
    with pytest.raises(tls.TlsError, match="RECSTACK_TLS_CA"):
        tls.channel_credentials(settings(client_cert=str(pki.client.cert), client_key=str(pki.client.key)))
    with pytest.raises(tls.TlsError, match="RECSTACK_TLS_CLIENT_CERT and RECSTACK_TLS_CLIENT_KEY"):
        tls.channel_credentials(settings(ca=str(pki.ca), client_cert=str(pki.client.cert)))
    with pytest.raises(tls.TlsError, match="RECSTACK_TLS_CA=/missing/ca.crt: cannot read"):
        tls.channel_credentials(settings(ca="/missing/ca.crt"))


def test_settings_from_ignores_this_process(monkeypatch: pytest.MonkeyPatch, pki) -> None:
    monkeypatch.setenv("RECSTACK_TLS_CA", "/somewhere/else")
    assert tls.settings_from({}).ca == ""
    assert tls.load().ca == "/somewhere/else"
