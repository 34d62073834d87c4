"""Train the sequential models on one dataset under EVAL_PROTOCOL.md and print JSON metrics.

    python bench/train_sequential.py --data ml-100k:../shared/datasets/ml-100k \
        --models sasrec,gru4rec,bert4rec --threads 1 [--set sasrec.max_minutes=3 ...]

Each model uses its task config's ``full()`` profile (``--profile small`` for the synthetic one);
``--set MODEL.FIELD=VALUE`` overrides one field of that model's task config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time

import torch

from recstack.data import load_dataset
from recstack.evaluation import leave_one_out
from recstack.training.sequential_tasks import CONFIGS, build_task
from recstack.training.trainer import TrainerConfig, fit, seed_everything


def parse_overrides(items: list[str]) -> dict[str, dict[str, object]]:
    out: dict[str, dict[str, object]] = {}
    for item in items:
        key, _, value = item.partition("=")
        model, _, field = key.partition(".")
        if not value or not field:
            raise SystemExit(f"--set expects MODEL.FIELD=VALUE, got {item!r}")
        out.setdefault(model, {})[field] = json.loads(value) if value not in ("None", "none") else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="ml-100k:../shared/datasets/ml-100k")
    ap.add_argument("--models", default="sasrec,gru4rec,bert4rec")
    ap.add_argument("--profile", choices=("full", "small"), default="full")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="MODEL.FIELD=VALUE")
    ap.add_argument("--progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    torch.set_num_threads(args.threads)
    overrides = parse_overrides(args.set)

    t0 = time.perf_counter()
    split = leave_one_out(load_dataset(args.data))
    report: dict = {
        "data": args.data,
        "fingerprint": split.fingerprint(),
        "n_users": split.n_users,
        "n_items": split.n_items,
        "split_seconds": round(time.perf_counter() - t0, 2),
        "threads": args.threads,
        "models": {},
    }
    for name in args.models.split(","):
        base = getattr(CONFIGS[name], args.profile)()
        cfg = dataclasses.replace(base, **overrides.get(name, {}))
        seed_everything(args.seed)  # the initial weights come from the global generators
        task = build_task(name, split, None, cfg)
        trainer = TrainerConfig(seed=args.seed, progress=args.progress, **cfg.trainer_overrides())
        result = fit(task, split, trainer)
        report["models"][name] = {
            "test": result.test,
            "valid": result.valid,
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "train_seconds": round(result.train_seconds, 1),
            "peak_rss_mb": round(result.peak_rss_mb),
            "config": dataclasses.asdict(cfg),
            "valid_curve": [round(h["valid"]["NDCG@10"], 4) for h in result.history if "valid" in h],
        }
        print(json.dumps({name: report["models"][name]}), file=sys.stderr, flush=True)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
