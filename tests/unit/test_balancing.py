"""Stage addresses as gRPC targets and the channels' service config (recstack.rpc.balancing)."""

from __future__ import annotations

import json

import pytest

from recstack.rpc.balancing import (
    RETRIED_SERVICES,
    AddressError,
    channel_options,
    check_target,
    lb_policy,
    service_config,
)
from recstack.rpc.settings import load_settings
from services.gateway.settings import GatewaySettings


@pytest.mark.parametrize(
    "target",
    [
        "localhost:50052",
        "ranking:50053",
        "10.0.0.7:50053",
        "[::1]:50053",
        "dns:///ranking-headless.recstack.svc.cluster.local:50053",
        "dns://10.96.0.10:53/ranking-headless.recstack.svc:50053",
        "ipv4:127.0.0.1:50053,127.0.0.1:50063",
        "ipv4:127.0.0.1:50053",
        "ipv6:[::1]:50053,[::1]:50063",
        "unix:/run/ranking.sock",
        "unix:///run/ranking.sock",
    ],
)
def test_gRPC_targets_are_accepted(target: str) -> None:
    assert check_target(target, "RANKING_ADDR") == target


@pytest.mark.parametrize(
    "target",
    [
        "localhost",
        "localhost:",
        "localhost:0",
        "localhost:70000",
        ":50052",
        "dns:ranking:50053",  # dns needs the // form
        "dns:///ranking",
        "ipv4:",
        "ipv4:127.0.0.1",
        "ipv4:127.0.0.1:50053,",
        "unix:",
        "http://ranking:50053",
    ],
)
def test_malformed_targets_name_the_variable(target: str) -> None:
    with pytest.raises(AddressError, match="RANKING_ADDR must be a gRPC target.*dns:///"):
        check_target(target, "RANKING_ADDR")


def test_service_config_balances_and_retries_unavailable() -> None:
    config = json.loads(service_config("round_robin"))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method,) = config["methodConfig"]
    assert {n["service"] for n in method["name"]} == set(RETRIED_SERVICES)
    assert method["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert method["retryPolicy"]["maxAttempts"] >= 2
    options = dict(channel_options("pick_first"))
    assert json.loads(options["grpc.service_config"])["loadBalancingConfig"] == [{"pick_first": {}}]
    assert options["grpc.enable_retries"] == 1


def test_lb_policy_from_the_environment() -> None:
    assert lb_policy({}) == "round_robin"
    assert lb_policy({"RECSTACK_GRPC_LB": "pick_first"}) == "pick_first"
    with pytest.raises(ValueError, match="RECSTACK_GRPC_LB must be one of round_robin, pick_first"):
        lb_policy({"RECSTACK_GRPC_LB": "least_request"})


def test_gateway_settings_accept_targets_and_reject_a_bad_policy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RANKING_ADDR", "ipv4:127.0.0.1:50053,127.0.0.1:50063")
    monkeypatch.setenv("BANDIT_ADDR", "dns:///bandit-headless.recstack.svc:50055")
    settings = load_settings(GatewaySettings)
    assert settings.ranking_addr.startswith("ipv4:") and settings.grpc_lb == "round_robin"
    monkeypatch.setenv("RECSTACK_GRPC_LB", "random")
    with pytest.raises(SystemExit):
        load_settings(GatewaySettings)
    assert "RECSTACK_GRPC_LB" in capsys.readouterr().err
    monkeypatch.setenv("RECSTACK_GRPC_LB", "round_robin")
    monkeypatch.setenv("RETRIEVAL_ADDR", "retrieval")
    with pytest.raises(SystemExit):
        load_settings(GatewaySettings)
    assert "RETRIEVAL_ADDR must be a gRPC target" in capsys.readouterr().err


def test_servers_recycle_connections_so_clients_re_resolve(monkeypatch) -> None:
    """RECSTACK_MAX_CONNECTION_AGE_S becomes grpc.max_connection_age_ms (grace: the drain time);
    0 turns it off."""
    from recstack.rpc.server import server_options
    from recstack.rpc.settings import ServiceSettings

    monkeypatch.setenv("RECSTACK_MAX_CONNECTION_AGE_S", "120")
    monkeypatch.setenv("RECSTACK_GRACE_S", "7")
    options = dict(server_options(ServiceSettings(), shared=True))
    assert options == {
        "grpc.so_reuseport": 1,
        "grpc.max_connection_age_ms": 120_000,
        "grpc.max_connection_age_grace_ms": 7_000,
    }
    monkeypatch.setenv("RECSTACK_MAX_CONNECTION_AGE_S", "0")
    assert dict(server_options(ServiceSettings(), shared=False)) == {"grpc.so_reuseport": 0}
