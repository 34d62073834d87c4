"""`recstack train` under torchrun: two local CPU workers (gloo), each on its shard of the users,
reach the single-process test metrics within noise, and rank 0 alone writes the bundle.

Data: the default synthetic spec (300 users), profile small (two_tower, sasrec, multitask and the
pipeline); under a minute per run on an idle 2-core machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
SPEC = "synthetic"
# Test users: 300, so a metric's standard error is about 0.03 (HR@10 near 0.5); the two runs see
# different batches, dropout and negatives. 0.08 is about two standard errors of their difference.
TOLERANCE = 0.08
METRICS = ("HR@10", "NDCG@10")


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _train(prefix: list[str], out: Path) -> tuple[dict, subprocess.CompletedProcess]:
    args = ["train", "--data", SPEC, "--profile", "small", "--out", str(out), "--no-progress"]
    done = subprocess.run([*prefix, *args], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    versions = [p for p in out.iterdir() if p.is_dir()]
    assert len(versions) == 1, versions  # one bundle, whatever the number of workers
    assert (out / "CURRENT").read_text().strip() == versions[0].name
    return json.loads((versions[0] / "metrics.json").read_text()), done


def test_two_torchrun_workers_reach_the_single_process_metrics(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    single, _ = _train([sys.executable, "-m", "recstack.cli"], tmp_path / "single")
    dist, done = _train(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "recstack.cli"], tmp_path / "dist"
    )
    # Rank 0 alone prints the bundle's path (and writes it: one version directory above).
    printed = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(printed) == 1 and Path(printed[0]).parent == tmp_path / "dist", done.stdout
    assert "distributed" not in single
    assert dist["distributed"]["world_size"] == 2 and dist["distributed"]["backend"] == "gloo"
    manifest = json.loads((Path(printed[0]) / "manifest.json").read_text())
    assert manifest["training"]["distributed"]["world_size"] == 2
    assert set(dist["models"]) == set(single["models"])
    gaps = {
        (name, metric): abs(dist["models"][name]["test"][metric] - rec["test"][metric])
        for name, rec in single["models"].items()
        for metric in METRICS
    }
    gaps.update(
        {("pipeline", m): abs(dist["pipeline"]["test"][m] - single["pipeline"]["test"][m]) for m in METRICS}
    )
    assert max(gaps.values()) <= TOLERANCE, gaps
