"""The gateway process and its experiments file: a bad file at start is refused (exit 2, the
message names the file and the bad field); the shipped example file is valid."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recstack.devstack.embedded import free_port
from recstack.experiments.config import load_experiments
from tests.integration.procs import REPO, service_env

pytestmark = pytest.mark.integration


def test_gateway_refuses_a_bad_experiments_file_at_start(tmp_path: Path) -> None:
    bad = tmp_path / "experiments.yaml"
    bad.write_text(
        "experiments:\n  - id: e1\n    salt: s\n    variants:\n"
        "      - {name: a, pipeline: {diversity: {method: mmr, lambda: 2}}}\n"
    )
    env = service_env("gateway", free_port(), 0, tmp_path / "no-bundle", "redis://127.0.0.1:1/0")
    env["RECSTACK_EXPERIMENTS"] = str(bad)
    proc = subprocess.run(
        [sys.executable, "-m", "services.gateway"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"RECSTACK_EXPERIMENTS: {bad}: experiments[0].variants[0].pipeline.diversity.lambda" in proc.stderr


def test_example_experiments_file_is_valid() -> None:
    cfg = load_experiments(REPO / "deploy" / "experiments" / "example.yaml")
    assert [e.id for e in cfg.experiments] == ["explore-slots-v1", "diversity-v1", "ranker-v1"]
    r = cfg.resolve("any-user")
    assert r.pipeline.policy == "thompson"
