"""`recstack replay`: online evaluation of the live stack on users it never saw, against the offline
pipeline on the same users.

1. **Bundle.** Train one without ``N`` held-out users (``recstack.evaluation.holdout``: drawn with
   the seed among users with >= 3 interactions, every row of theirs removed), or take one trained
   that way (``--artifacts``; its manifest lists the held-out users).
2. **Stack.** Start the real stack (``recstack up``'s ``stack()``: Kafka, Redis, the five gRPC
   services and the stream as processes) with an extra experiment layer ``replay`` whose variant
   ``deterministic`` (traffic 0: reached only by ``force_variant``) turns the bandit (0 slots) and
   diversity off; or target a running one (gateway, Kafka bootstrap, Redis URL).
3. **Cold start.** Recommend (k = 10) for every held-out user before any of their events: the
   unknown-user path (popularity).
4. **Replay.** Every held-out user's interactions except the last, all of them, in time order,
   as real events into the events topic (re-stamped with the current time, like ``recstack events
   produce``); then poll Redis until the stream has applied each user's count of events (no fixed
   sleep).
5. **After.** Recommend again; HR@10 and NDCG@10 of the last interaction, online, against the
   offline pipeline on the same users: ``recstack.training.bundle_eval.features_lists`` (the path
   ``recstack evaluate`` scores the pipeline with) over the features Redis holds after the same
   history (recent items newest first, an item once, at most 50; the genre EMA of
   ``features_adapter``), excluding every consumed item as the gateway does, ordered by the
   bundle's rerank settings. Both sides are scored by :func:`list_metrics` from their top-k list.
   Online is asked twice: with the deterministic variant (the comparison) and with the user's own
   A/B variant (the default experiment, one or two bandit exploration slots).
6. **Click latency.** For a sample of users: one click on the first item of their current list,
   then Recommend (deterministic variant) until the list differs; the time from the produce call to
   that reply (p50, p95).

Online user ids carry a per-run prefix (``replay-<hex>-<user>``): unknown to the bundle either way,
and never colliding with what a targeted stack already holds in Redis.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from tqdm import tqdm

from recstack.evaluation.holdout import UserEvents
from recstack.features.keys import RECENT_ITEMS_CAP
from recstack.features.types import UserFeatures

log = logging.getLogger(__name__)

REPLAY_EXPERIMENT = "replay"
DETERMINISTIC_VARIANT = f"{REPLAY_EXPERIMENT}/deterministic"
APPLY_TIMEOUT_S = 300.0
CHANGE_TIMEOUT_S = 10.0
SEND_CHUNK = 2000


class ReplayError(RuntimeError):
    """The replay could not run a step; the message says which and why."""


@dataclass
class Target:
    """A running stack to replay into instead of starting one."""

    gateway: str
    kafka_bootstrap: str
    redis_url: str
    events_topic: str = "user-events"
    redis_prefix: str = ""
    deterministic_variant: str = ""  # force_variant of a bandit-free, diversity-free variant ("": none)


@dataclass
class ReplayConfig:
    data_spec: str
    holdout_users: int | None = None  # None: 150 when training; the bundle's own when --artifacts
    seed: int = 0
    artifacts: Path | None = None
    out: Path = Path("reports/replay/artifacts")
    profile: str = "auto"
    k: int = 10
    latency_users: int = 100
    concurrency: int = 4
    target: Target | None = None
    run_dir: Path | None = None
    progress: bool = True
    command: str = ""  # how it was invoked (recorded in the report)


@dataclass
class Reply:
    items: list[str]
    variant: str
    request_id: str
    degraded: bool
    stages: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)


# --- offline side -----------------------------------------------------------------------------


def stream_features(user_id: str, events: UserEvents, bundle) -> tuple[UserFeatures, set[str]]:
    """(the features Redis holds after ``events``' history, the items the gateway never returns).

    Recent items as the stream writes them (newest first, an item moved to the front on a repeat,
    at most RECENT_ITEMS_CAP); the genre EMA as ``features_adapter.genre_profile`` (event weights,
    rating / 5; an item the bundle does not know only decays, as in the stream)."""
    from recstack.serving.features_adapter import genre_profile

    history = events.items[events.history]
    recent: list[str] = []
    for item in reversed(history):
        if item not in recent:
            recent.append(item)
        if len(recent) == RECENT_ITEMS_CAP:
            break
    idx = bundle.item_map.index(history)
    prof = genre_profile(
        idx, bundle.item_genres, events.event_types[events.history], events.ratings[events.history]
    )
    vocab = bundle.genre_vocab
    genres = {vocab[j]: float(prof[j]) for j in np.flatnonzero(prof)}
    return UserFeatures(user_id=user_id, recent_items=recent, genre_scores=genres), set(history)


def offline_lists(bundle, users: Sequence[str], events: Sequence[UserEvents], k: int) -> list[list[str]]:
    """The offline pipeline's top-k list of every held-out user after their history."""
    from recstack.training.bundle_eval import features_lists, pipeline_top_k

    pairs = [stream_features(u, e, bundle) for u, e in zip(users, events, strict=True)]
    retrieve_n = int(bundle.metrics.get("pipeline", {}).get("retrieve_n", 200))
    lists = features_lists(
        bundle, np.arange(len(users)), [p[0] for p in pairs], [p[1] for p in pairs], retrieve_n
    )
    return pipeline_top_k(bundle, lists, k)


# --- metrics ----------------------------------------------------------------------------------


MISS = 2**31  # the rank of a target that is not in the list


def target_ranks(lists: Sequence[Sequence[str]], targets: Sequence[str]) -> np.ndarray:
    """1-based position of each target in its list; MISS when absent."""
    return np.asarray(
        [list(lst).index(t) + 1 if t in lst else MISS for lst, t in zip(lists, targets, strict=True)],
        dtype=np.int64,
    )


def list_metrics(lists: Sequence[Sequence[str]], targets: Sequence[str], k: int) -> dict:
    """HR@k and NDCG@k of top-k lists (one relevant item per user), their 95 % intervals
    (Wilson for HR, normal for NDCG) and the per-user hits."""
    from recstack.evaluation.metrics import hit_ratio, ndcg

    ranks = target_ranks([list(lst)[:k] for lst in lists], targets)
    hits, gains = hit_ratio(ranks, k), ndcg(ranks, k)
    n = len(ranks)
    sd = float(gains.std(ddof=1)) if n > 1 else 0.0
    mean_ndcg = float(gains.mean()) if n else 0.0
    half = 1.96 * sd / math.sqrt(n) if n else 0.0
    return {
        f"HR@{k}": float(hits.mean()) if n else 0.0,
        f"HR@{k}_ci95": list(wilson(int(hits.sum()), n)),
        f"NDCG@{k}": mean_ndcg,
        f"NDCG@{k}_ci95": [max(0.0, mean_ndcg - half), min(1.0, mean_ndcg + half)],
        "users": n,
        "hits": int(hits.sum()),
    }


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95 % by default); (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def paired(
    online: Sequence[Sequence[str]], offline: Sequence[Sequence[str]], targets: Sequence[str], k: int
) -> dict:
    """Per-user agreement: identical top-k lists, hits only online / only offline, exact McNemar p."""
    from scipy.stats import binomtest

    on = target_ranks([list(x)[:k] for x in online], targets) <= k
    off = target_ranks([list(x)[:k] for x in offline], targets) <= k
    b, c = int(np.sum(on & ~off)), int(np.sum(~on & off))
    same = [list(a)[:k] == list(o)[:k] for a, o in zip(online, offline, strict=True)]
    return {
        "identical_lists": int(sum(same)),
        "hit_online_only": b,
        "hit_offline_only": c,
        "mcnemar_p": float(binomtest(b, b + c, 0.5).pvalue) if b + c else 1.0,
    }


def percentiles_ms(seconds: Sequence[float]) -> dict:
    """p50, p95 (linear interpolation) and the largest finite value, in ms. A timeout (inf) counts
    as slower than everything: a percentile that reaches one is None (unknown, and too slow)."""
    if not seconds:
        return {"p50": None, "p95": None, "max": None}
    arr = np.asarray(seconds, dtype=np.float64) * 1000.0
    finite = arr[np.isfinite(arr)]
    capped = np.where(np.isfinite(arr), arr, 1e15)

    def q(p: float) -> float | None:
        v = float(np.percentile(capped, p))
        return round(v, 1) if v < 1e14 else None

    return {"p50": q(50), "p95": q(95), "max": round(float(finite.max()), 1) if len(finite) else None}


# --- the live stack ---------------------------------------------------------------------------


def experiments_file(path: Path) -> Path:
    """The built-in experiment plus the ``replay`` layer (traffic 0) with the deterministic variant."""
    from recstack.experiments.config import DEFAULT_EXPERIMENT

    content = {
        "experiments": [
            DEFAULT_EXPERIMENT.model_dump(by_alias=True, exclude_unset=True),
            {
                "id": REPLAY_EXPERIMENT,
                "salt": REPLAY_EXPERIMENT,
                "layer": REPLAY_EXPERIMENT,
                "traffic": 0.0,
                "variants": [
                    {
                        "name": "deterministic",
                        "pipeline": {"bandit": {"slots": 0}, "diversity": {"method": "none"}},
                    }
                ],
            },
        ]
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1))
    return path


class Live:
    """Recommend, produce and read features against one running stack."""

    def __init__(self, target: Target, idempotent: bool, k: int):
        self.target = target
        self.idempotent = idempotent
        self.k = k

    async def __aenter__(self) -> Live:
        import grpc
        import redis.asyncio as aioredis

        from recstack.events.producer import EventProducer
        from recstack.features.keys import Keys
        from recstack.features.store import FeatureStore
        from recstack.v1 import gateway_pb2_grpc

        self.channel = grpc.aio.insecure_channel(self.target.gateway)
        self.stub = gateway_pb2_grpc.GatewayStub(self.channel)
        self.redis = aioredis.Redis.from_url(self.target.redis_url)
        self.store = FeatureStore(self.redis, Keys(self.target.redis_prefix))
        self.producer = EventProducer(
            self.target.kafka_bootstrap, self.target.events_topic, idempotent=self.idempotent
        )
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.producer.stop()
        await self.redis.aclose()
        await self.channel.close()

    async def recommend(self, user_id: str, variant: str = "") -> Reply:
        from recstack.v1 import gateway_pb2

        context = gateway_pb2.RecommendContext(force_variant=variant)
        reply = await self.stub.Recommend(
            gateway_pb2.RecommendRequest(user_id=user_id, k=self.k, context=context), timeout=10.0
        )
        return Reply(
            [i.item_id for i in reply.items],
            reply.variant,
            reply.request_id,
            reply.degraded,
            list(reply.stages),
            dict(reply.skipped),
        )


def degraded_summary(replies: Sequence[Reply]) -> dict:
    """How many replies were degraded, and which stages were skipped how often."""
    skipped: dict[str, int] = {}
    for r in replies:
        for stage in r.skipped:
            skipped[stage] = skipped.get(stage, 0) + 1
    return {"replies": sum(r.degraded for r in replies), "skipped_stages": dict(sorted(skipped.items()))}


async def _gather(jobs: Sequence, concurrency: int, desc: str, progress: bool) -> list:
    """Await coroutine factories with at most ``concurrency`` in flight, results in order."""
    sem = asyncio.Semaphore(concurrency)
    bar = tqdm(total=len(jobs), desc=desc, unit="user", disable=not progress)

    async def one(job):
        async with sem:
            out = await job()
            bar.update(1)
            return out

    try:
        return await asyncio.gather(*(one(j) for j in jobs))
    finally:
        bar.close()


async def _replay_events(live: Live, ids: Sequence[str], events: Sequence[UserEvents], progress: bool) -> int:
    """Every user's history (all rows but the last) as events, in time order; returns the count."""
    from recstack.events.schema import new_event

    rows = []
    for uid, ev in zip(ids, events, strict=True):
        for j in range(len(ev.items) - 1):
            rows.append((ev.timestamps[j], uid, ev.event_types[j], ev.items[j], ev.ratings[j]))
    rows.sort(key=lambda r: r[0])  # stable: a user's own rows keep their order
    out = [
        new_event(
            uid,
            etype,
            item,
            rating=float(r) if etype == "rating" and math.isfinite(r) else None,
        )
        for _, uid, etype, item, r in rows
    ]
    with tqdm(total=len(out), desc="replay events -> Kafka", unit="ev", disable=not progress) as bar:
        for start in range(0, len(out), SEND_CHUNK):
            bar.update(await live.producer.send_many(out[start : start + SEND_CHUNK]))
    return len(out)


async def _wait_applied(
    live: Live, ids: Sequence[str], counts: Sequence[int], progress: bool
) -> list[UserFeatures]:
    """Poll Redis until every user's interaction counter reaches its count; their features."""
    deadline = time.monotonic() + APPLY_TIMEOUT_S + sum(counts) / 200.0
    pending = dict(zip(ids, counts, strict=True))
    got: dict[str, UserFeatures] = {}
    with tqdm(total=len(ids), desc="stream applied", unit="user", disable=not progress) as bar:
        while pending:
            for uid in list(pending):
                feats = await live.store.get_user_features(uid)
                if feats.counters.get("total", 0) >= pending[uid]:
                    got[uid] = feats
                    del pending[uid]
                    bar.update(1)
            if not pending:
                break
            if time.monotonic() > deadline:
                uid = next(iter(pending))
                have = (await live.store.get_user_features(uid)).counters.get("total", 0)
                raise ReplayError(
                    f"the feature stream applied {len(ids) - len(pending)} of {len(ids)} users' histories "
                    f"within {APPLY_TIMEOUT_S + sum(counts) / 200.0:.0f} s (e.g. {uid}: {have} of "
                    f"{pending[uid]} events); is the stream running and reading the events topic?"
                )
            await asyncio.sleep(0.1)
    return [got[u] for u in ids]


async def _click_latency(live: Live, uid: str, variant: str) -> float:
    """Seconds from producing one click on the first item of the user's list to the first
    Recommend reply whose list differs (inf after CHANGE_TIMEOUT_S). Without a deterministic
    ``variant`` (a targeted stack that has none) exploration changes lists on its own, so the reply
    counts only once the clicked item has left it (a consumed item is never recommended)."""
    from recstack.events.schema import new_event

    before = await live.recommend(uid, variant)
    if not before.items:
        return math.inf
    clicked = before.items[0]
    event = new_event(uid, "click", clicked, request_id=before.request_id)
    t0 = time.perf_counter()
    await live.producer.send(event)
    while time.perf_counter() - t0 < CHANGE_TIMEOUT_S:
        reply = await live.recommend(uid, variant)
        if (reply.items != before.items) if variant else (clicked not in reply.items):
            return time.perf_counter() - t0
    return math.inf


async def run_live(
    live: Live,
    ids: Sequence[str],
    events: Sequence[UserEvents],
    config: ReplayConfig,
    deterministic: str,
) -> dict:
    """The online phases (cold start, replay, after, click latency): raw lists and timings."""
    variants = {"deterministic": deterministic} if deterministic else {}
    variants["default"] = ""
    out: dict = {"cold": {}, "after": {}, "degraded": {}, "variants_served": {}, "forced": variants}

    async def ask(forced: str, label: str) -> list:
        calls = [lambda u=u: live.recommend(u, forced) for u in ids]
        return await _gather(calls, config.concurrency, label, config.progress)

    for name, forced in variants.items():
        replies = await ask(forced, f"cold start ({name})")
        out["cold"][name] = [r.items for r in replies]
        out["degraded"][f"cold_{name}"] = degraded_summary(replies)
    t0 = time.perf_counter()
    out["events_sent"] = await _replay_events(live, ids, events, config.progress)
    out["features"] = await _wait_applied(live, ids, [len(e.items) - 1 for e in events], config.progress)
    out["applied_s"] = round(time.perf_counter() - t0, 2)
    for name, forced in variants.items():
        replies = await ask(forced, f"after the history ({name})")
        out["after"][name] = [r.items for r in replies]
        out["degraded"][f"after_{name}"] = degraded_summary(replies)
        out["variants_served"][name] = sorted({r.variant for r in replies})
    sample = list(ids)[: config.latency_users]
    latencies = []
    for uid in tqdm(sample, desc="click -> changed list", unit="user", disable=not config.progress):
        latencies.append(await _click_latency(live, uid, deterministic))
    out["latencies"] = latencies
    return out


# --- the whole run ----------------------------------------------------------------------------


def _bundle_dir(config: ReplayConfig, console: Console) -> Path:
    """The artifacts to serve: ``--artifacts``, or a bundle trained here without the held-out users."""
    if config.artifacts is not None:
        return config.artifacts
    from recstack.training import TrainConfig, train_bundle

    train = TrainConfig.named(config.profile)
    train.seed, train.progress = config.seed, config.progress
    train.holdout_users = config.holdout_users if config.holdout_users is not None else 150
    console.print(
        f"training ({config.profile} profile) on {config.data_spec} without {train.holdout_users} "
        f"held-out users into {config.out}"
    )
    train_bundle(config.data_spec, config.out, train)
    return config.out


def run_replay(config: ReplayConfig, console: Console | None = None) -> dict:
    """Run every step (module docstring); returns the report (the JSON of ``--json``)."""
    from recstack.artifacts import load_bundle
    from recstack.data import load_dataset
    from recstack.evaluation.holdout import user_events
    from recstack.events.schema import INTERACTION_TYPES
    from recstack.training.bundle_eval import held_out_users

    console = console or Console(stderr=True)
    t_start = time.perf_counter()
    artifacts = _bundle_dir(config, console)
    bundle = load_bundle(artifacts)
    held = held_out_users(bundle)
    if not held:
        raise ReplayError(
            f"bundle {bundle.version} at {artifacts} holds out no users; train it with "
            "`recstack train --holdout-users N` or let `recstack replay` train one"
        )
    if (
        config.holdout_users is not None
        and config.artifacts is not None
        and config.holdout_users != len(held)
    ):
        raise ReplayError(
            f"--holdout-users {config.holdout_users}: the bundle at {artifacts} held out {len(held)} users; "
            "omit the option or train another bundle"
        )
    holdout_record = (bundle.manifest.get("training") or {}).get("holdout") or {}
    dataset = load_dataset(config.data_spec)
    inter = dataset.interactions
    dataset.interactions = inter[inter["event_type"].isin(INTERACTION_TYPES)]  # what the stream counts
    events = user_events(dataset, held)
    targets = [e.target for e in events]
    k = config.k
    with console.status("offline pipeline lists ..."):
        offline_after = offline_lists(bundle, held, events, k)
    offline_cold = [list(bundle.popularity[:k])] * len(held)

    prefix = f"replay-{secrets.token_hex(3)}-"
    ids = [prefix + u for u in held]
    if config.target is not None:
        raw = asyncio.run(_run_target(config, config.target, ids, events))
        stack_desc = {"kind": "target", "gateway": config.target.gateway}
    else:
        raw, stack_desc = _run_own_stack(config, artifacts, ids, events, console)

    report: dict = {
        "data": config.data_spec,
        "bundle": bundle.version,
        "profile": (bundle.manifest.get("training") or {}).get("profile"),
        "models": bundle.model_names,
        "training_warnings": list((bundle.manifest.get("training") or {}).get("warnings") or []),
        "holdout": {
            "users": len(held),
            "seed": holdout_record.get("seed"),
            "rule": "users with >= 3 interactions, drawn without replacement by "
            "numpy default_rng(seed); all their rows removed before the split",
        },
        "k": k,
        "stack": stack_desc,
        "replay": {
            "events_sent": raw["events_sent"],
            "events": "every interaction of each held-out user but the last, in time order, re-stamped now",
            "applied_s": raw["applied_s"],
            "redis_recent_items_match_offline": int(
                sum(
                    f.recent_items == stream_features(u, e, bundle)[0].recent_items
                    for f, u, e in zip(raw["features"], ids, events, strict=True)
                )
            ),
        },
        "offline": {
            "after": list_metrics(offline_after, targets, k),
            "cold_start": list_metrics(offline_cold, targets, k),
        },
        "online": {},
        "degraded_replies": raw["degraded"],
    }
    forced_variants = raw["forced"]
    for name, lists in raw["after"].items():
        entry = {
            "force_variant": forced_variants.get(name) or None,
            "variants_in_replies": raw["variants_served"].get(name),
            "after": list_metrics(lists, targets, k),
            "cold_start": list_metrics(raw["cold"][name], targets, k),
            "paired_with_offline": paired(lists, offline_after, targets, k),
        }
        report["online"][name] = entry
    compared = "deterministic" if "deterministic" in report["online"] else "default"
    online_hr = report["online"][compared]["after"][f"HR@{k}"]
    lo, hi = report["offline"]["after"][f"HR@{k}_ci95"]
    latency = percentiles_ms(raw["latencies"])
    latency.update(
        {
            "users": len(raw["latencies"]),
            "timeouts": int(sum(not math.isfinite(x) for x in raw["latencies"])),
            "criterion": (
                "one click on the first item of the deterministic list; time from the produce call to "
                "the first Recommend reply whose list differs"
                if "deterministic" in raw["forced"]
                else "one click on the first item of the list; time from the produce call to the first "
                "Recommend reply without that item (no deterministic variant on the target)"
            ),
        }
    )
    report["click_to_changed_list_ms"] = latency
    report["comparison"] = {
        "online": compared,
        f"online_HR@{k}": online_hr,
        f"offline_HR@{k}": report["offline"]["after"][f"HR@{k}"],
        f"offline_HR@{k}_ci95": [lo, hi],
        "online_within_offline_ci95": bool(lo <= online_hr <= hi),
        "click_p95_ms": latency["p95"],
        "click_p95_below_250ms": latency["p95"] is not None and latency["p95"] < 250.0,
    }
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    if config.command:
        report["command"] = config.command
    return report


async def _run_target(config: ReplayConfig, target: Target, ids: Sequence[str], events) -> dict:
    async with Live(target, idempotent=True, k=config.k) as live:
        return await run_live(live, ids, events, config, target.deterministic_variant)


def _run_own_stack(config: ReplayConfig, artifacts: Path, ids, events, console: Console) -> tuple[dict, dict]:
    from recstack.devstack.up import StackConfig, stack

    run_dir = (config.run_dir or Path(".stack") / f"replay-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    exp = experiments_file(run_dir / "experiments.json")
    stack_config = StackConfig(artifacts=artifacts, free_ports=True, train=False, run_dir=run_dir)
    stack_config.env = {"RECSTACK_EXPERIMENTS": str(exp)}
    with stack(stack_config, console) as running:
        target = Target(running.gateway, running.kafka_bootstrap, running.redis_url, running.events_topic)
        idempotent = "kafka" not in running.embedded  # Tansu has no idempotent producers

        async def go() -> dict:
            async with Live(target, idempotent=idempotent, k=config.k) as live:
                return await run_live(live, ids, events, config, DETERMINISTIC_VARIANT)

        raw = asyncio.run(go())
    desc = {
        "kind": "started",
        "processes": "gateway, retrieval, ranking, rerank, bandit (gRPC), feature_stream",
        "embedded": running.embedded,
        "stages": stack_config.stages,
    }
    return raw, desc


# --- output -----------------------------------------------------------------------------------


def report_table(report: dict) -> Table:
    k = report["k"]
    table = Table(title=f"recstack replay: {report['holdout']['users']} held-out users of {report['data']}")
    table.add_column("list")
    table.add_column(f"HR@{k}", justify="right")
    table.add_column("95 % interval", justify="right")
    table.add_column(f"NDCG@{k}", justify="right")
    table.add_column("identical to offline", justify="right")

    def row(name: str, m: dict, same: str = "") -> None:
        lo, hi = m[f"HR@{k}_ci95"]
        table.add_row(name, f"{m[f'HR@{k}']:.3f}", f"{lo:.3f}-{hi:.3f}", f"{m[f'NDCG@{k}']:.3f}", same)

    row("offline pipeline, cold start", report["offline"]["cold_start"])
    row("offline pipeline, after history", report["offline"]["after"])
    n = report["holdout"]["users"]
    for name, entry in report["online"].items():
        row(f"online {name}, cold start", entry["cold_start"])
        row(
            f"online {name}, after history",
            entry["after"],
            f"{entry['paired_with_offline']['identical_lists']}/{n}",
        )
    return table


def summary_lines(report: dict) -> list[str]:
    c = report["comparison"]
    lat = report["click_to_changed_list_ms"]
    k = report["k"]
    lo, hi = c[f"offline_HR@{k}_ci95"]
    return [
        f"online ({c['online']}) HR@{k} {c[f'online_HR@{k}']:.3f}, offline {c[f'offline_HR@{k}']:.3f} "
        f"[{lo:.3f}, {hi:.3f}]: within the interval: {c['online_within_offline_ci95']}",
        f"click -> changed list over {lat['users']} users: p50 {lat['p50']} ms, p95 {lat['p95']} ms "
        f"({lat['timeouts']} timeouts); p95 < 250 ms: {c['click_p95_below_250ms']}",
    ]
