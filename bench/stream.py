"""Benchmark the feature stream, raw aiokafka ceiling vs the Faust app, and print JSON
(see recstack/devstack/stream_bench.py; the same as `recstack bench stream --json`).

    python bench/stream.py [--events 20000] [--batch 500] [--rate 2000] [--duration 10]
                           [--repeats 2] [--no-e2e]

Uses REDIS_URL / KAFKA_BOOTSTRAP_SERVERS when set, else embedded redis-server and Tansu.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from recstack.devstack.stream_bench import DEFAULT_DURATION_S, DEFAULT_RATE, run_stream_bench


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=20_000, help="backlog size of the throughput phase")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--rate", type=float, default=DEFAULT_RATE, help="offered events/s, latency phase")
    ap.add_argument("--duration", type=float, default=DEFAULT_DURATION_S, help="latency phase, seconds")
    ap.add_argument("--repeats", type=int, default=2, help="throughput runs per consumer, best reported")
    ap.add_argument("--data", default="synthetic")
    ap.add_argument("--no-e2e", action="store_true", help="only the FeatureWriter benchmark")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    result = run_stream_bench(
        events=args.events,
        batch=args.batch,
        data_spec=args.data,
        redis_url=os.environ.get("REDIS_URL"),
        bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
        end_to_end=not args.no_e2e,
        rate=args.rate,
        duration_s=args.duration,
        repeats=args.repeats,
    )
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
