"""Prometheus alerting rules (deploy/monitoring/alerts.yml) under `promtool test rules`, and the
Grafana dashboard's coverage of the same metrics.

promtool comes from the Debian package ``prometheus`` (.ci/run installs it). In CI (CI=true) a
missing promtool fails the test; locally it is skipped with the install command.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

MONITORING = Path(__file__).resolve().parents[2] / "deploy" / "monitoring"


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("promtool is missing in CI: .ci/run must install the Debian package 'prometheus'")
        pytest.skip("promtool not installed (apt-get install -y prometheus; CI installs it)")
    return path


def test_rules_are_valid_and_their_unit_tests_pass() -> None:
    tool = promtool()
    check = subprocess.run(
        [tool, "check", "rules", "alerts.yml"], cwd=MONITORING, capture_output=True, text=True, timeout=60
    )
    assert check.returncode == 0, check.stdout + check.stderr
    result = subprocess.run(
        [tool, "test", "rules", "alerts_test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def alert_names() -> set[str]:
    rules = yaml.safe_load((MONITORING / "alerts.yml").read_text())
    return {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


def test_every_alert_has_a_unit_test() -> None:
    tests = yaml.safe_load((MONITORING / "alerts_test.yml").read_text())
    tested = {a["alertname"] for t in tests["tests"] for a in t.get("alert_rule_test", [])}
    assert alert_names() == tested


def test_dashboard_covers_the_alerted_and_gateway_metrics() -> None:
    board = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p.get("targets", []))
    for metric in (
        "recstack_gateway_request_latency_seconds_bucket",
        "recstack_gateway_stage_latency_seconds_bucket",
        "recstack_gateway_requests_total",
        "recstack_gateway_recommendations",
        "recstack_gateway_intra_list_diversity",
        "recstack_gateway_catalog_coverage",
        "recstack_gateway_freshness_seconds",
        "recstack_gateway_fallbacks_total",
        "recstack_stream_consumer_lag",
        "recstack_stream_dead_letters_total",
        "recstack_stream_events_total",
    ):
        assert metric in exprs, f"no dashboard panel queries {metric}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    # the alert thresholds are drawn on the matching panels
    text = json.dumps(board)
    assert re.search(r'"value": 0\.3\b', text) and re.search(r'"value": 0\.2\b', text)
