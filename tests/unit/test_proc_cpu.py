"""CPU time of child processes by program, for the serve bench's per-request breakdown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from recstack.bench.proc_cpu import descendants_cpu_s, per_request_ms

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def test_a_busy_child_is_counted_under_its_module_name(tmp_path: Path) -> None:
    (tmp_path / "busyloop.py").write_text(
        "import time, sys\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass\n"
        "print('done', flush=True)\nsys.stdin.read()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-m", "busyloop"], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == b"done\n"
        snapshot = descendants_cpu_s()
    finally:
        child.communicate(b"")
    assert snapshot["busyloop"] >= 0.25


def test_per_request_ms_sums_the_programs_and_drops_the_idle_ones() -> None:
    before = {"services.gateway": 1.0, "redis-server": 0.5, "idle": 2.0}
    after = {"services.gateway": 2.0, "redis-server": 0.6, "idle": 2.0, "new": 0.2}
    got = per_request_ms(before, after, 100)
    assert got == {"total": 13.0, "services.gateway": 10.0, "new": 2.0, "redis-server": 1.0}
    assert per_request_ms(before, after, 0) == {}
