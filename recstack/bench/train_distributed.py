"""Single-process `recstack train` against N torchrun workers on the same data: test HR@10 and
NDCG@10 of every model and of the pipeline, wall time of each run, as JSON.

    python -m recstack.bench.train_distributed --data ml-100k:DIR [--models a,b] [--nproc 2] [--out DIR]

The single-process run trains one model at a time (``--jobs 1``) in one process; the distributed
run starts ``torchrun --standalone --nproc_per_node N -m recstack.cli train`` (gloo on CPU).
"noise" is the half-width of the 95 % interval of the single-process test HR@10 (binomial, over
the test users): the distributed run is within noise when its gap is below it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METRICS = ("HR@10", "NDCG@10")


def run(prefix: list[str], data: str, out: Path, models: str | None, seed: int, extra=()) -> dict:
    cmd = [*prefix, "train", "--data", data, "--out", str(out), "--no-progress", "--seed", str(seed), *extra]
    if models:
        cmd += ["--models", models]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-6000:])
        raise SystemExit(f"{' '.join(cmd)} failed with {done.returncode}")
    (version,) = [p for p in out.iterdir() if p.is_dir()]
    metrics = json.loads((version / "metrics.json").read_text())
    return {
        "command": " ".join(cmd),
        "wall_seconds": round(wall, 1),
        "models": {
            name: {
                **{m: rec["test"][m] for m in METRICS},
                "best_epoch": rec["best_epoch"],
                "stopped_by": rec["stopped_by"],
                "train_seconds": rec["train_seconds"],
            }
            for name, rec in metrics["models"].items()
        },
        "pipeline": {m: metrics["pipeline"]["test"][m] for m in METRICS} if "pipeline" in metrics else None,
        "test_users": next(iter(metrics["models"].values()))["test"]["users"],
        "distributed": metrics.get("distributed"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--models", default=None, help="comma-separated subset (default: every model)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="where the bundles go (default: a temp dir)")
    args = ap.parse_args(argv)
    root = args.out or Path(tempfile.mkdtemp(prefix="train-distributed-"))
    bindir = Path(sys.executable).parent
    load = os.getloadavg()
    t0 = time.perf_counter()
    single = run(
        [sys.executable, "-m", "recstack.cli"],
        args.data,
        root / "single",
        args.models,
        args.seed,
        ("--jobs", "1"),
    )
    dist = run(
        [str(bindir / "torchrun"), "--standalone", "--nproc_per_node", str(args.nproc), "-m", "recstack.cli"],
        args.data,
        root / "dist",
        args.models,
        args.seed,
    )
    n = single["test_users"]
    rows = {}
    names = list(single["models"]) + (["pipeline"] if single["pipeline"] else [])
    for name in names:
        a = single["pipeline"] if name == "pipeline" else single["models"][name]
        b = dist["pipeline"] if name == "pipeline" else dist["models"][name]
        noise = 1.96 * math.sqrt(a["HR@10"] * (1 - a["HR@10"]) / n)
        rows[name] = {
            "single": {m: round(a[m], 4) for m in METRICS},
            "distributed": {m: round(b[m], 4) for m in METRICS},
            "gap": {m: round(b[m] - a[m], 4) for m in METRICS},
            "hr10_noise_95": round(noise, 4),
            "within_noise": abs(b["HR@10"] - a["HR@10"]) <= noise,
        }
    report = {
        "data": args.data,
        "nproc": args.nproc,
        "seed": args.seed,
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "load_average_before": [round(x, 2) for x in load],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "seconds": round(time.perf_counter() - t0, 1),
        "compare": rows,
        "single": single,
        "distributed": dist,
    }
    print(json.dumps(report, indent=1))
    if args.out is None:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
