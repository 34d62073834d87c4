"""Freshness end to end: catalog.json ``created_at`` -> Bundle -> the gateway's BundleLists -> the
``recstack_gateway_freshness_seconds`` histogram (or the unknown counter when items have no date)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from recstack.serving.chain import Chain
from services.gateway.monitoring import GatewayMonitor
from services.gateway.servicer import Recommender, read_bundle_lists
from tests.helpers import make_bundle

NOW = 1_800_000_000.0


def sample(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def counts() -> dict[str, float]:
    return {
        "n": sample("recstack_gateway_freshness_seconds_count"),
        "sum": sample("recstack_gateway_freshness_seconds_sum"),
        "unknown": sample("recstack_gateway_freshness_unknown_total"),
    }


def test_freshness_is_observed_for_items_with_created_at(tmp_path: Path) -> None:
    make_bundle(tmp_path, created_at={"i1": int(NOW) - 3600, "i2": int(NOW) - 7200})
    lists = read_bundle_lists(tmp_path)
    assert lists.created_at == {"i1": NOW - 3600, "i2": NOW - 7200}
    monitor = GatewayMonitor(lists.catalog_size, lists.similarity, lists.created_at, clock=lambda: NOW)

    before = counts()
    out = monitor.observe(["i1", "i2", "i5"])  # i5 has no date: left out of the mean
    assert out["freshness_s"] == pytest.approx(5400.0)
    after = counts()
    assert after["n"] == before["n"] + 1
    assert after["sum"] == pytest.approx(before["sum"] + 5400.0)
    assert after["unknown"] == before["unknown"]

    out = monitor.observe(["i5", "i6"])  # no item with a date: counted as unknown
    assert "freshness_s" not in out
    assert counts() == {**after, "unknown": after["unknown"] + 1}


def test_bundle_without_created_at_counts_unknown_after_a_reload(tmp_path: Path) -> None:
    make_bundle(tmp_path / "new", created_at={"i1": int(NOW) - 60})
    old = make_bundle(tmp_path / "old")
    catalog = json.loads((old / "catalog.json").read_text())
    del catalog["created_at"]  # a bundle written before catalog.json had the field
    (old / "catalog.json").write_text(json.dumps(catalog))

    lists = read_bundle_lists(tmp_path / "new")
    monitor = GatewayMonitor(lists.catalog_size, lists.similarity, lists.created_at, clock=lambda: NOW)
    recommender = Recommender(Chain([], lists.popularity), lists.user_ids, monitor=monitor)
    before = counts()
    assert monitor.observe(["i1"])["freshness_s"] == pytest.approx(60.0)

    recommender.use_bundle(read_bundle_lists(tmp_path / "old"))  # hot reload to the old bundle
    assert monitor.created_at == {}
    assert "freshness_s" not in monitor.observe(["i1"])
    after = counts()
    assert after["n"] == before["n"] + 1 and after["unknown"] == before["unknown"] + 1
