"""``recstack bench serve``: the chain under an open-loop load, beside the floor of its transport.

For each mode (``split``: five services as separate processes, as ``recstack up``; ``inprocess``:
retrieval, ranking and rerank inside the gateway), the bench starts the real stack on free ports
with a bundle (``--artifacts``; default: a bundle trained once with the small profile on a
synthetic catalogue of 10,169 items, kept under reports/bench/serve-bundle), gives every user of
the load recent items in Redis (so every stage runs), starts the floor (``recstack.devstack.floor``:
a grpc.aio front that reads one Redis pipeline and calls four echo servers one after another,
each its own process) and, at each offered rate, runs the load against the stack and then against
the floor: requests at fixed intervals, whatever the replies (open loop), k = 10, a 1 s client
deadline, after one second of warm-up at that rate.

Hot swap (the last mode): at 50 RPS, a new bundle version is promoted (``CURRENT`` moved) 5 s in;
the bench reports failed calls, degraded share, replies whose stages ran different versions and
how long until every stage answered with the new version (``hot_swap``).

Security (``--secure``): beside each mode's plain stack, a second copy of it (its own Redis, Kafka
and processes) with TLS + mTLS on every gRPC hop (a throwaway CA, recstack/rpc/certs.py) and API-key
authentication at the gateway (RECSTACK_AUTH_MODE=api_key; the load client presents the key),
measured as target ``stack_secure`` right after the plain stack at each rate, so that both see the
same machine load; ``secure_overhead_ms`` is its p50/p99 minus the plain stack's at each rate. At
50 RPS (the issue's reference rate) plain and secure alternate ``SECURE_ROUNDS`` times and
``secure_overhead_p50_pct_at_50`` is the median of the rounds' relative p50 differences.

Per rate and target: achieved_rps (OK replies per second), p50/p95/p99 latency of the OK replies,
errors by status code, degraded_share, cpu_ms_per_request (CPU time of each program of the bench
per OK reply: the stack's processes, Tansu, Redis, the stream and the load's own client). Per
target: sustained_rps, the highest offered rate with
p99 < 200 ms, no errors and < 1 % degraded replies; then capacity_ratio = stack / floor
sustained_rps and p99_ratio_at_100 (stack p99 / floor p99 at 100 RPS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from recstack.rpc.certs import DevPki

log = logging.getLogger(__name__)

DEFAULT_RATES = (25, 50, 100, 200, 300)
DEFAULT_DATA = "synthetic:n_users=6000,n_items=13000"  # 10,169 items with interactions
DEFAULT_BUNDLE = Path("reports/bench/serve-bundle")
P99_LIMIT_MS = 200.0
SECURE_RATE = 50.0  # the rate the TLS + auth overhead goal is stated at
SECURE_ROUNDS = 3  # plain / secure alternations at SECURE_RATE
DEGRADED_LIMIT = 0.01
RECENT_ITEMS = 20


def default_bundle(path: Path = DEFAULT_BUNDLE, data: str = DEFAULT_DATA) -> Path:
    """The default bench bundle (trained once with the small profile, then reused)."""
    from recstack.devstack.bundle import bundle_exists
    from recstack.training import TrainConfig, train_bundle

    if not bundle_exists(path):
        log.info("training the bench bundle on %s into %s", data, path)
        config = TrainConfig.small()
        config.progress = False
        train_bundle(data, path, config)
    return path


def seed_redis(redis_url: str, artifacts: Path, n_users: int, seed: int = 0) -> list[str]:
    """Recent items for ``n_users`` users of the bundle (so that every stage runs); their ids."""
    from recstack import redis_client
    from recstack.artifacts import load_bundle
    from recstack.features.keys import Keys

    bundle = load_bundle(artifacts)
    rng = random.Random(seed)
    users = rng.sample(bundle.user_ids, min(n_users, len(bundle.user_ids)))
    items = bundle.item_map.ids
    keys = Keys()
    client = redis_client.sync_redis(redis_url)
    try:
        pipe = client.pipeline(transaction=False)
        for user in users:
            pipe.delete(keys.recent_items(user))
            pipe.rpush(keys.recent_items(user), *rng.sample(items, min(RECENT_ITEMS, len(items))))
        pipe.execute()
    finally:
        client.close()
    return users


async def open_loop(address: str, users: Sequence[str], rate: float, duration: float, k: int = 10,
                    deadline: float = 1.0, warmup: float = 1.0, connections: int = 16,
                    secure: Secure | None = None) -> dict:  # fmt: skip
    """Requests at fixed intervals for ``duration`` seconds (after ``warmup`` unrecorded seconds),
    spread round-robin over ``connections`` client connections (as several backends would call);
    over mTLS with an API key when ``secure`` is given."""
    import grpc

    from recstack.rpc import tls
    from recstack.v1 import gateway_pb2, gateway_pb2_grpc

    options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
    settings = secure.client_tls() if secure is not None else tls.settings_from({})
    metadata = secure.metadata() if secure is not None else ()
    channels = [tls.aio_channel(address, options, settings) for _ in range(connections)]
    try:
        stubs = [gateway_pb2_grpc.GatewayStub(c) for c in channels]
        loop = asyncio.get_running_loop()
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        degraded = 0
        n_warm, n = int(rate * warmup), int(rate * duration)
        start = loop.time() + 0.05

        async def one(i: int) -> None:
            nonlocal degraded
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            request = gateway_pb2.RecommendRequest(user_id=users[i % len(users)], k=k)
            t0 = time.perf_counter()
            try:
                reply = await stubs[i % len(stubs)].Recommend(request, timeout=deadline, metadata=metadata)
            except grpc.aio.AioRpcError as exc:
                if i >= n_warm:
                    errors[exc.code().name] += 1
                return
            if i >= n_warm:
                latencies.append(time.perf_counter() - t0)
                degraded += bool(reply.degraded)

        await asyncio.gather(*(one(i) for i in range(n_warm + n)))
    finally:
        for c in channels:
            await c.close()
    lat = np.asarray(latencies) * 1000.0
    q = (lambda p: round(float(np.percentile(lat, p)), 2)) if len(lat) else (lambda p: None)
    return {
        "offered_rps": rate,
        "achieved_rps": round(len(lat) / duration, 2),
        "p50_ms": q(50),
        "p95_ms": q(95),
        "p99_ms": q(99),
        "errors": dict(errors),
        "degraded_share": round(degraded / max(1, len(lat)), 4),
        "requests": n,
    }


def measured_load(
    address: str, users: Sequence[str], rate: float, duration: float, secure: Secure | None = None
) -> dict:
    """open_loop, plus ``cpu_ms_per_request``: the CPU milliseconds each program of the bench (its
    child processes by name, and this process, the load's client) spent per OK reply."""
    from recstack.bench.proc_cpu import descendants_cpu_s, per_request_ms

    before, client = descendants_cpu_s(), time.process_time()
    result = asyncio.run(open_loop(address, users, rate, duration, secure=secure))
    after = descendants_cpu_s()
    before["bench client"], after["bench client"] = client, time.process_time()
    # the load's warm-up second is in the CPU window too: count its requests
    replies = result["achieved_rps"] * (duration + 1.0)
    result["cpu_ms_per_request"] = per_request_ms(before, after, replies)
    return result


@dataclass
class Secure:
    """The TLS material and API key of a ``--secure`` stack (``secure_stack_env``)."""

    pki: DevPki
    api_key: str

    def server_env(self) -> dict[str, str]:
        """What every process of the stack gets: mTLS on every hop, API keys at the gateway."""
        return {**self.pki.env(mtls=True), "RECSTACK_AUTH_MODE": "api_key",
                "RECSTACK_API_KEYS_FILE": str(self.pki.ca.parent / "api-keys.yaml")}  # fmt: skip

    def client_tls(self):  # noqa: ANN201 (recstack.rpc.tls.TlsSettings)
        from recstack.rpc import tls

        env = self.pki.env()
        client = ("RECSTACK_TLS_CA", "RECSTACK_TLS_CLIENT_CERT", "RECSTACK_TLS_CLIENT_KEY")
        return tls.settings_from({k: env[k] for k in client})

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.api_key),)


def make_secure(out: Path) -> Secure:
    """A throwaway CA, server and client certificates and one API key (caller ``bench``) under ``out``."""
    import secrets

    import yaml

    from recstack.rpc.certs import dev_pki
    from services.gateway.auth import hash_key

    pki = dev_pki(out)
    key = secrets.token_urlsafe(32)
    (out / "api-keys.yaml").write_text(
        yaml.safe_dump({"keys": [{"caller": "bench", "sha256": hash_key(key)}]})
    )
    return Secure(pki, key)


@contextlib.contextmanager
def patched_environ(extra: dict[str, str]) -> Iterator[None]:
    """os.environ with ``extra`` while the block runs (the stack's children and health checks read it)."""
    saved = {k: os.environ.get(k) for k in extra}
    os.environ.update(extra)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def sustained(per_rate: dict, target: str) -> float:
    """The highest offered rate with p99 < 200 ms, no errors and < 1 % degraded (0 if none)."""
    ok = [
        float(rate)
        for rate, r in per_rate.items()
        if r[target]["p99_ms"] is not None
        and r[target]["p99_ms"] < P99_LIMIT_MS
        and not r[target]["errors"]
        and r[target]["degraded_share"] < DEGRADED_LIMIT
    ]
    return max(ok, default=0.0)


@contextlib.contextmanager
def floor_servers(redis_url: str, run_dir: Path) -> Iterator[str]:
    """The floor's front and four echo servers as processes; yields the front's address."""
    from recstack.devstack.embedded import free_port
    from recstack.devstack.supervisor import PortOpen, ServiceSpec, Supervisor

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ports = [free_port("127.0.0.1") for _ in range(5)]
    with Supervisor(run_dir, grace=5.0, cwd=run_dir) as sup:
        for k, port in enumerate(ports[1:]):
            argv = [sys.executable, "-m", "recstack.devstack.floor", "echo", "--port", str(port)]
            sup.start(ServiceSpec(f"floor-echo-{k}", argv, env, PortOpen("127.0.0.1", port)))
        echoes = ",".join(f"127.0.0.1:{p}" for p in ports[1:])
        argv = [sys.executable, "-m", "recstack.devstack.floor", "front", "--port", str(ports[0]),
                "--redis", redis_url, "--echo", echoes]  # fmt: skip
        sup.start(ServiceSpec("floor-front", argv, env, PortOpen("127.0.0.1", ports[0])))
        sup.wait_healthy(timeout=60)
        yield f"127.0.0.1:{ports[0]}"


async def hot_swap_load(address: str, users: Sequence[str], artifacts: Path, rate: float = 50.0,
                        duration: float = 45.0, promote_at: float = 5.0) -> dict:  # fmt: skip
    """Open-loop load while a new bundle version is promoted (``CURRENT`` moved to a copy of the
    current version under a new name) ``promote_at`` seconds in: failed calls, degraded replies,
    replies whose stages ran different versions, and when every stage answered with the new one."""
    import shutil

    import grpc

    from recstack.artifacts import write_current
    from recstack.v1 import gateway_pb2, gateway_pb2_grpc

    old = (artifacts / "CURRENT").read_text().strip()
    new = f"{old}-swap"
    shutil.copytree(artifacts / old, artifacts / new)
    manifest = artifacts / new / "manifest.json"
    import json

    data = json.loads(manifest.read_text())
    data["version"] = new
    manifest.write_text(json.dumps(data))
    records: list[tuple[float, str, bool, tuple[str, ...]]] = []
    async with grpc.aio.insecure_channel(address) as channel:
        stub = gateway_pb2_grpc.GatewayStub(channel)
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        stages = ("retrieval", "ranking", "rerank")

        async def one(i: int) -> None:
            await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
            request = gateway_pb2.RecommendRequest(user_id=users[i % len(users)], k=10)
            t = loop.time() - start
            try:
                reply = await stub.Recommend(request, timeout=1.0)
            except grpc.aio.AioRpcError as exc:
                records.append((t, exc.code().name, False, ()))
                return
            records.append((t, "OK", reply.degraded, tuple(reply.model_versions.get(s, "") for s in stages)))

        async def promote() -> None:
            await asyncio.sleep(promote_at)
            await asyncio.to_thread(write_current, artifacts, new)

        await asyncio.gather(promote(), *(one(i) for i in range(int(rate * duration))))
    records.sort()
    ok = [r for r in records if r[1] == "OK"]
    mixed = sum(1 for r in ok if len(set(r[3])) > 1)
    late_old = [t for t, _, _, v in ok if any(x != new for x in v)]
    all_new_after = (max(late_old) - promote_at) if late_old and max(late_old) > promote_at else 0.0
    return {
        "offered_rps": rate,
        "duration_s": duration,
        "promoted_at_s": promote_at,
        "failed": sum(1 for r in records if r[1] != "OK"),
        "errors": dict(Counter(r[1] for r in records if r[1] != "OK")),
        "degraded_share": round(sum(1 for r in ok if r[2]) / max(1, len(ok)), 4),
        "mixed_version_replies": mixed,
        "every_stage_new_after_s": round(all_new_after, 2),
        "new_version_seen": any(all(x == new for x in r[3]) for r in ok),
        "reload_s": reload_interval_s(),
    }


def reload_interval_s() -> float:
    """The stages' ``RECSTACK_RELOAD_S`` in this run, read as the services read it (the stack
    inherits this process's environment)."""
    from recstack.rpc.settings import ModelServiceSettings

    return ModelServiceSettings().reload_s


def run_mode(mode: str, artifacts: Path, rates: Sequence[float], duration: float, users: int,
             hot_swap: bool = False, secure: bool = False) -> dict:  # fmt: skip
    """One mode: the stack and the floor (and, with ``secure``, the secure copy of the stack)
    measured interleaved at each rate."""
    from rich.console import Console

    from recstack.devstack.up import StackConfig, stack

    run_dir = Path(tempfile.mkdtemp(prefix=f"recstack-bench-serve-{mode}-"))
    config = StackConfig(artifacts=artifacts, free_ports=True, train=False, run_dir=run_dir, stages=mode)
    per_rate: dict = {}
    rounds: list[dict] = []
    with stack(config, Console(stderr=True, quiet=True)) as running:
        load_users = seed_redis(running.redis_url, artifacts, users)
        with contextlib.ExitStack() as beside:
            floor = beside.enter_context(floor_servers(running.redis_url, run_dir / "floor"))
            targets: list[tuple[str, str, Secure | None]] = [
                ("stack", running.gateway, None), ("floor", floor, None)
            ]  # fmt: skip
            if secure:
                address, sec = beside.enter_context(secure_stack(mode, artifacts, users, run_dir / "secure"))
                targets.append(("stack_secure", address, sec))
            for _, address, sec in targets:  # a few seconds of steady state first
                asyncio.run(open_loop(address, load_users, min(rates), 3.0, warmup=0.0, secure=sec))
            for rate in rates:
                entry = {}
                for target, address, sec in targets:
                    entry[target] = measured_load(address, load_users, rate, duration, secure=sec)
                    log.info("%s %s at %s RPS: %s", mode, target, rate, entry[target])
                per_rate[f"{rate:g}"] = entry
            if secure:
                rounds = secure_rounds(per_rate, targets, load_users, duration)
        swap = asyncio.run(hot_swap_load(running.gateway, load_users, artifacts)) if hot_swap else None
    out: dict = {"per_rate": per_rate}
    if swap is not None:
        out["hot_swap"] = swap
    out["sustained_rps"] = {t: sustained(per_rate, t) for t in ("stack", "floor")}
    floor_rps = out["sustained_rps"]["floor"]
    out["capacity_ratio"] = round(out["sustained_rps"]["stack"] / floor_rps, 3) if floor_rps else None
    if secure:
        out["sustained_rps"]["stack_secure"] = sustained(per_rate, "stack_secure")
        out["secure_overhead_ms"] = {
            r: {q: _diff(e["stack_secure"][q], e["stack"][q]) for q in ("p50_ms", "p99_ms")}
            for r, e in per_rate.items()
        }
        if rounds:
            out["secure_rounds_at_50"] = rounds
            out["secure_overhead_p50_pct_at_50"] = median_overhead_pct(rounds)
    at_100 = per_rate.get("100")
    if at_100 and at_100["stack"]["p99_ms"] and at_100["floor"]["p99_ms"]:
        out["p99_ratio_at_100"] = round(at_100["stack"]["p99_ms"] / at_100["floor"]["p99_ms"], 2)
    return out


def _diff(a: float | None, b: float | None) -> float | None:
    return round(a - b, 2) if a is not None and b is not None else None


@contextlib.contextmanager
def secure_stack(mode: str, artifacts: Path, users: int, run_dir: Path) -> Iterator[tuple[str, Secure]]:
    """A copy of the ``mode`` stack (its own Redis, Kafka and processes) with TLS + mTLS + API keys,
    running beside the plain one; yields its gateway address and the load's credentials."""
    from rich.console import Console

    from recstack.devstack.up import StackConfig, stack

    run_dir.mkdir(parents=True, exist_ok=True)
    sec = make_secure(run_dir / "tls")
    config = StackConfig(artifacts=artifacts, free_ports=True, train=False, run_dir=run_dir, stages=mode)
    with contextlib.ExitStack() as running_stack:
        with patched_environ(sec.server_env()):  # the children and the start's health checks read it
            running = running_stack.enter_context(stack(config, Console(stderr=True, quiet=True)))
        seed_redis(running.redis_url, artifacts, users)  # the same users and recent items as the plain one
        yield running.gateway, sec


def secure_rounds(per_rate: dict, targets: Sequence[tuple[str, str, Secure | None]],
                  users: Sequence[str], duration: float) -> list[dict]:  # fmt: skip
    """p50 of the plain and the secure stack at SECURE_RATE: the round of the rate sweep, then
    ``SECURE_ROUNDS - 1`` more alternations (the overhead goal is small against the machine's noise)."""
    entry = per_rate.get(f"{SECURE_RATE:g}")
    if entry is None:
        return []
    address = {t: (a, s) for t, a, s in targets}
    rounds = [{t: entry[t]["p50_ms"] for t in ("stack", "stack_secure")}]
    for _ in range(SECURE_ROUNDS - 1):
        one = {}
        for target in ("stack", "stack_secure"):
            addr, sec = address[target]
            one[target] = asyncio.run(open_loop(addr, users, SECURE_RATE, duration, secure=sec))["p50_ms"]
        log.info("secure round at %g RPS: %s", SECURE_RATE, one)
        rounds.append(one)
    return rounds


def median_overhead_pct(rounds: Sequence[dict]) -> float | None:
    """Median over ``rounds`` of secure p50 / plain p50 - 1, in percent (None without a pair)."""
    pairs = [(r.get("stack"), r.get("stack_secure")) for r in rounds]
    pct = [100.0 * (secure / plain - 1.0) for plain, secure in pairs if plain and secure]
    return round(float(np.median(pct)), 1) if pct else None


def run(
    artifacts: Path | None = None,
    rates: Sequence[float] = DEFAULT_RATES,
    duration: float = 15.0,
    modes: Sequence[str] = ("split", "inprocess"),
    users: int = 1000,
    secure: bool = False,
) -> dict:
    """The JSON document of ``recstack bench serve``."""
    import shutil

    from recstack.artifacts import load_bundle
    from recstack.artifacts.bundle import resolve_version_dir

    source = resolve_version_dir(Path(artifacts) if artifacts is not None else default_bundle())
    bundle = load_bundle(source)
    # a private artifacts root: the hot-swap run promotes a new version in it
    artifacts = Path(tempfile.mkdtemp(prefix="recstack-bench-serve-artifacts-"))
    shutil.copytree(source, artifacts / source.name)
    (artifacts / "CURRENT").write_text(source.name + "\n")
    report: dict = {
        "artifacts": str(source),
        "bundle": bundle.version,
        "catalogue_items": len(bundle.item_map),
        "rates": list(rates),
        "duration_s": duration,
        "k": 10,
        "client_deadline_s": 1.0,
        "cpus": os.cpu_count(),
        "secure": secure,
        "modes": {},
    }
    for mode in modes:
        stages = "grpc" if mode == "split" else mode
        report["modes"][mode] = run_mode(
            stages, artifacts, rates, duration, users, hot_swap=mode == modes[-1], secure=secure
        )
    report["load_average"] = [round(x, 2) for x in os.getloadavg()]
    return report


def plot(report: dict, path: Path) -> Path:
    """p99 latency against offered RPS: each mode's stack and its floor."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for mode, data in report["modes"].items():
        rates = [float(r) for r in data["per_rate"]]
        for target, style in (("stack", "-o"), ("floor", "--x")):
            p99 = [data["per_rate"][r][target]["p99_ms"] or np.nan for r in data["per_rate"]]
            ax.plot(rates, p99, style, label=f"{mode} {target}")
    ax.axhline(P99_LIMIT_MS, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("offered requests/s")
    ax.set_ylabel("p99 latency (ms)")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
