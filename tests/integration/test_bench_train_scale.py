"""`recstack bench train-scale` end to end on a tiny synthetic shape: the default `recstack train` in
a child process, its per-stage and per-model seconds, the peak memory of the process tree, and the
rendered docs section; a run past its timeout is stopped (with its workers) and reported as such."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from recstack.bench.doc import train_scale

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SHAPE = ["--users", "80", "--items", "120", "--interactions", "1200"]


def _bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [sys.executable, "-m", "recstack.cli", "bench", "train-scale", "--json", *SHAPE, *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_bench_reports_stages_models_and_memory(tmp_path: Path) -> None:
    done = _bench(tmp_path, "--models", "two_tower,multitask", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr[-4000:]
    r = json.loads(done.stdout)
    assert "synthetic:n_users=80,n_items=120" in r["data_spec"]
    assert r["dataset"]["users"] == 80 and 0 < r["dataset"]["items"] <= 120
    assert set(r["models"]) == {"two_tower", "multitask"}
    mt = r["models"]["multitask"]
    assert mt["over"] == "retrieval candidates (200)"
    assert 0 < mt["valid_seconds"] <= mt["train_seconds"] and mt["test_seconds"] > 0
    assert {
        "load",
        "split",
        "features",
        "train_full_ranking_models",
        "train_rankers",
        "pipeline_eval",
    } <= set(r["stage_seconds"])
    assert sum(r["stage_seconds"].values()) <= r["wall_seconds"]
    # the tree's peak holds at least the largest single process the OS saw
    assert r["peak_rss_mb"] > 100 and r["max_process_rss_mb"] > 100
    assert len(r["load_average_start"]) == 3 and len(r["load_average_end"]) == 3
    assert r["goals"] == {}  # not one of the shapes
    text = "\n".join(train_scale(r))
    assert f"{r['wall_seconds'] / 60:.1f} min" in text and "multi-task (over candidates)" in text


def test_a_run_past_its_timeout_is_stopped_with_its_workers(tmp_path: Path) -> None:
    before = {p.pid for p in psutil.process_iter()}
    done = _bench(tmp_path, "--timeout-minutes", "0.1", "--out", str(tmp_path / "run"))
    assert done.returncode == 1
    r = json.loads(done.stdout)
    assert "timeout" in r["error"] and r["wall_seconds"] < 60
    assert "finished" in r["progress"]
    left = [
        p
        for p in psutil.process_iter(["pid", "cmdline"])
        if p.pid not in before and "recstack.cli" in " ".join(p.info["cmdline"] or [])
    ]
    assert left == []
