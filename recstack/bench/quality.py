"""``recstack bench quality``: every model and the whole pipeline on several datasets, trained with
the default command (``recstack train``, auto profile), under EVAL_PROTOCOL.md.

Per dataset: test HR@10 and NDCG@10 of every model, of the Pop and ItemKNN baselines and of the
pipeline, training seconds and peak RSS per model (the training process's), the pipeline's
chosen methods, and the published reference numbers on the same files and protocol where known
(RecBole 1.2.1 rows measured on MovieLens 100K; ICLRec's released models on the Amazon Beauty and
Toys sequence files). The checks the project holds itself to are part of the output:
``pipeline_beats_every_model`` and, where a reference exists, ``pipeline_beats_reference``.

Default datasets: MovieLens 100K and the Amazon Beauty and Toys sequence files from
``$RECSTACK_DATASETS`` (a directory holding ml-100k/, amazon-beauty/Beauty.txt,
amazon-toys/Toys_and_Games.txt); without it, ml-100k alone, fetched into the cache.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from pathlib import Path

logger = logging.getLogger(__name__)

# Published numbers on exactly these files and protocol (test split, full ranking), by dataset name.
REFERENCES: dict[str, dict[str, dict[str, float]]] = {
    "ml-100k": {  # RecBole 1.2.1, default hyper-parameters (EVAL_PROTOCOL.md)
        "pop": {"HR@10": 0.0679, "NDCG@10": 0.0367},
        "itemknn": {"HR@10": 0.1124, "NDCG@10": 0.0619},
        "bpr_mf": {"HR@10": 0.1177, "NDCG@10": 0.0615},
        "ncf": {"HR@10": 0.1273, "NDCG@10": 0.0657},
        "gru4rec": {"HR@10": 0.1559, "NDCG@10": 0.0772},
        "sasrec": {"HR@10": 0.1930, "NDCG@10": 0.0965},
        "bert4rec": {"HR@10": 0.1951, "NDCG@10": 0.1025},
    },
    "seq:Beauty.txt": {"iclrec": {"HR@10": 0.0744, "NDCG@10": 0.0403}},
    "seq:Toys_and_Games.txt": {"iclrec": {"HR@10": 0.0834, "NDCG@10": 0.0480}},
}


def default_datasets() -> list[str]:
    """The dataset specs of the default run (see the module docstring)."""
    root = os.environ.get("RECSTACK_DATASETS")
    if not root:
        return ["ml-100k"]
    d = Path(root)
    specs = [f"ml-100k:{d / 'ml-100k'}" if (d / "ml-100k" / "u.data").is_file() else "ml-100k"]
    for rel in ("amazon-beauty/Beauty.txt", "amazon-toys/Toys_and_Games.txt"):
        if (d / rel).is_file():
            specs.append(f"seq:{d / rel}")
    return specs


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_dataset(spec: str, out: Path, seed: int = 0) -> dict:
    """Train the default bundle on ``spec`` into ``out`` and evaluate it: one dataset's entry."""
    from recstack.data import load_dataset
    from recstack.training import TrainConfig, train_bundle
    from recstack.training.bundle_eval import evaluate_bundle

    config = TrainConfig.auto()
    config.seed, config.progress = seed, False
    t0 = time.perf_counter()
    vdir = train_bundle(spec, out, config)
    train_seconds = time.perf_counter() - t0
    results = evaluate_bundle(spec, vdir)
    name = load_dataset(spec).name
    models = {
        m: {
            k: r.get(k)
            for k in ("HR@10", "NDCG@10", "HR@50", "NDCG@50", "train_seconds", "peak_rss_mb", "over")
        }
        for m, r in results.items()
        if m != "pipeline"
    }
    models = {m: {k: v for k, v in r.items() if v is not None} for m, r in models.items()}
    pipe = results["pipeline"]
    best_model = max(models, key=lambda m: models[m]["NDCG@10"])
    entry = {
        "spec": spec,
        "name": name,
        "bundle": str(vdir),
        "users": pipe["users"],
        "models": models,
        "pipeline": {k: pipe[k] for k in ("HR@10", "NDCG@10", "HR@50", "NDCG@50", "rerank", "stages")},
        "train_seconds": round(train_seconds, 1),
        "best_single_model": best_model,
        "pipeline_beats_every_model": pipe["NDCG@10"] > models[best_model]["NDCG@10"],
    }
    refs = REFERENCES.get(name)
    if refs:
        entry["references"] = refs
        entry["model_vs_reference"] = {
            m: models[m]["NDCG@10"] >= ref["NDCG@10"] for m, ref in refs.items() if m in models
        }
        best_ref = max(refs.values(), key=lambda r: r["NDCG@10"])
        entry["pipeline_beats_reference"] = (
            pipe["NDCG@10"] >= best_ref["NDCG@10"] and pipe["HR@10"] >= best_ref["HR@10"]
        )
    return entry


def run(datasets: list[str] | None = None, out: Path = Path("reports/bench/quality"), seed: int = 0) -> dict:
    """Every dataset in turn; the JSON document of ``recstack bench quality``."""
    import platform

    specs = datasets or default_datasets()
    t0 = time.perf_counter()
    report: dict = {"datasets": {}, "seed": seed, "cpus": os.cpu_count(), "machine": platform.machine()}
    for spec in specs:
        name = spec.rsplit("/", 1)[-1].split(":")[-1] or spec
        logger.info("bench quality: %s", spec)
        report["datasets"][spec] = run_dataset(spec, out / name, seed)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    report["peak_rss_mb"] = round(_peak_rss_mb(), 1)
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return report


def table(report: dict):
    """A rich Table: datasets x (models, pipeline) NDCG@10 / HR@10."""
    from rich.table import Table

    t = Table(title="test NDCG@10 / HR@10 (EVAL_PROTOCOL.md, full ranking; rankers over candidates)")
    t.add_column("model")
    names = list(report["datasets"])
    for spec in names:
        t.add_column(report["datasets"][spec]["name"], justify="right")
    rows = sorted({m for d in report["datasets"].values() for m in d["models"]}) + ["pipeline"]
    for m in rows:
        cells = []
        for spec in names:
            d = report["datasets"][spec]
            r = d["pipeline"] if m == "pipeline" else d["models"].get(m)
            cells.append("-" if r is None else f"{r['NDCG@10']:.4f} / {r['HR@10']:.4f}")
        t.add_row(m, *cells)
    return t


def plot(report: dict, path: Path) -> Path:
    """NDCG@10 per model and the pipeline, one panel per dataset, references as dashed lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    specs = list(report["datasets"])
    fig, axes = plt.subplots(1, len(specs), figsize=(5.5 * len(specs), 4.2), squeeze=False)
    for ax, spec in zip(axes[0], specs, strict=True):
        d = report["datasets"][spec]
        names = sorted(d["models"], key=lambda m: d["models"][m]["NDCG@10"]) + ["pipeline"]
        values = [d["models"][m]["NDCG@10"] for m in names[:-1]] + [d["pipeline"]["NDCG@10"]]
        colors = ["#8da0cb"] * (len(names) - 1) + ["#fc8d62"]
        ax.barh(names, values, color=colors)
        best_ref = max(d.get("references", {}).items(), key=lambda kv: kv[1]["NDCG@10"], default=None)
        if best_ref is not None:
            ax.axvline(best_ref[1]["NDCG@10"], ls="--", color="k", lw=1)
            ax.text(best_ref[1]["NDCG@10"], -0.9, f" best reference ({best_ref[0]})", fontsize=8)
        ax.set_title(d["name"])
        ax.set_xlabel("test NDCG@10")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
