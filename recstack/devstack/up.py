"""`recstack up`: Kafka + Redis (embedded unless given), a bundle, topics, five services and the stream.

`stack(config)` is the context manager shared by `recstack up`, `recstack demo` and the e2e tests;
`run_stack(config)` is `recstack up`: start, print the endpoints, block until Ctrl-C / SIGTERM, stop
exactly what was started, return the exit code.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.table import Table

from recstack.devstack.bundle import SMALL_DATA_SPEC, bundle_exists, ensure_bundle
from recstack.devstack.embedded import (
    EmbeddedError,
    EmbeddedKafka,
    EmbeddedRedis,
    free_port,
    port_is_free,
)
from recstack.devstack.process import ProcessStartError
from recstack.devstack.supervisor import (
    GrpcHealth,
    HttpHealth,
    ServiceSpec,
    Supervisor,
    defer_signals,
    shutdown_signals,
)
from recstack.events.topics import TopicError, ensure_topics

log = logging.getLogger(__name__)

# name -> (gRPC port or None, metrics port); docs/DESIGN.md "Ports and settings".
DEFAULT_PORTS: dict[str, tuple[int | None, int]] = {
    "gateway": (50051, 9101),
    "retrieval": (50052, 9102),
    "ranking": (50053, 9103),
    "rerank": (50054, 9104),
    "bandit": (50055, 9105),
    "feature_stream": (None, 9106),
}
# Start order: the stages before the gateway (it connects to them), the stream last but one.
START_ORDER = ("retrieval", "ranking", "rerank", "bandit", "feature_stream", "gateway")
STAGE_ADDR_ENV = {
    "retrieval": "RETRIEVAL_ADDR",
    "ranking": "RANKING_ADDR",
    "rerank": "RERANK_ADDR",
    "bandit": "BANDIT_ADDR",
}


class PortInUseError(RuntimeError):
    """A port the stack needs is taken; the message lists them and how to pick others."""


@dataclass
class StackConfig:
    """What `recstack up` starts. Kafka/Redis are embedded when their address is None."""

    artifacts: Path = field(default_factory=lambda: Path(os.environ.get("RECSTACK_ARTIFACTS", "artifacts")))
    kafka_bootstrap: str | None = field(
        default_factory=lambda: os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or None
    )
    redis_url: str | None = field(default_factory=lambda: os.environ.get("REDIS_URL") or None)
    events_topic: str = field(default_factory=lambda: os.environ.get("RECSTACK_EVENTS_TOPIC", "user-events"))
    run_dir: Path | None = None  # logs and working dir of the children; default .stack/run-<time>-<pid>
    host: str = "127.0.0.1"
    port_offset: int = 0
    free_ports: bool = False
    train: bool = True
    data_spec: str = SMALL_DATA_SPEC
    health_timeout: float = 300.0
    grace: float = 15.0  # > the services' own drain grace (RECSTACK_GRACE_S, set to 3 s for children)
    event_partitions: int = 4
    # "grpc": retrieval, ranking and rerank are processes of their own; "inprocess": they run inside
    # the gateway (RECSTACK_STAGES=inprocess) and are not started.
    stages: str = "grpc"
    # extra environment of every child process (over os.environ), e.g. RECSTACK_EXPERIMENTS
    env: dict[str, str] = field(default_factory=dict)
    # argv of each process; tests swap in fakes. Default: the same interpreter, `-m services.NAME`.
    command: Callable[[str], list[str]] = field(
        default=lambda name: [sys.executable, "-m", f"services.{name}"]
    )

    @classmethod
    def from_options(
        cls, artifacts: Path | None, port_offset: int, free_ports: bool, train: bool, run_dir: Path | None
    ) -> StackConfig:
        """The CLI options on top of the environment defaults (artifacts None: RECSTACK_ARTIFACTS)."""
        config = cls(port_offset=port_offset, free_ports=free_ports, train=train, run_dir=run_dir)
        if artifacts is not None:
            config.artifacts = artifacts
        return config

    def resolved_run_dir(self) -> Path:
        if self.run_dir is not None:
            return self.run_dir.resolve()
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return (Path(".stack") / f"run-{stamp}-{os.getpid()}").resolve()


@dataclass
class Endpoint:
    name: str
    grpc: str | None
    metrics: str
    log: Path


@dataclass
class RunningStack:
    """What `stack()` yields: addresses of everything started, and the supervisor that owns it."""

    gateway: str
    kafka_bootstrap: str
    redis_url: str
    artifacts: Path
    events_topic: str
    run_dir: Path
    endpoints: dict[str, Endpoint]
    supervisor: Supervisor
    embedded: list[str]
    trained: bool


def plan_ports(config: StackConfig) -> dict[str, tuple[int | None, int]]:
    """The gRPC and metrics port of every process; raises PortInUseError when one is taken."""
    if config.free_ports:
        return {
            name: (free_port(config.host) if grpc else None, free_port(config.host))
            for name, (grpc, _) in DEFAULT_PORTS.items()
        }
    plan = {
        name: (grpc + config.port_offset if grpc else None, metrics + config.port_offset)
        for name, (grpc, metrics) in DEFAULT_PORTS.items()
    }
    taken = []
    for name, (grpc, metrics) in plan.items():
        for kind, port in (("gRPC", grpc), ("metrics", metrics)):
            if port is not None and not (0 < port < 65536 and port_is_free(port, config.host)):
                taken.append(f"{name} {kind} {config.host}:{port}")
    if taken:
        raise PortInUseError(
            f"port(s) already in use or invalid: {', '.join(taken)}. Another stack may be running; "
            "stop it, or rerun with --port-offset N (e.g. 100) or --free-ports."
        )
    return plan


def _child_env(config: StackConfig, base: Mapping[str, str], **extra: str) -> dict[str, str]:
    env = dict(base)
    env.setdefault("RECSTACK_GRACE_S", "3")
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("MKL_NUM_THREADS", "1")
    env["PYTHONUNBUFFERED"] = "1"
    env["RECSTACK_HOST"] = config.host
    env.update(extra)
    return env


IN_GATEWAY = ("retrieval", "ranking", "rerank")


def started(config: StackConfig) -> list[str]:
    """The processes `config` starts, in start order."""
    skip = IN_GATEWAY if config.stages == "inprocess" else ()
    return [name for name in START_ORDER if name not in skip]


def service_specs(
    config: StackConfig,
    ports: Mapping[str, tuple[int | None, int]],
    kafka: str,
    redis_url: str,
    artifacts: Path,
    base_env: Mapping[str, str] | None = None,
) -> list[ServiceSpec]:
    """The six processes in start order, with their environment and health checks."""
    base = dict(os.environ if base_env is None else base_env)
    base.update(config.env)
    common = {
        "RECSTACK_ARTIFACTS": str(artifacts),
        "REDIS_URL": redis_url,
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "RECSTACK_EVENTS_TOPIC": config.events_topic,
        "RECSTACK_EVENTS_PARTITIONS": str(config.event_partitions),
    }
    addr = {name: f"{config.host}:{ports[name][0]}" for name in STAGE_ADDR_ENV}
    specs = []
    for name in started(config):
        grpc_port, metrics_port = ports[name]
        extra = {**common, "RECSTACK_METRICS_PORT": str(metrics_port)}
        if grpc_port is not None:
            extra["RECSTACK_PORT"] = str(grpc_port)
            health: GrpcHealth | HttpHealth = GrpcHealth(f"{config.host}:{grpc_port}")
        else:
            health = HttpHealth(f"http://{config.host}:{metrics_port}/metrics")
        if name == "gateway":
            extra.update({STAGE_ADDR_ENV[s]: addr[s] for s in STAGE_ADDR_ENV})
            extra["RECSTACK_STAGES"] = config.stages
            if config.stages == "inprocess" and "RECSTACK_GATEWAY_WORKERS" not in base:
                # the gateway does the model work: one process per core
                extra["RECSTACK_GATEWAY_WORKERS"] = str(max(1, min(4, os.cpu_count() or 1)))
        specs.append(ServiceSpec(name, config.command(name), _child_env(config, base, **extra), health))
    return specs


@contextlib.contextmanager
def stack(config: StackConfig, console: Console | None = None) -> Iterator[RunningStack]:
    """Start everything `config` asks for, wait until all of it is healthy, stop it all on exit."""
    console = console or Console(stderr=True)
    artifacts = config.artifacts.resolve()
    ports = plan_ports(config)
    run_dir = config.resolved_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as body:
        try:
            if config.train and not bundle_exists(artifacts):
                console.print(
                    f"[yellow]No model bundle at {artifacts}: training a small one on {config.data_spec} "
                    "first (TrainConfig.small()).[/yellow]"
                )
            t0 = time.monotonic()
            trained = ensure_bundle(artifacts, config.data_spec, train=config.train)
            if trained:
                console.print(f"[green]trained bundle in {time.monotonic() - t0:.0f}s[/green] -> {artifacts}")
            embedded: list[str] = []
            servers: list[EmbeddedRedis | EmbeddedKafka] = []
            redis_url = config.redis_url
            if redis_url is None:
                redis_server = body.enter_context(EmbeddedRedis(host=config.host, log_dir=run_dir))
                servers.append(redis_server)
                redis_url = redis_server.url
                embedded.append("redis")
            kafka = config.kafka_bootstrap
            if kafka is None:
                broker = body.enter_context(EmbeddedKafka(host=config.host, log_dir=run_dir))
                servers.append(broker)
                kafka = broker.bootstrap
                embedded.append("kafka")
            ensure_topics(
                kafka, {config.events_topic: config.event_partitions, f"{config.events_topic}.dlq": 1}
            )
            supervisor = body.enter_context(Supervisor(run_dir, grace=config.grace, cwd=run_dir))
            specs = service_specs(config, ports, kafka, redis_url, artifacts)
            with console.status("starting services ...") as status:
                for spec in specs:
                    supervisor.start(spec)
                status.update("waiting until every service reports SERVING ...")
                waited = supervisor.wait_healthy(timeout=config.health_timeout)
            console.print(f"[green]all {len(specs)} processes healthy after {waited:.1f}s[/green]")
            endpoints = {
                name: Endpoint(
                    name,
                    f"{config.host}:{ports[name][0]}" if ports[name][0] else None,
                    f"http://{config.host}:{ports[name][1]}/metrics",
                    run_dir / f"{name}.log",
                )
                for name in started(config)
            }
            running = RunningStack(
                gateway=f"{config.host}:{ports['gateway'][0]}",
                kafka_bootstrap=kafka,
                redis_url=redis_url,
                artifacts=artifacts,
                events_topic=config.events_topic,
                run_dir=run_dir,
                endpoints=endpoints,
                supervisor=supervisor,
                embedded=embedded,
                trained=trained,
            )
            write_endpoints(running, embedded_pids=[s.process.pid for s in servers if s.process])
            yield running
        finally:
            with defer_signals():  # a second Ctrl-C must not cut the teardown short
                body.close()
            console.print(f"[dim]stack stopped; logs in {run_dir}[/dim]")


def write_endpoints(running: RunningStack, embedded_pids: list[int]) -> Path:
    """RUN_DIR/endpoints.json, written once everything is healthy (machine-readable; tests, bench)."""
    data = {
        "gateway": running.gateway,
        "kafka_bootstrap": running.kafka_bootstrap,
        "redis_url": running.redis_url,
        "events_topic": running.events_topic,
        "artifacts": str(running.artifacts),
        "embedded": running.embedded,
        "embedded_pids": embedded_pids,
        "processes": {
            name: {
                "grpc": ep.grpc,
                "metrics": ep.metrics,
                "log": str(ep.log),
                "pid": running.supervisor.processes[name].pid,
            }
            for name, ep in running.endpoints.items()
        },
    }
    path = running.run_dir / "endpoints.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(path)
    return path


def endpoints_table(running: RunningStack) -> Table:
    table = Table(title="recstack stack", show_lines=False)
    table.add_column("process")
    table.add_column("gRPC")
    table.add_column("metrics")
    table.add_column("log", overflow="fold")
    for ep in running.endpoints.values():
        table.add_row(ep.name, ep.grpc or "-", ep.metrics, str(ep.log))
    tag = " (embedded)"
    table.add_row("kafka", running.kafka_bootstrap + (tag if "kafka" in running.embedded else ""), "-", "")
    table.add_row("redis", running.redis_url + (tag if "redis" in running.embedded else ""), "-", "")
    table.add_row("artifacts", str(running.artifacts), "-", "")
    return table


def run_stack(config: StackConfig, console: Console | None = None) -> int:
    """`recstack up`: 0 after a clean Ctrl-C / SIGTERM, 1 when something failed to start or died."""
    console = console or Console()
    try:
        with shutdown_signals(), stack(config, console) as running:
            console.print(endpoints_table(running))
            console.print(
                f"gateway: [bold]{running.gateway}[/bold]   events topic: {running.events_topic}   "
                "Ctrl-C to stop"
            )
            running.supervisor.supervise()
    except KeyboardInterrupt as exc:
        console.print(f"stopped ({exc or 'Ctrl-C'})")
        return 0
    except (ProcessStartError, EmbeddedError, TopicError, PortInUseError) as exc:
        console.print(f"[red]error:[/red] {exc}", markup=True, highlight=False)
        return 1
    return 0
