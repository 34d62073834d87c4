"""The `recstack` command. Each command is a thin wrapper: it parses options and calls a typed
function in the package (imported lazily so that `recstack --help` stays fast).

Ownership while the skeleton is built: each section below belongs to one part of the package.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from services.feature_stream.settings import StreamSettings

app = typer.Typer(
    name="recstack",
    help="Real-time recommender stack: train, evaluate, serve, stream and run the whole stack.",
    no_args_is_help=True,
    add_completion=False,
)
events_app = typer.Typer(help="Produce and inspect user events.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (JSON output).", no_args_is_help=True)
app.add_typer(events_app, name="events")
app.add_typer(bench_app, name="bench")
redis_app = typer.Typer(help="Redis maintenance.", no_args_is_help=True)
app.add_typer(redis_app, name="redis")

SERVICES = ("gateway", "retrieval", "ranking", "rerank", "bandit")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


# --- training and evaluation (recstack/training, recstack/evaluation) -------------------------


@app.command("train")
def train_command(
    data: str = typer.Option(
        ...,
        "--data",
        help="Dataset spec: ml-100k[:DIR], movielens:DIR, csv:FILE[,ITEMS], seq:FILE, synthetic[:k=v,...].",
    ),
    out: Path = typer.Option(
        Path("artifacts"), "--out", help="Artifacts directory (a new version + CURRENT)."
    ),
    profile: str = typer.Option(
        "auto",
        "--profile",
        help="auto (default: sizes and budgets from the data) or small (synthetic smoke runs).",
    ),
    models: str | None = typer.Option(
        None, "--models", help="Comma-separated subset, e.g. two_tower,multitask."
    ),
    threads: int | None = typer.Option(
        None, "--threads", min=1, help="torch threads (default 1: reproducible, fastest on a shared CPU)."
    ),
    seed: int = typer.Option(0, "--seed", help="Random seed (same data and seed, same metrics)."),
    valid_users: int | None = typer.Option(
        None, "--valid-users", min=1, help="Early-stopping validation sample (default 10000 users)."
    ),
    max_minutes: float | None = typer.Option(
        None, "--max-minutes", min=0.1, help="Per-model wall-clock safety net (default 90; warns when hit)."
    ),
    params: Path | None = typer.Option(
        None, "--params", help="Parameters found by `recstack tune` (its JSON file) to train with."
    ),
    jobs: int | None = typer.Option(
        None, "--jobs", min=1, help="Models trained side by side (default: CPUs, up to 2; same result)."
    ),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="tqdm progress bars."),
    holdout_users: int = typer.Option(
        0, "--holdout-users", min=0, help="Remove N users (drawn with --seed) from the data entirely."
    ),
) -> None:
    """Train every model on a dataset, configure the serving pipeline on validation, write a bundle.

    Under torchrun (N workers) the models train data-parallel, each worker on its shard of the
    users; rank 0 writes the bundle (README, "Distributed training")."""
    import logging
    import os

    from recstack.data import DataError
    from recstack.training import TrainConfig, distributed, train_bundle
    from recstack.training.plans import UnknownModelNameError
    from recstack.training.tune import ParamsError, read_params

    rank = os.environ.get("RANK") if os.environ.get("WORLD_SIZE", "1") not in ("", "1") else None
    prefix = f"[rank {rank}] " if rank is not None else ""
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {prefix}%(name)s: %(message)s")
    if profile == "full":
        typer.secho("--profile full is now the default 'auto' profile", err=True)
        profile = "auto"
    try:
        config = TrainConfig.named(profile)
        config.seed, config.progress = seed, progress
        if threads is not None:
            config.threads = threads
        if valid_users is not None:
            config.valid_users = valid_users
        if max_minutes is not None:
            config.max_minutes = max_minutes
        if jobs is not None:
            config.jobs = jobs
        config.holdout_users = holdout_users
        if params is not None:
            config.params = read_params(params)
        if models:
            config = config.select([m.strip() for m in models.split(",") if m.strip()])
        with distributed.session() as dist:
            if dist is not None and not dist.main:
                config.progress = False
            version_dir = train_bundle(data, out, config, dist=dist)
    except (DataError, UnknownModelNameError, ParamsError, distributed.DistributedError) as exc:
        _fail(str(exc))
    if dist is None or dist.main:
        typer.echo(str(version_dir))


@app.command("tune")
def tune_command(
    data: str = typer.Option(..., "--data", help="Dataset spec (as for train)."),
    budget_minutes: float = typer.Option(
        ..., "--budget-minutes", min=0.5, help="Search time for all models together (minutes)."
    ),
    out: Path = typer.Option(Path("tuned.json"), "--out", help="Where the chosen parameters go (JSON)."),
    models: str | None = typer.Option(None, "--models", help="Comma-separated subset (default: all)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the samplers and of every trial."),
    valid_users: int | None = typer.Option(None, "--valid-users", min=1, help="Validation sample size."),
) -> None:
    """Search each model's key parameters on the validation split (Optuna, pruned) within a budget;
    train with them: `recstack train --data SPEC --params tuned.json`."""
    import json
    import logging

    from recstack.data import DataError
    from recstack.training.tune import ParamsError, tune

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = [m.strip() for m in models.split(",") if m.strip()] if models else None
    try:
        result = tune(data, budget_minutes, names, seed=seed, valid_users=valid_users)
    except (DataError, ParamsError, ValueError) as exc:
        _fail(str(exc))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    typer.echo(json.dumps(result["params"], indent=1))
    typer.echo(f"written to {out}; train with: recstack train --data {data} --params {out}")


@app.command("evaluate")
def evaluate_command(
    data: str = typer.Option(..., "--data", help="The dataset spec the bundle was trained on."),
    artifacts: Path = typer.Option(
        Path("artifacts"), "--artifacts", help="Artifacts dir (CURRENT) or a version dir."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: model -> metrics."),
    chart: Path | None = typer.Option(
        None, "--chart", help="PNG chart path (default: ARTIFACTS/evaluation.png)."
    ),
    pipeline: bool = typer.Option(True, "--pipeline/--no-pipeline", help="Also evaluate the whole pipeline."),
) -> None:
    """Test metrics (EVAL_PROTOCOL.md) of every model in a bundle and of the whole serving pipeline."""
    import json

    from recstack.artifacts import BundleError
    from recstack.data import DataError
    from recstack.training.bundle_eval import BundleDataMismatchError, evaluate_bundle

    try:
        results = evaluate_bundle(data, artifacts, pipeline=pipeline)
    except (DataError, BundleError, BundleDataMismatchError) as exc:
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(results, indent=1, default=float))
        return
    from rich.console import Console

    from recstack.training.report import results_chart, results_table

    console = Console()
    console.print(results_table(results))
    path = results_chart(
        results, chart or (artifacts if artifacts.is_dir() else artifacts.parent) / "evaluation.png"
    )
    console.print(f"chart: {path}")


# --- serving (services/*, recstack/rpc) --------------------------------------------------------


@app.command("serve")
def serve_command(
    name: str = typer.Argument(..., help=f"Service to run: one of {', '.join(SERVICES)}."),
    port: int | None = typer.Option(None, help="gRPC port (sets RECSTACK_PORT)."),
    metrics_port: int | None = typer.Option(None, help="Prometheus port (sets RECSTACK_METRICS_PORT)."),
    artifacts: Path | None = typer.Option(None, help="Bundle directory (sets RECSTACK_ARTIFACTS)."),
) -> None:
    """Run one gRPC service in the foreground (same as `python -m services.NAME`)."""
    import importlib
    import os

    if name not in SERVICES:
        _fail(f"unknown service {name!r}; choose one of {', '.join(SERVICES)}")
    for variable, value in (
        ("RECSTACK_PORT", port),
        ("RECSTACK_METRICS_PORT", metrics_port),
        ("RECSTACK_ARTIFACTS", artifacts),
    ):
        if value is not None:
            os.environ[variable] = str(value)
    module = importlib.import_module(f"services.{name}.__main__")
    raise typer.Exit(module.main())


# --- stream and events (services/feature_stream, recstack/features, recstack/events) -----------


@redis_app.command("migrate-keys")
def redis_migrate_keys_cmd(
    source: str = typer.Option(None, "--from", envvar="REDIS_URL", help="Redis holding the old key names."),
    target: str = typer.Option(
        None, "--to", help="Redis to write the new names to (default: --from, in place)."
    ),
    target_cluster: bool = typer.Option(
        False, "--to-cluster", help="--to is a Redis Cluster node (RECSTACK_REDIS_CLUSTER for --from)."
    ),
    prefix: str = typer.Option("", envvar="RECSTACK_REDIS_PREFIX", help="Key prefix of the deployment."),
    delete: bool = typer.Option(False, "--delete", help="Delete the old keys after every copy succeeded."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Copy features, popularity, Thompson and LinUCB arms and A/B records from the key names before
    hash tags to the tagged names (docs/operations.md, "Upgrading to hash-tagged keys"). Stop the
    stream worker first; idempotent."""
    import json
    from dataclasses import asdict

    import redis

    from recstack.features.migrate import migrate_keys
    from recstack.redis_cluster import sync_from_url

    if not source:
        _fail("--from or REDIS_URL is required")
    try:
        src = sync_from_url(source)
        dst = src if not target else sync_from_url(target, cluster=target_cluster)
        report = migrate_keys(src, dst, prefix, delete=delete)
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        _fail(f"migration failed: {exc}")
    if as_json:
        typer.echo(json.dumps(asdict(report)))
    else:
        typer.echo(
            f"copied {report.copied} keys, merged {report.merged_records} A/B records, "
            f"skipped {report.skipped}, deleted {report.deleted}: {report.kinds}"
        )


@app.command("stream")
def stream_cmd(
    bootstrap: str = typer.Option(None, envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka host:port[,...]."),
    redis_url: str = typer.Option(None, envvar="REDIS_URL", help="redis://host:port/db"),
    artifacts: str = typer.Option(None, envvar="RECSTACK_ARTIFACTS", help="Bundle dir (item genres)."),
    metrics_port: int = typer.Option(None, envvar="RECSTACK_METRICS_PORT", help="Prometheus port, 0: off."),
    rebuild: bool = typer.Option(
        False,
        "--rebuild",
        help="Replay the retained events topic into Redis (e.g. an empty one after a loss), then exit. "
        "Idempotent; safe beside the live worker.",
    ),
    as_json: bool = typer.Option(False, "--json", help="With --rebuild: print the report as JSON."),
) -> None:
    """Run the feature-stream worker (user events -> Redis features and bandit rewards) until SIGTERM.

    With --rebuild: rebuild Redis from the events topic and exit (the topic's retention bounds what
    can be rebuilt; see docs/DESIGN.md)."""
    from pydantic import ValidationError

    from services.feature_stream.app import run_worker
    from services.feature_stream.settings import StreamSettings

    overrides = {
        "kafka_bootstrap_servers": bootstrap,
        "redis_url": redis_url,
        "artifacts": artifacts,
        "metrics_port": metrics_port,
    }
    try:
        settings = StreamSettings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        _fail(f"invalid stream settings (--bootstrap/KAFKA_BOOTSTRAP_SERVERS, --redis-url/REDIS_URL):\n{exc}")
    if rebuild:
        _rebuild_redis(settings, as_json)
        return
    raise typer.Exit(run_worker(settings))


def _rebuild_redis(settings: StreamSettings, as_json: bool) -> None:
    import asyncio
    import json

    from tqdm import tqdm

    from services.feature_stream.rebuild import RebuildError
    from services.feature_stream.rebuild import rebuild as run_rebuild

    bar = tqdm(unit="ev", desc=f"rebuild from {settings.events_topic}", disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    try:
        report = asyncio.run(run_rebuild(settings, on_progress=progress))
    except RebuildError as exc:
        _fail(str(exc))
    finally:
        bar.close()
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    else:
        typer.echo(
            f"rebuilt Redis from {report.topic}: {report.read} events read, {report.applied} applied, "
            f"{report.skipped} already in Redis, {report.invalid} invalid, in {report.seconds:.1f} s"
        )
    if report.truncated:
        typer.echo(
            f"warning: partitions {report.truncated} start past offset 0: their oldest events are past "
            "the topic's retention and are not in Redis",
            err=True,
        )


@events_app.command("produce")
def events_produce_cmd(
    source: str = typer.Option(..., "--from", help="Dataset spec, e.g. synthetic or ml-100k:DIR."),
    rate: float = typer.Option(None, help="Events per second (default: as fast as possible)."),
    limit: int = typer.Option(None, help="Stop after this many events."),
    bootstrap: str = typer.Option(..., envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka host:port."),
    topic: str = typer.Option("user-events", envvar="RECSTACK_EVENTS_TOPIC"),
    original_timestamps: bool = typer.Option(
        False, help="Keep the dataset's timestamps instead of stamping events with the current time."
    ),
) -> None:
    """Replay a dataset's interactions as user events in time order (rate-limited, with a progress bar)."""
    import asyncio

    from tqdm import tqdm

    from recstack.data import DataError, load_dataset
    from recstack.events.producer import EventProducer, ProducerError, events_from_interactions, replay

    try:
        dataset = load_dataset(source)
    except DataError as exc:
        _fail(str(exc))
    total = len(dataset.interactions) if limit is None else min(limit, len(dataset.interactions))
    events = events_from_interactions(dataset.interactions, retime=not original_timestamps)

    async def run() -> int:
        with tqdm(total=total, unit="ev", desc=f"produce {topic}") as bar:
            async with EventProducer(bootstrap, topic) as producer:
                return await replay(events, producer, rate=rate, limit=limit, on_sent=bar.update)

    try:  # signed with RECSTACK_EVENT_PRODUCER_ID / RECSTACK_EVENT_KEYS_FILE when both are set
        sent = asyncio.run(run())
    except (ProducerError, ValueError) as exc:  # SigningConfigError, KafkaSecurityError are ValueErrors
        _fail(str(exc))
    typer.echo(f"sent {sent} events to {topic}")


@events_app.command("tail")
def events_tail_cmd(
    topic: str = typer.Option("user-events", envvar="RECSTACK_EVENTS_TOPIC", help="e.g. user-events.dlq"),
    bootstrap: str = typer.Option(..., envvar="KAFKA_BOOTSTRAP_SERVERS", help="Kafka host:port."),
    limit: int = typer.Option(10, help="Print at most this many records."),
    idle_s: float = typer.Option(2.0, help="Stop after this many seconds without a record."),
) -> None:
    """Print records of a topic as JSON lines (value, key, partition, offset, headers: DLQ reasons)."""
    import asyncio
    import json

    from recstack.events.tail import TailError, tail

    async def run() -> None:
        async for record in tail(bootstrap, topic, limit=limit, idle_s=idle_s):
            typer.echo(json.dumps(record))

    try:
        asyncio.run(run())
    except TailError as exc:
        _fail(str(exc))


@bench_app.command("stream")
def bench_stream_cmd(
    events: int = typer.Option(20_000, help="Events per phase."),
    batch: int = typer.Option(500, help="Writer / worker batch size."),
    data: str = typer.Option("synthetic", help="Dataset spec the events come from."),
    e2e: bool = typer.Option(True, help="Also run raw aiokafka and Faust end to end (Kafka -> Redis)."),
    rate: float = typer.Option(2000.0, help="Offered events/s of the latency phase."),
    duration: float = typer.Option(10.0, help="Seconds of the latency phase."),
    repeats: int = typer.Option(2, help="Throughput runs per consumer (alternating; best reported)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Benchmark FeatureWriter, the raw aiokafka ceiling and the Faust worker: events/s of both and
    event-to-feature p50/p99 at a fixed rate (REDIS_URL/KAFKA_BOOTSTRAP_SERVERS, else embedded)."""
    import json
    import os

    from recstack.bench.stream import BenchError, run_stream_bench

    try:
        result = run_stream_bench(
            events=events,
            batch=batch,
            data_spec=data,
            redis_url=os.environ.get("REDIS_URL"),
            bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS"),
            end_to_end=e2e,
            rate=rate,
            duration_s=duration,
            repeats=repeats,
        )
    except (BenchError, ValueError) as exc:
        _fail(str(exc))
    if json_out:
        typer.echo(json.dumps(result))
        return

    def show(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for key, inner in value.items():
                show(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            typer.echo(f"{prefix}: {value}")

    show("", result)


# --- experiments and diversity (recstack/experiments, recstack/diversity) ------------------------

ab_app = typer.Typer(help="A/B experiments: reports with trustworthy statistics.", no_args_is_help=True)
app.add_typer(ab_app, name="ab")
DEFAULT_ML100K = "ml-100k"  # fetched into the cache when no directory is given


@bench_app.command("serve")
def bench_serve_cmd(
    artifacts: Path | None = typer.Option(
        None, "--artifacts", help="Bundle to serve (default: a small bundle on 10,169 synthetic items)."
    ),
    rates: str = typer.Option("25,50,100,200,300", "--rates", help="Offered requests/s, comma-separated."),
    duration: float = typer.Option(15.0, "--duration", min=1.0, help="Seconds of load per rate and target."),
    modes: str = typer.Option("split,inprocess", "--modes", help="split and/or inprocess."),
    png: Path = typer.Option(Path("reports/bench/serve.png"), "--png", help="p99 against offered RPS."),
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON."),
    secure: bool = typer.Option(
        False,
        "--secure",
        help="Also measure the stack with mTLS on every hop and API-key auth (stack_secure).",
    ),
) -> None:
    """The chain under open-loop load at fixed rates, beside the floor of its transport."""
    import json
    import logging

    from recstack.bench.serve import plot, run

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rate_list = [float(r) for r in rates.split(",") if r.strip()]
    except ValueError:
        _fail(f"--rates must be numbers separated by commas, got {rates!r}")
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    if not rate_list or any(r <= 0 for r in rate_list):
        _fail(f"--rates must be positive numbers, got {rates!r}")
    if not mode_list or set(mode_list) - {"split", "inprocess"}:
        _fail(f"--modes must be split and/or inprocess, got {modes!r}")
    report = run(artifacts, rate_list, duration, mode_list, secure=secure)
    report["plot"] = str(plot(report, png))
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    for mode, data in report["modes"].items():
        typer.echo(
            f"{mode}: sustained {data['sustained_rps']['stack']:.0f} RPS (floor "
            f"{data['sustained_rps']['floor']:.0f}), capacity_ratio {data['capacity_ratio']}, "
            f"p99_ratio_at_100 {data.get('p99_ratio_at_100')}"
        )
        if "secure_overhead_ms" in data:
            typer.echo(
                f"{mode} secure (mTLS + API key): sustained {data['sustained_rps']['stack_secure']:.0f} RPS, "
                f"added latency by rate {data['secure_overhead_ms']}"
            )


@bench_app.command("doc")
def bench_doc_cmd(
    results: Path = typer.Option(Path("bench/results"), "--results", help="The committed benchmark JSON."),
    out: Path = typer.Option(Path("docs/benchmarks.md"), "--out", help="The document to write."),
    check: bool = typer.Option(False, "--check", help="Fail when OUT differs instead of writing it."),
) -> None:
    """Render docs/benchmarks.md from the committed benchmark JSON (every number from a run)."""
    from recstack.bench.doc import render

    text = render(results)
    if check:
        if not out.exists() or out.read_text() != text:
            _fail(f"{out} is not what `recstack bench doc` renders from {results}; run it and commit")
        typer.echo(f"{out} is up to date")
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    typer.echo(f"wrote {out}")


@bench_app.command("retrieval")
def bench_retrieval_cmd(
    items: int = typer.Option(1_000_000, "--items", min=1000, help="Catalogue size (synthetic vectors)."),
    dim: int = typer.Option(64, "--dim", min=2),
    k: int = typer.Option(100, "--k", min=1),
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON."),
) -> None:
    """Approximate retrieval index (as a bundle of this size would choose it) against exact search."""
    import json
    import logging

    from recstack.bench.retrieval import run_bench

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = run_bench(items, dim, k=k)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
        return
    typer.echo(
        f"{result['index']}: recall@{k} {result[f'recall@{k}']}, {result['speedup']}x exact's queries/s, "
        f"retrieval core p99 {result['core_single_request']['p99_ms']} ms"
    )


@bench_app.command("train-scale")
def bench_train_scale_cmd(
    users: int = typer.Option(30_000, "--users", min=10, help="Users of the synthetic dataset."),
    items: int = typer.Option(25_000, "--items", min=10, help="Items of the synthetic dataset."),
    interactions: int = typer.Option(
        300_000, "--interactions", min=100, help="About this many interaction rows."
    ),
    seed: int = typer.Option(0, "--seed"),
    out: Path | None = typer.Option(None, "--out", help="Work directory (bundle, log); default a temp dir."),
    profile: bool = typer.Option(
        False, "--profile", help="Train with --jobs 1 under cProfile; top functions."
    ),
    models: str | None = typer.Option(None, "--models", help="Train only these (comma-separated)."),
    timeout_minutes: float | None = typer.Option(
        None, "--timeout-minutes", min=0.1, help="Stop training after."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON."),
) -> None:
    """The default `recstack train` on a synthetic dataset of this shape in a child process: wall
    time per stage and per model, peak memory of the process tree, the issue-13 goal checks."""
    import json

    from recstack.bench.train_scale import run, summary

    extra = ("--models", models) if models else ()
    result = run(users, items, interactions, seed, out, profile, extra, timeout_minutes)
    if as_json:
        typer.echo(json.dumps(result, indent=1))
    else:
        typer.echo(summary(result))
    if "error" in result:
        raise typer.Exit(1)


@bench_app.command("quality")
def bench_quality_cmd(
    data: list[str] = typer.Option(
        None,
        "--data",
        help="Dataset spec (repeat for several). Default: ml-100k, and the Amazon Beauty and Toys "
        "sequence files when $RECSTACK_DATASETS holds them.",
    ),
    out: Path = typer.Option(Path("reports/bench/quality"), "--out", help="Where the bundles go."),
    png: Path = typer.Option(Path("reports/bench/quality.png"), "--png", help="The plot."),
    seed: int = typer.Option(0, "--seed"),
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON."),
) -> None:
    """Every model and the pipeline on each dataset with the default `recstack train`: test HR@10,
    NDCG@10, train seconds, peak RSS, against the published references."""
    import json
    import logging

    from recstack.bench.quality import plot, run, table
    from recstack.data import DataError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        report = run(list(data) if data else None, out, seed)
    except DataError as exc:
        _fail(str(exc))
    report["plot"] = str(plot(report, png))
    if as_json:
        typer.echo(json.dumps(report, indent=1, default=float))
        return
    from rich.console import Console

    Console().print(table(report))
    typer.echo(f"plot: {png}")


@bench_app.command("diversity")
def bench_diversity_cmd(
    data: str = typer.Option(DEFAULT_ML100K, help="Dataset spec for the offline trade-off curve."),
    png: Path = typer.Option(Path("reports/diversity/tradeoff.png"), help="Trade-off curve PNG."),
    no_tradeoff: bool = typer.Option(False, "--no-tradeoff", help="Latency only."),
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON."),
) -> None:
    """MMR/DPP latency against seed-style implementations, and the NDCG/diversity trade-off curve."""
    import json

    from recstack.bench.diversity import run

    result = run(None if no_tradeoff else data, png)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        typer.echo(
            f"mmr {result['mmr_speedup_vs_seed']:.0f}x, "
            f"dpp {result['dpp_speedup_vs_seed']:.0f}x faster than seed"
        )


@ab_app.command("report")
def ab_report_cmd(
    experiment: str = typer.Argument(..., help="Experiment id."),
    records: Path | None = typer.Option(
        None, "--records", help="Per-user records, CSV or JSON lines (default: read them from Redis)."
    ),
    redis_url: str | None = typer.Option(
        None, "--redis", envvar="REDIS_URL", help="Redis with the stream's A/B records (exp:{exp}:user:*)."
    ),
    prefix: str = typer.Option("", "--prefix", envvar="RECSTACK_REDIS_PREFIX", help="Redis key prefix."),
    config: Path | None = typer.Option(
        None, "--config", envvar="RECSTACK_EXPERIMENTS", help="Experiments file."
    ),
    out: Path = typer.Option(Path("reports/ab"), help="Output directory."),
    alpha: float = typer.Option(0.05, help="Significance level."),
    quiet: bool = typer.Option(False, "--quiet", help="Print only the paths, not the report."),
) -> None:
    """Statistics of one experiment: prints the report and writes report.md, lifts.png and
    comparisons.csv under OUT/EXPERIMENT."""
    from recstack.experiments.config import ExperimentConfigError, UnknownExperimentError
    from recstack.experiments.report import (
        build_report,
        load_redis_records,
        render_markdown,
        resolve_experiment,
        write_report,
    )
    from recstack.experiments.stats import ExperimentStatsError

    if not 0 < alpha < 1:
        _fail(f"--alpha must be in (0, 1), got {alpha}")
    try:
        exp = resolve_experiment(experiment, config)
        if records is not None:
            source: object = records
        elif redis_url:
            source = load_redis_records(redis_url, experiment, prefix)
        else:
            _fail("no records: pass --records FILE or --redis URL (or set REDIS_URL)")
        report = build_report(source, exp, alpha=alpha)  # type: ignore[arg-type]
        if records is None:
            report.source = f"Redis {redis_url} (exp:{experiment}:user:*)"
        paths = write_report(report, out / experiment)
    except (ExperimentConfigError, UnknownExperimentError, ExperimentStatsError) as exc:
        _fail(str(exc))
    if not quiet:
        typer.echo(render_markdown(report, None))
    for kind in ("markdown", "png", "csv"):
        typer.echo(f"{kind}: {paths[kind]}")


# --- bandits and off-policy evaluation (recstack/exploration) ----------------------------------


@bench_app.command("bandit")
def bench_bandit_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON."),
    decisions: int = typer.Option(2000, "--decisions", min=1, help="Timed decisions per policy."),
    seed_decisions: int = typer.Option(100, "--seed-decisions", min=1, help="Timed seed-style decisions."),
    warm_updates: int = typer.Option(20_000, "--warm-updates", min=1, help="Observations before timing."),
) -> None:
    """Decisions/s and p99 of every policy (200 candidates, d = 32) against a seed-style LinUCB."""
    from recstack.bench.bandit import run

    run(json=as_json, decisions=decisions, seed_decisions=seed_decisions, warm_updates=warm_updates)


@bench_app.command("regret")
def bench_regret_cmd(
    rounds: int = typer.Option(100_000, "--rounds", min=1, help="Rounds per seed."),
    out: Path = typer.Option(Path("reports/bandit/regret.png"), "--out", help="PNG of the regret curves."),
    vw: bool = typer.Option(False, "--vw", help="Add Vowpal Wabbit --cb_explore_adf --squarecb."),
    seeds: str = typer.Option("0,1,2", "--seeds", help="Comma-separated environment seeds."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Cumulative regret of LinUCB, LinTS, epsilon-greedy and uniform (and VW) on a known model."""
    import json

    from recstack.exploration.simulation import SimulationConfig, SimulationError, plot_regret, simulate

    try:
        seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
        config = SimulationConfig(
            n_rounds=rounds, seeds=seed_list, include_vw=vw, record_every=max(1, rounds // 500)
        )
        result = simulate(config)
    except ValueError as exc:  # SimulationError, or a malformed --seeds
        _fail(str(exc) if isinstance(exc, SimulationError) else f"--seeds must be integers: {exc}")
    path = plot_regret(result, out)
    summary = {**result.summary(), "png": str(path)}
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=float))
        return
    for name, stats in summary["policies"].items():
        typer.echo(f"{name:<16} regret {stats['final_regret_mean']:10.1f} +- {stats['final_regret_std']:.1f}")
    typer.echo(f"plot: {path}")


@app.command("ope")
def ope_cmd(
    log: Path = typer.Option(..., "--log", help="Logged bandit feedback (recstack JSONL or OBD CSV)."),
    policy: str = typer.Option(
        ...,
        "--policy",
        help="Target policy: logged, uniform, best, json:PATH, softmax:TEMP, or a learning policy "
        "replayed through the log: linucb[:alpha=A,ridge=R], lints[:v=V], linucb-hybrid, "
        "thompson[:prior_alpha=A,prior_beta=B].",
    ),
    fmt: str = typer.Option("auto", "--format", help="auto, recstack or obd."),
    as_json: bool = typer.Option(False, "--json", help="Print the full JSON."),
) -> None:
    """Off-policy estimates (IPS, SNIPS, DR, replay) of a target policy on a logged file."""
    import json

    from recstack.exploration.ope.data import OPEError
    from recstack.exploration.ope.runner import run_ope

    if fmt not in ("auto", "recstack", "obd"):
        _fail(f"--format must be auto, recstack or obd, got {fmt!r}")
    try:
        result = run_ope(log, policy, fmt=fmt)
    except (OPEError, OSError) as exc:
        _fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=float))
        return
    typer.echo(f"{result['records']} records, {result['actions']} actions, policy {policy}")
    for name, est in result["estimates"].items():
        typer.echo(f"{name:<8} {json.dumps(est, default=float)}")


# --- security: keys, tokens, certificates (docs/operations.md "Security") -------------------------

auth_app = typer.Typer(
    help="Issue API keys, JWTs, event-signing keys and dev certificates.", no_args_is_help=True
)
app.add_typer(auth_app, name="auth")


def _append_yaml_entry(path: Path, section: str, entry: object) -> None:
    """Add ``entry`` to the list (keys) or mapping (producers) ``section`` of the YAML file ``path``."""
    import yaml

    data = yaml.safe_load(path.read_text()) if path.exists() and path.read_text().strip() else {}
    if not isinstance(data, dict):
        _fail(f"{path} is not a YAML mapping")
    if isinstance(entry, dict) and section == "producers":
        data.setdefault(section, {}).update(entry)
    else:
        data.setdefault(section, []).append(entry)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    path.chmod(0o600)


@auth_app.command("new-key")
def auth_new_key_cmd(
    caller: str = typer.Option(..., "--caller", help="Caller name (metrics label, logs)."),
    keys_file: Path = typer.Option(..., "--file", help="RECSTACK_API_KEYS_FILE to add the key's hash to."),
    methods: str = typer.Option("", "--methods", help="Comma-separated methods it may call (default all)."),
) -> None:
    """Create an API key: its SHA-256 goes into the keys file, the key itself is printed once."""
    import secrets

    from services.gateway.auth import hash_key

    key = "rk_" + secrets.token_urlsafe(32)
    entry: dict[str, object] = {"caller": caller, "sha256": hash_key(key)}
    if methods.strip():
        entry["methods"] = [m.strip() for m in methods.split(",") if m.strip()]
    _append_yaml_entry(keys_file, "keys", entry)
    typer.echo(key)


@auth_app.command("jwt")
def auth_jwt_cmd(
    key_file: Path = typer.Option(..., "--key-file", help="PEM private key (RS256/ES256) or HS256 secret."),
    sub: str = typer.Option(..., "--sub", help="The caller (sub claim)."),
    scope: str = typer.Option("recstack.recommend", "--scope", help="Space-separated scopes."),
    audience: str = typer.Option("", "--audience", help="aud claim (RECSTACK_JWT_AUDIENCE)."),
    issuer: str = typer.Option("", "--issuer", help="iss claim (RECSTACK_JWT_ISSUER)."),
    ttl: float = typer.Option(3600.0, "--ttl", help="Seconds until it expires."),
) -> None:
    """Sign a JWT for a gateway caller (development and tests; production tokens come from your IdP)."""
    import time

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    data = key_file.read_bytes()
    if b"-----BEGIN" in data:
        key = serialization.load_pem_private_key(data, password=None)
        alg = (
            "RS256"
            if isinstance(key, rsa.RSAPrivateKey)
            else "ES256"
            if isinstance(key, ec.EllipticCurvePrivateKey)
            else ""
        )
        if not alg:
            _fail("only RSA and EC P-256 private keys are supported")
    else:
        key, alg = data.strip(), "HS256"
    now = int(time.time())
    claims: dict[str, object] = {"sub": sub, "iat": now, "exp": now + int(ttl), "scope": scope}
    if audience:
        claims["aud"] = audience
    if issuer:
        claims["iss"] = issuer
    typer.echo(jwt.encode(claims, key, algorithm=alg))


@auth_app.command("event-key")
def auth_event_key_cmd(
    producer: str = typer.Option(..., "--producer", help="Producer id (RECSTACK_EVENT_PRODUCER_ID)."),
    keys_file: Path = typer.Option(..., "--file", help="RECSTACK_EVENT_KEYS_FILE to add the secret to."),
) -> None:
    """Create an event-signing secret for a producer in the keys file."""
    from recstack.events.signing import new_secret

    _append_yaml_entry(keys_file, "producers", {producer: new_secret()})
    typer.echo(f"added producer {producer!r} to {keys_file}")


@auth_app.command("dev-certs")
def auth_dev_certs_cmd(
    out: Path = typer.Option(Path(".stack/tls"), "--out", help="Directory for ca.crt, server.*, client.*."),
    hosts: str = typer.Option("localhost,127.0.0.1", "--hosts", help="Names/IPs of the server certificate."),
) -> None:
    """A throwaway CA and server/client certificates for local TLS; prints the RECSTACK_TLS_* exports."""
    from recstack.rpc.certs import dev_pki

    pki = dev_pki(out.resolve(), tuple(h.strip() for h in hosts.split(",") if h.strip()))
    for name, value in pki.env().items():
        typer.echo(f"export {name}={value}")


# --- dev stack and demo (recstack/devstack) -----------------------------------------------------


_ARTIFACTS_OPT = typer.Option(
    None, "--artifacts", help="Bundle dir (default: $RECSTACK_ARTIFACTS or ./artifacts)."
)
_OFFSET_OPT = typer.Option(0, "--port-offset", help="Add N to every default port (gateway 50051+N ...).")
_FREE_OPT = typer.Option(
    False, "--free-ports", help="Use free ports chosen by the OS instead of the defaults."
)
_TRAIN_OPT = typer.Option(True, "--train/--no-train", help="Train a small bundle when none exists.")
_RUN_DIR_OPT = typer.Option(None, "--run-dir", help="Logs and working dir (default: .stack/run-TIME-PID).")


@app.command("up")
def up_command(
    artifacts: Path | None = _ARTIFACTS_OPT,
    port_offset: int = _OFFSET_OPT,
    free_ports: bool = _FREE_OPT,
    train: bool = _TRAIN_OPT,
    run_dir: Path | None = _RUN_DIR_OPT,
    stages: str = typer.Option(
        "grpc", "--stages", help="grpc: each stage its own process; inprocess: stages inside the gateway."
    ),
) -> None:
    """Run the whole stack locally (embedded Kafka/Redis unless KAFKA_BOOTSTRAP_SERVERS/REDIS_URL)."""
    from recstack.devstack.up import StackConfig, run_stack

    if stages not in ("grpc", "inprocess"):
        _fail(f"--stages must be grpc or inprocess, got {stages!r}")
    config = StackConfig.from_options(artifacts, port_offset, free_ports, train, run_dir)
    config.stages = stages
    raise typer.Exit(run_stack(config))


@app.command("demo")
def demo_command(
    artifacts: Path | None = _ARTIFACTS_OPT,
    port_offset: int = _OFFSET_OPT,
    free_ports: bool = _FREE_OPT,
    run_dir: Path | None = _RUN_DIR_OPT,
    user: str | None = typer.Option(
        None, "--user", help="User id to demo (default: a user of the training data)."
    ),
    k: int = typer.Option(10, "--k", min=1, max=100, help="Items per recommendation list."),
    keep_running: bool = typer.Option(False, "--keep-running", help="Leave the stack up until Ctrl-C."),
) -> None:
    """Train if needed, start the stack, recommend, send events, show features and recommendations change."""
    from recstack.devstack.demo import run_demo
    from recstack.devstack.up import StackConfig

    config = StackConfig.from_options(artifacts, port_offset, free_ports, True, run_dir)
    raise typer.Exit(run_demo(config, user_id=user, k=k, keep_running=keep_running))


@app.command("replay")
def replay_command(
    data: str = typer.Option(..., "--data", help="Dataset spec (as for train), e.g. ml-100k[:DIR]."),
    holdout_users: int | None = typer.Option(
        None, "--holdout-users", min=1, help="Users held out of training (default 150; --artifacts: its own)."
    ),
    artifacts: Path | None = typer.Option(
        None, "--artifacts", help="A bundle trained with --holdout-users (default: train one into --out)."
    ),
    out: Path = typer.Option(Path("reports/replay/artifacts"), "--out", help="Where a trained bundle goes."),
    profile: str = typer.Option("auto", "--profile", help="Training profile when training: auto or small."),
    seed: int = typer.Option(0, "--seed", help="Seed of the held-out users and of training."),
    k: int = typer.Option(10, "--k", min=1, max=100, help="List length (HR@k, NDCG@k)."),
    latency_users: int = typer.Option(
        100, "--latency-users", min=0, help="Users timed click -> changed list."
    ),
    gateway: str | None = typer.Option(None, "--gateway", help="Target a running stack: gateway host:port."),
    bootstrap: str | None = typer.Option(None, "--kafka", help="With --gateway: Kafka bootstrap servers."),
    redis_url: str | None = typer.Option(None, "--redis", help="With --gateway: the stack's Redis URL."),
    topic: str = typer.Option("user-events", "--topic", envvar="RECSTACK_EVENTS_TOPIC", help="Events topic."),
    redis_prefix: str = typer.Option("", "--redis-prefix", envvar="RECSTACK_REDIS_PREFIX"),
    deterministic_variant: str = typer.Option(
        "",
        "--deterministic-variant",
        help="With --gateway: force_variant of a variant without bandit slots nor diversity (EXP/VARIANT).",
    ),
    run_dir: Path | None = _RUN_DIR_OPT,
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bars (stderr)."),
) -> None:
    """Online HR@k / NDCG@k of the live stack on users held out of training, against the offline
    pipeline on the same users; cold start versus after their history; click -> changed list."""
    import json
    import logging
    import shlex
    import sys

    from rich.console import Console

    from recstack.artifacts import BundleError
    from recstack.data import DataError
    from recstack.devstack.embedded import EmbeddedError
    from recstack.devstack.process import ProcessStartError
    from recstack.devstack.replay import (
        ReplayConfig,
        ReplayError,
        Target,
        report_table,
        run_replay,
        summary_lines,
    )
    from recstack.devstack.up import PortInUseError
    from recstack.events.producer import ProducerError
    from recstack.events.topics import TopicError
    from recstack.training.plans import UnknownModelNameError

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    target = None
    given = [x for x in (gateway, bootstrap, redis_url) if x]
    if given and len(given) != 3:
        _fail("targeting a running stack needs --gateway, --kafka and --redis together")
    if gateway:
        if artifacts is None:
            _fail("--gateway needs --artifacts: the bundle that stack serves")
        target = Target(gateway, bootstrap, redis_url, topic, redis_prefix, deterministic_variant)  # type: ignore[arg-type]
    config = ReplayConfig(
        data_spec=data,
        holdout_users=holdout_users,
        seed=seed,
        artifacts=artifacts,
        out=out,
        profile=profile,
        k=k,
        latency_users=latency_users,
        target=target,
        run_dir=run_dir,
        progress=progress,
        command=shlex.join(["recstack", *sys.argv[1:]]) if sys.argv[1:2] == ["replay"] else "",
    )
    console = Console(stderr=True)
    try:
        report = run_replay(config, console)
    except (
        ReplayError, DataError, BundleError, UnknownModelNameError, ProducerError, TopicError,
        ProcessStartError, EmbeddedError, PortInUseError,
    ) as exc:  # fmt: skip
        _fail(str(exc))
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    out_console = Console()
    out_console.print(report_table(report))
    for line in summary_lines(report):
        out_console.print(line, highlight=False)


if __name__ == "__main__":
    app()
