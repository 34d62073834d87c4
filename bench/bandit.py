"""Decision latency of the bandit policies (200 candidates, d = 32), see
``recstack.exploration.bench``; the same as ``recstack bench bandit``.

    python bench/bandit.py [--json] [--decisions 2000] [--seed-decisions 100]
"""

from __future__ import annotations

import sys

from recstack.exploration.bench import SeedLinUCB, main, measure, run

__all__ = ["SeedLinUCB", "main", "measure", "run"]

if __name__ == "__main__":
    sys.exit(main())
