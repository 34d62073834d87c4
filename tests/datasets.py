"""Where the tests find MovieLens 100K: $RECSTACK_ML100K_DIR, else ../shared/datasets/ml-100k beside
the checkout (the project never bundles the dataset; tests that need it skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

ML100K = Path(
    os.environ.get("RECSTACK_ML100K_DIR")
    or Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-100k"
)
