"""`recstack bench serve --secure`: the credentials it makes are ones the gateway accepts, the
environment of the secure stack is restored afterwards, and the overhead is secure minus plain.
(A short real run: docs/operations.md "Security"; the stack itself is tested in
tests/integration/test_security_services.py.)"""

from __future__ import annotations

import os
from pathlib import Path

import grpc
import pytest

from recstack.bench.serve import _diff, make_secure, median_overhead_pct, patched_environ, secure_rounds
from recstack.rpc import tls
from services.gateway import auth


def test_make_secure_gives_a_key_the_gateway_accepts_and_mtls_material(tmp_path: Path) -> None:
    sec = make_secure(tmp_path / "tls")
    env = sec.server_env()
    assert env["RECSTACK_AUTH_MODE"] == "api_key" and env["RECSTACK_TLS_CLIENT_AUTH"] == "true"
    authenticator = auth.build_authenticator(
        auth.AuthSettings(mode="api_key", api_keys_file=env["RECSTACK_API_KEYS_FILE"])
    )
    assert authenticator is not None
    assert authenticator.decide("/recstack.v1.Gateway/Recommend", sec.metadata()) == auth.Decision("bench")
    assert isinstance(tls.server_credentials(tls.settings_from(env)), grpc.ServerCredentials)
    assert isinstance(tls.channel_credentials(sec.client_tls()), grpc.ChannelCredentials)
    assert sec.client_tls().client_cert == str(sec.pki.client.cert)


def test_patched_environ_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RECSTACK_TLS_CA", "before")
    monkeypatch.delenv("RECSTACK_AUTH_MODE", raising=False)
    with patched_environ({"RECSTACK_TLS_CA": "during", "RECSTACK_AUTH_MODE": "api_key"}):
        assert os.environ["RECSTACK_TLS_CA"] == "during" and os.environ["RECSTACK_AUTH_MODE"] == "api_key"
    assert os.environ["RECSTACK_TLS_CA"] == "before" and "RECSTACK_AUTH_MODE" not in os.environ


def test_overhead_is_secure_minus_plain() -> None:
    assert _diff(65.74, 49.89) == 15.85 and _diff(None, 3.0) is None


def test_secure_overhead_at_50_is_the_median_of_the_rounds_relative_p50() -> None:
    rounds = [{"stack": 10.0, "stack_secure": 11.0}, {"stack": 10.0, "stack_secure": 10.5},
              {"stack": 8.0, "stack_secure": 12.0}]  # fmt: skip
    assert median_overhead_pct(rounds) == 10.0  # +10 %, +5 %, +50 %
    assert median_overhead_pct([{"stack": None, "stack_secure": 3.0}]) is None


def test_secure_rounds_need_the_reference_rate() -> None:
    assert secure_rounds({"25": {}}, [], [], 1.0) == []
