"""`recstack demo` end to end: both recommendation lists, the feature change, exit 0, nothing left."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psutil
import pytest

from tests.e2e.cli import cli_argv, cli_env

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]


def test_recstack_demo_prints_both_lists_and_exits_zero(bundle_copy: Path, tmp_path: Path) -> None:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    argv = cli_argv(
        "demo", "--artifacts", str(bundle_copy), "--free-ports", "--run-dir", str(tmp_path / "run")
    )
    done = subprocess.run(argv, capture_output=True, text=True, env=cli_env(), cwd=tmp_path, timeout=400)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert "Recommend #1" in output and "Recommend #2 (after the burst)" in output
    assert "stream applied the burst" in output
    assert "genre scores in Redis" in output
    assert "demo finished" in output
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert left == []
