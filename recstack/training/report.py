"""Rendering of ``recstack evaluate`` results: a rich table and a PNG bar chart."""

from __future__ import annotations

from pathlib import Path

METRIC_COLUMNS = ("HR@10", "NDCG@10", "HR@50", "NDCG@50")


def results_table(results: dict):
    """A rich Table: one row per model (and the pipeline), metrics, training time and memory."""
    from rich.table import Table

    table = Table(title="test metrics (EVAL_PROTOCOL.md, full ranking)")
    table.add_column("model")
    for c in METRIC_COLUMNS:
        table.add_column(c, justify="right")
    table.add_column("train s", justify="right")
    table.add_column("peak MB", justify="right")
    for name, m in results.items():
        cells = [f"{m.get(c, float('nan')):.4f}" for c in METRIC_COLUMNS]
        ts, mb = m.get("train_seconds"), m.get("peak_rss_mb")
        table.add_row(name, *cells, "-" if ts is None else f"{ts:.1f}", "-" if mb is None else f"{mb:.0f}")
    return table


def results_chart(results: dict, path: Path) -> Path:
    """Grouped bars of HR@10 and NDCG@10 per model, written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(names)), 4))
    for k, metric in enumerate(("HR@10", "NDCG@10")):
        ax.bar(x + (k - 0.5) * 0.4, [results[n].get(metric, 0.0) for n in names], 0.4, label=metric)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("test")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
