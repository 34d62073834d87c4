"""Benchmark diversity re-ranking and print JSON (see recstack/diversity/bench.py).

python bench/diversity.py [--data ml-100k:../shared/datasets/ml-100k] [--png PATH] [--no-tradeoff]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from recstack.diversity.bench import DEFAULT_DATA, DEFAULT_PNG, run


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA, help="dataset spec for the trade-off curve")
    ap.add_argument("--png", type=Path, default=DEFAULT_PNG, help="where to draw the trade-off curve")
    ap.add_argument("--repeats", type=int, default=20, help="timing repeats of the fast versions")
    ap.add_argument("--no-tradeoff", action="store_true", help="latency only")
    args = ap.parse_args(argv)
    result = run(None if args.no_tradeoff else args.data, args.png, args.repeats)
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
