"""docs/benchmarks.md is what `recstack bench doc` renders from the committed JSON: every number in
it comes from a benchmark run."""

from __future__ import annotations

import json
from pathlib import Path

from recstack.bench.doc import DOC_PATH, RESULTS_DIR, render

ROOT = Path(__file__).resolve().parents[2]


def test_committed_document_matches_the_committed_json() -> None:
    assert (ROOT / DOC_PATH).read_text() == render(ROOT / RESULTS_DIR), (
        "docs/benchmarks.md is stale: run `recstack bench doc` and commit it"
    )


def test_numbers_come_from_the_json(tmp_path: Path) -> None:
    serve = json.loads((ROOT / RESULTS_DIR / "serve.json").read_text())
    mode = next(iter(serve["modes"]))
    serve["modes"][mode]["capacity_ratio"] = 0.123456
    (tmp_path / "serve.json").write_text(json.dumps(serve))
    text = render(tmp_path)
    assert "0.123456" in text
    assert "No committed run (`bench/results/quality.json` is missing)." in text
