"""Write side of the Redis features: applies a batch of validated events in two Lua steps.

Key names are those of recstack/features/keys.py (hash-tagged; below without the tags). Step 1
(writer_user.lua, one call per slot of the batch's users) writes the users' keys and returns each
event's effects on other tags; step 2 (writer_groups.lua, one call per slot of those tags) applies
them. On a single Redis each step is one call. docs/DESIGN.md § "Redis Cluster" has the protocol.

Per event (each ``event_id`` at most once: ``SET {u:USER}:event:{event_id} NX EX dedup_ttl`` in the
user's call):

* every event: ``user:{id}:stats`` counter of its type and ``last_active = max(old, ts)``;
  ``total`` counts interactions only (not impressions nor session events).
* interactions (view, click, like, purchase, rating):
  - ``user:{id}:recent_items``: LREM the item (an earlier occurrence moves to the front instead of
    appearing twice), LPUSH, LTRIM 0 49 (newest first, at most RECENT_ITEMS_CAP).
  - ``user:{id}:genre_scores``: EMA with alpha GENRE_EMA_ALPHA=0.1: every genre of the user is
    multiplied by (1 - alpha), then alpha * weight is added to each genre of the item (an item
    without genres only decays). Weights (EventWeights, configurable): view 0.5, click 1,
    like 1.5, purchase 2, rating rating/5.
  - ``item:{id}:stats`` counter of the type; ``items:popularity`` ZINCRBY of the weight, decayed in
    time (see "Popularity" below).
  - rewards (click, like, purchase with a request_id): the item's Thompson arm alpha += 1, at most
    once per (request_id, item) while the impression is pending; when that impression carried a
    bandit segment, the segment arm ``bandit:tsseg:{segment}|{item}`` gets the same increment and
    its expiry is pushed to ``segment_arm_ttl_s`` (default 30 days; 0 = never): a segment arm
    nobody was served for that long drops back to its borrowed prior.
* impressions: ``item:{id}:stats`` ``impression`` += 1 for every served item; with a request_id,
  ``imp:{request_id}`` records the slate (item -> 0) and ``imp:pending`` its window end
  (event ts + reward_window_s). A valid segment id in the context entry ``bandit_segment`` (set
  by the gateway, see recstack/exploration/segments.py; an invalid one is ignored) is kept in
  ``imp:{request_id}:seg`` (first impression of the request wins) with the same expiry.
* A/B records (impressions with experiment_id and variant, and one more per context entry
  ``ab.<experiment_id> = variant``: a request in several experiment layers; impressions whose
  context has ``qa = "1"`` (forced variants, QA traffic) write no A/B record): ``exp:{exp}:variants``,
  ``exp:{exp}:{variant}:stats`` (impressions, users = users first exposed in this variant) and the
  user's record ``exp:{exp}:user:{id}`` (variant, first_exposure, impressions). A reward event whose
  request_id has a pending impression is an outcome of that impression's variant: stats and user
  record count it by type, and ``users_{type}`` counts users with at least one such outcome.

Popularity: exponential decay with half-life H (``popularity_half_life_s``, default one day; 0 keeps
plain weighted counts). An event of weight w at time t is worth w * 2^(-(now - t) / H) at time now.
Instead of decaying every score on every event, each increment is scaled up by exp((t - E) / tau)
(tau = H / ln 2) relative to an epoch E kept in ``items:popularity:epoch`` (set to the first event's
second): the stored score is then the decayed popularity at time E, and the ranking (all the gateway
reads, via FeatureStore.get_popular) is the ranking at any later time, because every score shares
the factor exp(-(now - E) / tau). FeatureStore.get_popular_scores(n, now) applies that factor. When
an increment's exponent (t - E) / tau passes POPULARITY_RESCALE_AT (50, i.e. 72 half-lives: 72 days
for H = 1 day), the script rescales every score by exp((E - t') / tau) and moves E to t' = floor(t),
in the same atomic call, so scores stay far from the float range (e^50 ~ 5e21). Rescaling touches
every item once per 72 half-lives. Late events (t < E) just weigh less, as they should; replays are
no-ops like every other write (the event_id marker).

:meth:`FeatureWriter.settle` closes windows that ended: every served item without a reward gets
``beta += 1`` (zero reward), on the segment arm too when the impression had a segment. Arms,
global and per segment, start from the Beta(1, 1) prior (both fields set to 1 first).

Partition offsets: with the events' sources (``topic:partition``, offset), every tag group keeps
the newest applied offset of each partition in ``{tag}:offsets`` (written in the same call as the
group's writes) and skips events at or below it; step 1 stores each event's effects with its offset
(``{u:USER}:effects``) and returns them again on a replay, so a batch cut between slots is completed
exactly once: exactly-once that does not depend on the markers' TTL (those stay, for producers
that send the same event twice).

Every key of a call is passed in KEYS (no script builds a key). The scripts are loaded once
(SCRIPT LOAD) and called with EVALSHA; redis-py's Script reloads them on NOSCRIPT (e.g. after a
Redis restart).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.crc import key_slot

from recstack import lua
from recstack.events.schema import REWARD_TYPES, UserEvent
from recstack.features.catalog import ItemCatalog
from recstack.features.keys import (
    CONSUMED_ITEMS_CAP,
    GENRE_EMA_ALPHA,
    RECENT_ITEMS_CAP,
    SEGMENT_CONTEXT_KEY,
    Keys,
    is_valid_segment,
    pending_member,
)
from recstack.redis_cluster import ensure_initialized, gather_calls, is_cluster

log = logging.getLogger(__name__)

# Idempotency markers cost ~100 bytes each: one hour at 1k events/s is ~360 MB of Redis. The window
# covers replays after a crash or rebalance (uncommitted offsets) and producer retries.
DEFAULT_DEDUP_TTL_S = 3600
DEFAULT_REWARD_WINDOW_S = 1800.0
DEFAULT_SEGMENT_ARM_TTL_S = 30 * 86400
DEFAULT_POPULARITY_HALF_LIFE_S = 86400.0
POPULARITY_RESCALE_AT = 50.0

# The scripts (next to this module): step 1 per user slot, step 2 per slot of the other tags.
_USER_LUA = lua.load(__package__, "writer_common.lua", "writer_user.lua")
_GROUPS_LUA = lua.load(__package__, "writer_common.lua", "writer_groups.lua")
SETTLED_MARKER_TTL_S = 86400


def popularity_tau(half_life_s: float) -> float:
    """Time constant tau = H / ln 2 of the popularity decay exp(-dt / tau); 0.0 (no decay) for H = 0."""
    return half_life_s / math.log(2) if half_life_s > 0 else 0.0


def ab_exposures(event: UserEvent) -> tuple[list[str], list[str]]:
    """(experiment ids, variants) an impression exposes its user to: ``experiment_id`` /
    ``variant`` plus context entries ``ab.<experiment_id> = variant``; none for QA impressions
    (context ``qa = "1"``) and for other event types."""
    if event.event_type != "impression" or event.context.get("qa") == "1":
        return [], []
    pairs: dict[str, str] = {}
    if event.experiment_id and event.variant:
        pairs[event.experiment_id] = event.variant
    for key, value in event.context.items():
        if key.startswith("ab.") and len(key) > 3 and value:
            pairs.setdefault(key[3:], value)
    return list(pairs), list(pairs.values())


def impression_segment(event: UserEvent) -> str:
    """The bandit segment an impression was served under (context ``bandit_segment``); "" for
    other events, without one, or when the value is not a valid segment id (it becomes part of
    Redis keys, so it is never passed on unchecked)."""
    if event.event_type != "impression":
        return ""
    segment = event.context.get(SEGMENT_CONTEXT_KEY, "")
    if segment and not is_valid_segment(segment):
        log.warning("impression %s: ignoring invalid bandit segment %r", event.event_id, segment[:80])
        return ""
    return segment


@dataclass(frozen=True)
class EventWeights:
    """Interaction weights for genre EMA and popularity. rating events weigh rating / rating_scale."""

    view: float = 0.5
    click: float = 1.0
    like: float = 1.5
    purchase: float = 2.0
    rating_scale: float = 5.0

    def weight(self, event: UserEvent) -> float:
        """Weight of one event; 0.0 for impressions and session events."""
        if event.event_type == "rating":
            return (event.rating or 0.0) / self.rating_scale
        return float(getattr(self, event.event_type, 0.0)) if event.is_interaction else 0.0


@dataclass(frozen=True)
class ApplyResult:
    """applied: events written; duplicates: event_ids already applied; rewards: (request, item)
    rewards (alpha increments of the global arms; segment arms get the same ones);
    failed: (index in the batch, Redis error) of events whose writes raised (e.g. WRONGTYPE on a key
    another tool wrote). A failed event keeps its idempotency marker and whatever it wrote before
    the error (Redis does not roll back scripts); the other events of the batch are applied. An
    error that says Redis cannot write now (OOM, READONLY, LOADING, BUSY, ...) fails the whole call
    instead (redis-py raises e.g. OutOfMemoryError) and the caller retries it."""

    applied: int
    duplicates: int
    rewards: int
    failed: tuple[tuple[int, str], ...] = ()


@dataclass(frozen=True)
class SettleResult:
    """requests: impression windows closed; zero_rewards: (request, item) zero rewards (beta
    increments of the global arms; segment arms get the same ones)."""

    requests: int
    zero_rewards: int


class BanditRewards(Protocol):
    """What else learns from each batch: the contextual bandit's reward writer
    (``recstack.exploration.rewards.LinearRewardWriter``), given by whoever builds the writer."""

    async def apply(self, events: Sequence[UserEvent]) -> object: ...

    async def settle(self, now: float | None = None, limit: int = 1000) -> object: ...


class FeatureWriter:
    """Applies batches of validated events to Redis (see the module docstring for every key).

    catalog: item genres (an ItemCatalog or a plain {item_id: [genres]} mapping); unknown items
    have none. Replace ``writer.catalog`` to hot-swap it. bandit_rewards: applied after every
    batch and settle (the stream passes the contextual bandit's ``LinearRewardWriter``, see
    ``services.feature_stream.settings.writer_from_settings``; None: none).
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys | None = None,
        catalog: ItemCatalog | Mapping[str, Sequence[str]] | None = None,
        weights: EventWeights | None = None,
        *,
        alpha: float = GENRE_EMA_ALPHA,
        recent_cap: int = RECENT_ITEMS_CAP,
        consumed_cap: int = CONSUMED_ITEMS_CAP,
        dedup_ttl_s: int = DEFAULT_DEDUP_TTL_S,
        reward_window_s: float = DEFAULT_REWARD_WINDOW_S,
        popularity_half_life_s: float = DEFAULT_POPULARITY_HALF_LIFE_S,
        popularity_rescale_at: float = POPULARITY_RESCALE_AT,
        segment_arm_ttl_s: int = DEFAULT_SEGMENT_ARM_TTL_S,
        bandit_rewards: BanditRewards | None = None,
    ) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be within (0, 1], got {alpha}")
        if recent_cap < 1 or consumed_cap < 1 or dedup_ttl_s < 1 or reward_window_s < 0:
            raise ValueError("recent_cap, consumed_cap and dedup_ttl_s must be >= 1 and reward_window_s >= 0")
        if segment_arm_ttl_s < 0:
            raise ValueError(f"segment_arm_ttl_s must be >= 0 (0: never expire), got {segment_arm_ttl_s}")
        if popularity_half_life_s < 0 or popularity_rescale_at <= 0:
            raise ValueError(
                "popularity_half_life_s must be >= 0 (0: no decay) and popularity_rescale_at > 0"
            )
        self.redis = redis
        self.keys = keys or Keys()
        if catalog is None:
            catalog = ItemCatalog()
        self.catalog = catalog if isinstance(catalog, ItemCatalog) else ItemCatalog.from_genres(catalog)
        self.weights = weights or EventWeights()
        self.alpha = alpha
        self.recent_cap = recent_cap
        self.consumed_cap = consumed_cap
        self.dedup_ttl_s = dedup_ttl_s
        self.reward_window_s = reward_window_s
        self.popularity_half_life_s = popularity_half_life_s
        self.popularity_rescale_at = popularity_rescale_at
        self.segment_arm_ttl_s = int(segment_arm_ttl_s)
        self._user_script = redis.register_script(_USER_LUA)
        self._groups_script = redis.register_script(_GROUPS_LUA)
        self.cluster = is_cluster(redis)
        # --- contextual bandit rewards (owned by recstack/exploration, a separate Lua script):
        # impressions/clicks with a request_id update the LinUCB statistics in Redis.
        self.bandit_rewards = bandit_rewards

    def _slot(self, tag: str) -> int:
        """The call a tag's keys go to: its cluster slot, or 0 on a single Redis (one call then
        carries every tag: the same scripts, one round trip per step)."""
        return key_slot(tag.encode()) if self.cluster else 0

    async def apply(
        self, events: Sequence[UserEvent], sources: Sequence[tuple[str, int]] | None = None
    ) -> ApplyResult:
        """Apply validated events in order: step 1, one EVALSHA per slot of the events' users;
        step 2, one per slot of the tags their effects touch (one of each on a single Redis).
        Raises redis.RedisError when Redis is unreachable (a retry is then a no-op for what was
        written); per-event errors are in ``failed``.

        ``sources``: each event's (``topic:partition``, offset). Every tag group keeps the newest
        offset of each partition it applied, written in the same call as its writes, and skips
        events at or below it, so a replay of any age is a no-op (module docstring)."""
        if not events:
            return ApplyResult(0, 0, 0)
        if sources is not None and len(sources) != len(events):
            raise ValueError(f"{len(sources)} sources for {len(events)} events")
        keys = self.keys
        srcs = [(sources[k][0], int(sources[k][1])) if sources else ("", -1) for k in range(len(events))]
        # step 1: the users' groups, bucketed by slot
        calls: dict[int, _Call] = {}
        groups: dict[str, dict[str, Any]] = {}
        encoded_events: list[list[Any]] = []
        for index, event in enumerate(events):
            user = event.user_id
            call = calls.setdefault(self._slot(keys.user_tag(user)), _Call())
            group = groups.get(user)
            if group is None:
                group = groups[user] = {
                    "k": [
                        call.key(keys.user_stats(user)),
                        call.key(keys.recent_items(user)),
                        call.key(keys.consumed(user)),
                        call.key(keys.genre_scores(user)),
                        call.key(keys.user_experiments(user)),
                        call.key(keys.user_offsets(user)),
                        call.key(keys.user_effects(user)),
                    ],
                    "e": [],
                }
                call.groups.append(group)
            req = event.request_id
            encoded = self._encode(event)
            encoded_events.append(encoded)
            group["e"].append(
                [
                    index,
                    *encoded,
                    *srcs[index],
                    call.key(keys.event_seen(user, event.event_id)),
                    # the impression's keys only where the event names a request (0: none)
                    call.key(keys.impression(user, req)) if req else 0,
                    call.key(keys.impression_segment(user, req)) if req else 0,
                    call.key(keys.impression_experiment(user, req)) if req else 0,
                ]
            )
        args = [
            self.alpha,
            self.dedup_ttl_s,
            self.recent_cap,
            self.reward_window_s,
            self.consumed_cap,
            self.dedup_ttl_s,
        ]
        replies = await gather_calls(
            self.redis, [self._user_script(keys=c.keys, args=[*args, c.payload()]) for c in calls.values()]
        )
        applied = dup = rewards = 0
        failed: dict[int, str] = {}
        effects: list[tuple[int, list]] = []
        for reply in replies:
            a, d, r, fails, fx = json.loads(reply)
            applied, dup, rewards = applied + a, dup + d, rewards + r
            failed.update((int(i), str(msg)) for i, msg in _rows(fails))
            effects.extend((int(i), _rows(f)) for i, f in _rows(fx))
        # step 2: the effects on the other tags, bucketed by slot
        if effects:
            effects.sort(key=lambda row: row[0])
            effects = [(i, [*_event_effects(encoded_events[i]), *fx]) for i, fx in effects]
            step2, _ = await self._run_groups(self._effect_groups(events, srcs, effects))
            for index, error in step2:
                failed.setdefault(index, error)
        errors = tuple(sorted(failed.items()))
        for index, error in errors:
            log.error("event %s not applied: %s", events[index].event_id, error)
        if self.bandit_rewards is not None:
            await self.bandit_rewards.apply(events)  # contextual bandit (LinUCB) rewards
        return ApplyResult(applied, dup, rewards, errors)

    def _effect_groups(
        self, events: Sequence[UserEvent], srcs: Sequence[tuple[str, int]], effects: list[tuple[int, list]]
    ) -> _Groups:
        """The ops step 1's effects make on each tag, per event in batch order, bucketed by slot
        into calls (each tag's key names and KEYS indexes resolved once per batch)."""
        keys = self.keys
        groups = _Groups(self._slot)
        items: dict[str, tuple[_Group, int, int]] = {}  # item -> (group, stats index, arm index)
        exps: dict[str, _Group] = {}
        pop: tuple[_Group, int, int] | None = None
        pending: tuple[_Group, int] | None = None
        for index, fx in effects:
            event, src = events[index], srcs[index]
            for effect in fx:
                kind = effect[0]
                if kind in ("s", "a"):
                    item = str(effect[1])
                    entry = items.get(item)
                    if entry is None:
                        g = groups.get(keys.item_tag(item), keys.item_offsets(item))
                        entry = items[item] = (g, g.key(keys.item_stats(item)), g.key(keys.bandit_arm(item)))
                    g, stats_key, arm_key = entry
                    if kind == "s":
                        g.op(index, src, ["h", stats_key, effect[2]])
                    else:
                        g.op(index, src, ["a", arm_key, effect[2], 0])
                        if effect[3]:
                            seg_key = g.key(keys.bandit_segment_arm(str(effect[3]), item))
                            g.op(index, src, ["a", seg_key, effect[2], self.segment_arm_ttl_s])
                elif kind == "o":
                    if pop is None:
                        g = groups.get(keys.popularity(), keys.popularity_offsets())
                        pop = (g, g.key(keys.popularity()), g.key(keys.popularity_epoch()))
                    w = self.weights.weight(event)
                    pop[0].op(index, src, ["p", pop[1], pop[2], str(effect[1]), w, event.timestamp])
                elif kind == "p":
                    if pending is None:
                        g = groups.get(keys.impressions_pending(), keys.impressions_pending_offsets())
                        pending = (g, g.key(keys.impressions_pending()))
                    member = pending_member(event.user_id, str(effect[1]))
                    score = event.timestamp + self.reward_window_s
                    pending[0].op(index, src, ["n", pending[1], score, member])
                elif kind in ("v", "x"):
                    exp = str(effect[1])
                    g = exps.get(exp)
                    if g is None:
                        g = exps[exp] = groups.get(keys.experiment_tag(exp), keys.experiment_offsets(exp))
                    if kind == "v":
                        g.op(index, src, ["s", g.key(keys.experiment_variants(exp)), effect[2]])
                    else:
                        stats = g.key(keys.experiment_stats(exp, str(effect[2])))
                        g.op(index, src, ["h", stats, effect[3]])
        return groups

    async def _run_groups(self, groups: _Groups) -> tuple[list[tuple[int, str]], int]:
        """One writer_groups.lua call per slot; returns the failed (event index, error) and the
        zero rewards settle applied."""
        calls = groups.calls
        args = [popularity_tau(self.popularity_half_life_s), self.popularity_rescale_at]
        replies = await gather_calls(
            self.redis, [self._groups_script(keys=c.keys, args=[c.payload(), *args]) for c in calls.values()]
        )
        failed: list[tuple[int, str]] = []
        total = 0
        for reply in replies:
            fails, zeros = json.loads(reply)
            failed.extend((int(i), str(msg)) for i, msg in _rows(fails))
            total += int(zeros)
        return failed, total

    async def settle(self, now: float | None = None, limit: int = 1000) -> SettleResult:
        """Close impression windows that ended before ``now``: zero reward (beta += 1) for every
        served item that was not clicked/liked/purchased. Returns the counts.

        Steps (each retried whole by the next settle when one fails): read the due windows; read
        their impressions (user tags); beta += 1 per (request, item) once (a marker under the item's
        tag, in the same call); delete the impressions; remove the windows."""
        now = time.time() if now is None else now
        keys = self.keys
        pending = keys.impressions_pending()
        await ensure_initialized(self.redis)
        members = await self.redis.zrangebyscore(pending, "-inf", repr(float(now)), start=0, num=limit)
        if not members:
            if self.bandit_rewards is not None:
                await self.bandit_rewards.settle(now, limit)
            return SettleResult(0, 0)
        windows = [json.loads(_str(m)) for m in members]
        pipe = self.redis.pipeline(transaction=False)
        for user, req in windows:
            pipe.hgetall(keys.impression(user, req))
            pipe.get(keys.impression_segment(user, req))
        rows = await pipe.execute()
        groups = _Groups(self._slot)
        for n, (_user, req) in enumerate(windows):
            served, seg = rows[2 * n], rows[2 * n + 1]
            seg = _str(seg) if seg is not None else ""
            for item, state in served.items():
                if _str(state) != "0":
                    continue
                item = _str(item)
                g = groups.get(keys.item_tag(item), "")
                op = [
                    "z",
                    g.key(keys.item_settled(item, req)),
                    SETTLED_MARKER_TTL_S,
                    g.key(keys.bandit_arm(item)),
                    g.key(keys.bandit_segment_arm(seg, item)) if seg else 0,
                    self.segment_arm_ttl_s,
                ]
                g.op(n, ("", -1), op)
        zeros = 0
        if groups.calls:
            failed, zeros = await self._run_groups(groups)
            for n, error in failed:
                log.error("zero rewards of request %s not applied: %s", windows[n][1], error)
        pipe = self.redis.pipeline(transaction=False)
        for user, req in windows:
            for key in (
                keys.impression(user, req),
                keys.impression_experiment(user, req),
                keys.impression_segment(user, req),
            ):
                pipe.delete(key)
        await pipe.execute()
        await self.redis.zrem(pending, *members)
        if self.bandit_rewards is not None:
            await self.bandit_rewards.settle(now, limit)  # contextual bandit zero rewards
        return SettleResult(len(windows), zeros)

    def _encode(self, event: UserEvent) -> list[Any]:
        return [
            event.event_id,
            event.item_id,
            event.event_type,
            event.timestamp,
            self.weights.weight(event),
            list(self.catalog.genres_of(event.item_id)) if event.is_interaction else [],
            event.request_id,
            1 if event.event_type in REWARD_TYPES else 0,
            list(event.items),
            *ab_exposures(event),
            1 if event.is_interaction else 0,
            impression_segment(event),
        ]


def _event_effects(encoded: list[Any]) -> list[list[Any]]:
    """The effects every applied event has on other tags, known from the event alone (those that
    depend on the user's state come back from writer_user.lua): item counters, popularity, the
    pending reward window, the experiments' variants and impressions. ``encoded``: ``_encode``."""
    item, etype, req, slate, exps, variants, interaction = (
        encoded[1],
        encoded[2],
        encoded[6],
        encoded[8],
        encoded[9],
        encoded[10],
        encoded[11],
    )
    out: list[list[Any]] = []
    if etype == "impression":
        out.extend(["s", it, "impression"] for it in slate)
        if req:
            out.append(["p", req])
        for exp, variant in zip(exps, variants, strict=True):
            out.append(["v", exp, variant])
            out.append(["x", exp, variant, "impressions"])
    elif interaction:
        out.append(["s", item, etype])
        out.append(["o", item])
    return out


def _str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _rows(value: Any) -> list:
    """A JSON array decoded from Lua (cjson encodes an empty table as {})."""
    return value if isinstance(value, list) else []


class _Call:
    """The KEYS and groups of one script call (one slot)."""

    def __init__(self) -> None:
        self.keys: list[str] = []
        self._index: dict[str, int] = {}
        self.groups: list[Any] = []

    def key(self, name: str) -> int:
        """1-based index of ``name`` in KEYS (added once)."""
        index = self._index.get(name)
        if index is None:
            self.keys.append(name)
            index = self._index[name] = len(self.keys)
        return index

    def payload(self) -> str:
        return json.dumps(self.groups, separators=(",", ":"))


class _Group:
    """The ops of one tag in step 2 (keys already KEYS indexes of its call): per event, [batch
    index, source, offset, op, ...]."""

    def __init__(self, call: _Call, offsets: str) -> None:
        self.call = call
        self.events: list[list[Any]] = []
        self.payload = {"o": call.key(offsets) if offsets else 0, "e": self.events}
        call.groups.append(self.payload)

    def key(self, name: str) -> int:
        return self.call.key(name)

    def op(self, index: int, src: tuple[str, int], op: list[Any]) -> None:
        events = self.events
        if not events or events[-1][0] != index:
            events.append([index, src[0], src[1], op])
        else:
            events[-1].append(op)


class _Groups:
    """Tag groups of step 2 bucketed into one call per slot (``slot``: FeatureWriter._slot)."""

    def __init__(self, slot: Any) -> None:
        self._slot = slot
        self.calls: dict[int, _Call] = {}
        self._groups: dict[str, _Group] = {}

    def get(self, tag: str, offsets: str) -> _Group:
        g = self._groups.get(tag)
        if g is None:
            call = self.calls.get(slot := self._slot(tag))
            if call is None:
                call = self.calls[slot] = _Call()
            g = self._groups[tag] = _Group(call, offsets)
        return g
