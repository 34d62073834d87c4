"""`recstack demo`: the stack end to end, with real-time features visibly changing recommendations.

1. train a small bundle if none exists, start the stack (the same `stack()` as `recstack up`);
2. pick a user of the training data and replay their latest interactions into Kafka (their taste);
3. Recommend (table 1);
4. a burst of clicks and likes on items of a genre the user did not favour, into Kafka;
5. poll Redis until the stream has applied it, show recent items and genre scores before/after;
6. Recommend again (table 2) and compare; stop everything (or `--keep-running` until Ctrl-C).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from recstack.artifacts.layout import (
    CATALOG,
    CURRENT,
    MANIFEST,
    USERS,
    BundleError,
    read_current,
    read_json,
    resolve_version_dir,
)
from recstack.devstack.embedded import EmbeddedError
from recstack.devstack.process import ProcessStartError
from recstack.devstack.supervisor import shutdown_signals
from recstack.devstack.up import PortInUseError, RunningStack, StackConfig, endpoints_table, stack
from recstack.events.topics import TopicError
from recstack.features.types import UserFeatures

log = logging.getLogger(__name__)

WARMUP_EVENTS = 30
BURST_ITEMS = 8
FEATURE_TIMEOUT_S = 60.0


class DemoError(RuntimeError):
    """The demo could not run a step; the message says which and why."""


@dataclass
class BundleInfo:
    version: str
    data_spec: str
    item_genres: dict[str, list[str]]
    popularity: list[str]
    user_ids: list[str]


@dataclass
class Snapshot:
    """One Recommend reply, flattened for printing and comparing."""

    items: list[str]
    scores: list[float]
    variant: str
    stages: list[str]
    degraded: bool
    skipped: dict[str, str]


def read_bundle_info(artifacts: Path) -> BundleInfo:
    """manifest.json, catalog.json and users.json of the current bundle (docs/DESIGN.md layout)."""
    if not read_current(artifacts):
        raise DemoError(
            f"{artifacts / CURRENT} not found; train with `recstack train --data synthetic --out {artifacts}`"
        )
    try:
        version_dir = resolve_version_dir(artifacts)
        manifest = read_json(version_dir / MANIFEST)
        catalog = read_json(version_dir / CATALOG)
        users = read_json(version_dir / USERS)
    except BundleError as exc:
        raise DemoError(f"bundle at {artifacts} is incomplete or unreadable: {exc}") from exc
    return BundleInfo(
        version=str(manifest.get("version", version_dir.name)),
        data_spec=str(manifest.get("data_spec", "")),
        item_genres={str(k): list(v) for k, v in catalog.get("genres", {}).items()},
        popularity=[str(i) for i in catalog.get("popularity") or catalog.get("item_ids", [])],
        user_ids=[str(u) for u in users.get("user_ids", [])],
    )


def genre_counts(items: Sequence[str], item_genres: Mapping[str, Sequence[str]]) -> Counter[str]:
    """How often each genre appears among `items`."""
    return Counter(g for item in items for g in item_genres.get(item, ()))


def pick_new_genre(
    favoured: Mapping[str, float], item_genres: Mapping[str, Sequence[str]], min_items: int = BURST_ITEMS
) -> str:
    """The genre with at least `min_items` items that the user favours least (ties: most items)."""
    sizes = genre_counts(list(item_genres), item_genres)
    candidates = [g for g, n in sizes.items() if n >= min_items] or list(sizes)
    if not candidates:
        raise DemoError("the bundle's catalogue has no genres; the demo needs item genres")
    return min(candidates, key=lambda g: (favoured.get(g, 0.0), -sizes[g], g))


def burst_items(
    genre: str,
    item_genres: Mapping[str, Sequence[str]],
    popularity: Sequence[str],
    exclude: set[str],
    n: int = BURST_ITEMS,
) -> list[str]:
    """The `n` most popular items whose genres include `genre`, not in `exclude` (popularity order)."""
    ranked = list(popularity) + sorted(set(item_genres) - set(popularity))
    picked = [i for i in ranked if genre in item_genres.get(i, ()) and i not in exclude]
    return picked[:n]


def genre_share(items: Sequence[str], genre: str, item_genres: Mapping[str, Sequence[str]]) -> float:
    """Fraction of `items` tagged with `genre` (0 for an empty list)."""
    if not items:
        return 0.0
    return sum(genre in item_genres.get(i, ()) for i in items) / len(items)


def _user_history(info: BundleInfo, user_id: str | None) -> tuple[str, list[tuple[str, str]]]:
    """(user, their interactions oldest first as (event_type, item_id)) from the bundle's training data."""
    from recstack.data import load_dataset

    if not info.data_spec:
        raise DemoError("the bundle's manifest.json has no data_spec; pass --user and a synthetic bundle")
    frame = load_dataset(info.data_spec).interactions
    frame = frame[frame["event_type"].isin(["view", "click", "like", "purchase", "rating"])]
    if user_id is None:
        known = set(info.user_ids) if info.user_ids else set(frame["user_id"])
        counts = frame[frame["user_id"].isin(known)]["user_id"].value_counts()
        if counts.empty:
            raise DemoError(f"no interactions for the bundle's users in {info.data_spec}")
        user_id = str(counts.index[0]) if len(counts) < 10 else str(counts.index[len(counts) // 10])
    rows = frame[frame["user_id"] == user_id].sort_values("timestamp", kind="stable")
    return user_id, list(zip(rows["event_type"].astype(str), rows["item_id"].astype(str), strict=True))


async def _recommend(gateway: str, user_id: str, k: int) -> Snapshot:
    from recstack.rpc import tls
    from recstack.rpc.caller import caller_metadata
    from recstack.v1 import gateway_pb2, gateway_pb2_grpc

    # TLS (RECSTACK_TLS_CA ...) and credentials (RECSTACK_CLIENT_API_KEY / _TOKEN) from the environment
    async with tls.aio_channel(gateway) as channel:
        reply = await gateway_pb2_grpc.GatewayStub(channel).Recommend(
            gateway_pb2.RecommendRequest(user_id=user_id, k=k), timeout=15.0, metadata=caller_metadata()
        )
    return Snapshot(
        items=[i.item_id for i in reply.items],
        scores=[i.score for i in reply.items],
        variant=reply.variant,
        stages=list(reply.stages),
        degraded=reply.degraded,
        skipped=dict(reply.skipped),
    )


async def _send(running: RunningStack, user_id: str, events: Sequence[tuple[str, str]]) -> None:
    from recstack.events.producer import EventProducer
    from recstack.events.schema import new_event

    # Tansu (the embedded broker) has no idempotent producers; skip the failing attempt and its warning.
    idempotent = "kafka" not in running.embedded
    async with EventProducer(
        running.kafka_bootstrap, running.events_topic, idempotent=idempotent
    ) as producer:
        await producer.send_many(
            [
                new_event(user_id, etype, item, rating=4.0 if etype == "rating" else None)
                for etype, item in events
            ]
        )


async def _wait_for_total(running: RunningStack, user_id: str, total: int) -> UserFeatures:
    """Poll Redis until the user's event counter reaches `total`; returns their UserFeatures."""
    from recstack import redis_client
    from recstack.features.store import FeatureStore

    client = redis_client.async_redis(running.redis_url)
    try:
        store = FeatureStore(client)
        deadline = time.monotonic() + FEATURE_TIMEOUT_S
        while True:
            features = await store.get_user_features(user_id)
            if features.counters.get("total", 0) >= total:
                return features
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the feature stream applied {features.counters.get('total', 0)} of {total} events for "
                    f"{user_id} within {FEATURE_TIMEOUT_S:.0f}s; "
                    f"see {running.endpoints['feature_stream'].log}"
                )
            await asyncio.sleep(0.2)
    finally:
        await client.aclose()


def _reply_summary(snap: Snapshot) -> str:
    skipped = f"  skipped={snap.skipped}" if snap.skipped else ""
    return (
        f"variant={snap.variant or '-'}  stages={' > '.join(snap.stages) or '-'}  "
        f"degraded={snap.degraded}{skipped}"
    )


def _reco_table(
    title: str, snap: Snapshot, item_genres: Mapping[str, Sequence[str]], new_genre: str
) -> Table:
    table = Table(title=title)
    table.add_column("#", justify="right")
    table.add_column("item")
    table.add_column("genres")
    table.add_column("score", justify="right")
    for rank, (item, score) in enumerate(zip(snap.items, snap.scores, strict=True), 1):
        genres = ", ".join(
            f"[bold magenta]{g}[/bold magenta]" if g == new_genre else g for g in item_genres.get(item, ())
        )
        table.add_row(str(rank), item, genres, f"{score:.4f}")
    return table


def _features_table(before: UserFeatures, after: UserFeatures, new_genre: str) -> Table:
    table = Table(title="genre scores in Redis (EMA)")
    table.add_column("genre")
    table.add_column("before", justify="right")
    table.add_column("after", justify="right")
    genres = sorted(
        set(before.genre_scores) | set(after.genre_scores), key=lambda g: -after.genre_scores.get(g, 0.0)
    )
    for g in genres:
        name = f"[bold magenta]{g}[/bold magenta]" if g == new_genre else g
        table.add_row(name, f"{before.genre_scores.get(g, 0.0):.3f}", f"{after.genre_scores.get(g, 0.0):.3f}")
    return table


async def _demo_steps(running: RunningStack, console: Console, user_id: str | None, k: int) -> None:
    info = read_bundle_info(running.artifacts)
    user_id, history = _user_history(info, user_id)
    warmup = history[-WARMUP_EVENTS:]
    console.rule(f"user {user_id}: replaying their {len(warmup)} latest interactions into Kafka")
    baseline = await _wait_for_total(running, user_id, 0)  # Redis may already know them (REDIS_URL)
    await _send(running, user_id, warmup)
    before = await _wait_for_total(running, user_id, baseline.counters.get("total", 0) + len(warmup))
    favoured = dict(before.genre_scores)
    top = sorted(favoured.items(), key=lambda kv: -kv[1])[:3]
    console.print("favoured genres: " + ", ".join(f"{g} {s:.3f}" for g, s in top))

    first = await _recommend(running.gateway, user_id, k)
    new_genre = pick_new_genre(favoured, info.item_genres)
    console.print(_reco_table("Recommend #1", first, info.item_genres, new_genre))
    console.print(_reply_summary(first), highlight=False)

    seen = {item for _, item in history}
    burst = burst_items(new_genre, info.item_genres, info.popularity, seen | set(first.items))
    if not burst:
        raise DemoError(f"no unseen items of genre {new_genre!r} to click on")
    events = [(etype, item) for item in burst for etype in ("click", "like")]
    console.rule(f"burst: {len(events)} clicks/likes on {len(burst)} '{new_genre}' items -> Kafka")
    total_before = before.counters.get("total", 0)
    t0 = time.monotonic()
    await _send(running, user_id, events)
    after = await _wait_for_total(running, user_id, total_before + len(events))
    console.print(f"stream applied the burst in {time.monotonic() - t0:.2f}s (Kafka -> Faust -> Redis)")
    console.print("recent items before: " + ", ".join(before.recent_items[:8]))
    console.print("recent items after:  " + ", ".join(after.recent_items[:8]))
    console.print(_features_table(before, after, new_genre))

    second = await _recommend(running.gateway, user_id, k)
    console.print(_reco_table("Recommend #2 (after the burst)", second, info.item_genres, new_genre))
    console.print(_reply_summary(second), highlight=False)
    overlap = len(set(first.items) & set(second.items))
    console.print(
        f"'{new_genre}' share of the list: {genre_share(first.items, new_genre, info.item_genres):.0%} -> "
        f"{genre_share(second.items, new_genre, info.item_genres):.0%}; {overlap}/{k} items in both lists"
    )


def run_demo(
    config: StackConfig,
    user_id: str | None = None,
    k: int = 10,
    keep_running: bool = False,
    console: Console | None = None,
) -> int:
    """`recstack demo`: 0 on success (or a clean Ctrl-C), 1 when a step failed."""
    console = console or Console()
    try:
        with shutdown_signals(), stack(config, console) as running:
            console.print(endpoints_table(running))
            asyncio.run(_demo_steps(running, console, user_id, k))
            if keep_running:
                console.print(f"stack left running; gateway {running.gateway}. Ctrl-C to stop")
                running.supervisor.wait_forever()
    except KeyboardInterrupt:
        console.print("stopped")
        return 0
    except (DemoError, ProcessStartError, EmbeddedError, TopicError, PortInUseError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 1
    console.print("[green]demo finished[/green]")
    return 0
