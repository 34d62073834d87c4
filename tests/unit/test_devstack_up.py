"""Port planning, process environments and the demo's pure helpers."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from recstack.devstack.demo import (
    DemoError,
    burst_items,
    genre_counts,
    genre_share,
    pick_new_genre,
    read_bundle_info,
)
from recstack.devstack.supervisor import GrpcHealth, HttpHealth
from recstack.devstack.up import (
    DEFAULT_PORTS,
    START_ORDER,
    PortInUseError,
    StackConfig,
    plan_ports,
    service_specs,
)


def test_plan_ports_applies_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    # Arithmetic only: whether these ports happen to be free on a shared machine is not the point here
    # (the next test covers busy ports), so availability is pinned.
    monkeypatch.setattr("recstack.devstack.up.port_is_free", lambda port, host: True)
    plan = plan_ports(StackConfig(port_offset=1000 + 7))
    assert plan["gateway"] == (51058, 10108)
    assert plan["feature_stream"] == (None, 10113)


def _occupy(sock: socket.socket, port: int) -> None:
    """Listen on port; if something else already does, it is busy all the same."""
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
    except OSError:
        pass


def test_plan_ports_reports_every_busy_port_and_the_fix() -> None:
    offset = 5000 + os.getpid() % 5000
    rerank, bandit_metrics = DEFAULT_PORTS["rerank"][0] + offset, DEFAULT_PORTS["bandit"][1] + offset  # type: ignore[operator]
    with socket.socket() as a, socket.socket() as b:
        _occupy(a, rerank)
        _occupy(b, bandit_metrics)
        with pytest.raises(PortInUseError) as info:
            plan_ports(StackConfig(port_offset=offset))
    message = str(info.value)
    assert f"rerank gRPC 127.0.0.1:{rerank}" in message
    assert f"bandit metrics 127.0.0.1:{bandit_metrics}" in message
    assert "--port-offset" in message and "--free-ports" in message


def test_plan_ports_rejects_offsets_out_of_range() -> None:
    with pytest.raises(PortInUseError, match="gateway gRPC 127.0.0.1:65551"):
        plan_ports(StackConfig(port_offset=15500))


def test_plan_ports_free_ports_are_distinct() -> None:
    plan = plan_ports(StackConfig(free_ports=True))
    ports = [p for pair in plan.values() for p in pair if p is not None]
    assert len(ports) == len(set(ports)) == 11


def test_service_specs_wire_addresses_and_health(tmp_path: Path) -> None:
    config = StackConfig(port_offset=0, events_topic="ev")
    plan = {name: (grpc, metrics) for name, (grpc, metrics) in DEFAULT_PORTS.items()}
    specs = service_specs(
        config, plan, "127.0.0.1:9999", "redis://127.0.0.1:1/0", tmp_path, base_env={"X": "1"}
    )
    assert [s.name for s in specs] == list(START_ORDER)
    by_name = {s.name: s for s in specs}
    gateway = by_name["gateway"]
    assert gateway.env["RETRIEVAL_ADDR"] == "127.0.0.1:50052"
    assert gateway.env["BANDIT_ADDR"] == "127.0.0.1:50055"
    assert gateway.env["RECSTACK_PORT"] == "50051" and gateway.env["RECSTACK_METRICS_PORT"] == "9101"
    assert gateway.env["X"] == "1" and gateway.env["RECSTACK_EVENTS_TOPIC"] == "ev"
    assert gateway.argv[-2:] == ["-m", "services.gateway"]
    assert isinstance(gateway.health, GrpcHealth) and gateway.health.address == "127.0.0.1:50051"
    stream = by_name["feature_stream"]
    assert "RECSTACK_PORT" not in stream.env
    assert isinstance(stream.health, HttpHealth) and stream.health.url == "http://127.0.0.1:9106/metrics"
    for spec in specs:
        assert spec.env["KAFKA_BOOTSTRAP_SERVERS"] == "127.0.0.1:9999"
        assert spec.env["REDIS_URL"] == "redis://127.0.0.1:1/0"
        assert spec.env["RECSTACK_ARTIFACTS"] == str(tmp_path)


def test_in_process_stack_starts_no_stage_processes(tmp_path: Path) -> None:
    config = StackConfig(stages="inprocess")
    plan = {name: (grpc, metrics) for name, (grpc, metrics) in DEFAULT_PORTS.items()}
    specs = service_specs(config, plan, "k:1", "redis://r:1/0", tmp_path, base_env={})
    assert [s.name for s in specs] == ["bandit", "feature_stream", "gateway"]
    gateway = specs[-1]
    assert gateway.env["RECSTACK_STAGES"] == "inprocess" and int(gateway.env["RECSTACK_GATEWAY_WORKERS"]) >= 1
    mine = service_specs(
        config, plan, "k:1", "redis://r:1/0", tmp_path, base_env={"RECSTACK_GATEWAY_WORKERS": "3"}
    )
    assert mine[-1].env["RECSTACK_GATEWAY_WORKERS"] == "3"  # the user's setting wins


def test_service_specs_keep_user_grace_and_threads(tmp_path: Path) -> None:
    plan = dict(DEFAULT_PORTS)
    base = {"RECSTACK_GRACE_S": "8", "OMP_NUM_THREADS": "2"}
    spec = service_specs(StackConfig(), plan, "k:1", "redis://r:1/0", tmp_path, base_env=base)[0]
    assert spec.env["RECSTACK_GRACE_S"] == "8" and spec.env["OMP_NUM_THREADS"] == "2"
    spec = service_specs(StackConfig(), plan, "k:1", "redis://r:1/0", tmp_path, base_env={})[0]
    assert spec.env["RECSTACK_GRACE_S"] == "3" and spec.env["OMP_NUM_THREADS"] == "1"


def test_stack_config_from_options_reads_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RECSTACK_ARTIFACTS", str(tmp_path / "a"))
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "kafka:9092")
    monkeypatch.delenv("REDIS_URL", raising=False)
    config = StackConfig.from_options(None, 5, False, True, None)
    assert config.artifacts == tmp_path / "a" and config.port_offset == 5
    assert config.kafka_bootstrap == "kafka:9092" and config.redis_url is None
    assert StackConfig.from_options(tmp_path / "b", 0, True, False, None).artifacts == tmp_path / "b"


GENRES = {
    "i1": ["Drama"],
    "i2": ["Drama", "Comedy"],
    "i3": ["Horror"],
    "i4": ["Horror"],
    "i5": ["Horror", "Drama"],
    "i6": ["Comedy"],
    "i7": ["Sci-Fi"],
}


def test_pick_new_genre_prefers_unfavoured_genre_with_enough_items() -> None:
    assert genre_counts(["i2", "i5"], GENRES) == {"Drama": 2, "Comedy": 1, "Horror": 1}
    # Sci-Fi is unfavoured too but has one item; Horror (3 items) is the least favoured big genre.
    assert pick_new_genre({"Drama": 0.5, "Comedy": 0.2}, GENRES, min_items=2) == "Horror"
    assert pick_new_genre({"Drama": 0.5, "Comedy": 0.2, "Horror": 0.3}, GENRES, min_items=2) == "Comedy"


def test_burst_items_follow_popularity_and_skip_seen() -> None:
    assert burst_items("Horror", GENRES, ["i5", "i1", "i4"], exclude={"i4"}, n=5) == ["i5", "i3"]
    assert burst_items("Horror", GENRES, [], exclude=set(), n=2) == ["i3", "i4"]


def test_genre_share() -> None:
    assert genre_share(["i3", "i1", "i4", "i6"], "Horror", GENRES) == 0.5
    assert genre_share([], "Horror", GENRES) == 0.0


def test_read_bundle_info_reads_the_design_layout_and_names_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DemoError, match="CURRENT not found; train with `recstack train"):
        read_bundle_info(tmp_path)
    (tmp_path / "CURRENT").write_text("v7\n")
    (tmp_path / "v7").mkdir()
    (tmp_path / "v7" / "manifest.json").write_text(json.dumps({"version": "v7", "data_spec": "synthetic"}))
    with pytest.raises(DemoError, match="catalog.json"):
        read_bundle_info(tmp_path)
    catalog = {"item_ids": ["a", "b"], "genres": {"a": ["X"], "b": []}, "popularity": ["b", "a"]}
    (tmp_path / "v7" / "catalog.json").write_text(json.dumps(catalog))
    (tmp_path / "v7" / "users.json").write_text(json.dumps({"user_ids": ["u1"]}))
    info = read_bundle_info(tmp_path)
    assert (info.version, info.data_spec, info.user_ids) == ("v7", "synthetic", ["u1"])
    assert info.popularity == ["b", "a"] and info.item_genres == {"a": ["X"], "b": []}
