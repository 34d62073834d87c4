"""Write side of the Redis features: applies a batch of validated events in ONE Lua script call.

Per event (each ``event_id`` at most once: ``SET {prefix}event:{event_id} NX EX dedup_ttl`` inside
the same script, so a batch replayed after a crash is a no-op):

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
  - rewards (click, like, purchase with a request_id): ``bandit:ts:{item}`` alpha += 1, at most
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

Partition offsets: with the events' sources (``topic:partition``, offset), the script keeps the
newest applied offset of each partition in ``stream:offsets`` (written in the same atomic call as
the batch) and skips events at or below it: exactly-once that does not depend on the markers' TTL
(those stay, for producers that send the same event twice).

Keys are built inside the script from the prefix (single Redis or a hash-tagged prefix; not
cluster-sharded). The script is loaded once (SCRIPT LOAD) and called with EVALSHA; redis-py's
Script reloads it on NOSCRIPT (e.g. after a Redis restart).
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from recstack.events.schema import REWARD_TYPES, UserEvent
from recstack.exploration.rewards import LinearRewardWriter
from recstack.exploration.segments import SEGMENT_CONTEXT_KEY, is_valid_segment
from recstack.features.catalog import ItemCatalog
from recstack.features.keys import CONSUMED_ITEMS_CAP, GENRE_EMA_ALPHA, RECENT_ITEMS_CAP, Keys

log = logging.getLogger(__name__)

# Idempotency markers cost ~100 bytes each: one hour at 1k events/s is ~360 MB of Redis. The window
# covers replays after a crash or rebalance (uncommitted offsets) and producer retries.
DEFAULT_DEDUP_TTL_S = 3600
DEFAULT_REWARD_WINDOW_S = 1800.0
DEFAULT_SEGMENT_ARM_TTL_S = 30 * 86400
DEFAULT_POPULARITY_HALF_LIFE_S = 86400.0
POPULARITY_RESCALE_AT = 50.0

_APPLY_LUA = r"""
local prefix = ARGV[1]
local alpha = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])
local cap = tonumber(ARGV[4])
local window = tonumber(ARGV[5])
local batch = cjson.decode(ARGV[6])
local tau = tonumber(ARGV[7])
local rescale_at = tonumber(ARGV[8])
local seg_ttl = tonumber(ARGV[9])
local consumed_cap = tonumber(ARGV[10])
local applied, dup, rewards = 0, 0, 0
local function fmt(x) return string.format('%.12g', x) end
local function fmt17(x) return string.format('%.17g', x) end
local pkey = prefix .. 'items:popularity'
local epoch = nil
local function popularity(item, w, ts)
  if tau <= 0 then
    redis.call('ZINCRBY', pkey, fmt17(w), item)
    return
  end
  if epoch == nil then
    epoch = tonumber(redis.call('GET', pkey .. ':epoch'))
    if epoch == nil then
      epoch = math.floor(ts)
      redis.call('SET', pkey .. ':epoch', fmt17(epoch))
    end
  end
  local x = (ts - epoch) / tau
  if x > rescale_at then
    local new_epoch = math.floor(ts)
    local f = math.exp((epoch - new_epoch) / tau)
    local flat = redis.call('ZRANGE', pkey, 0, -1, 'WITHSCORES')
    for i = 1, #flat, 2 do redis.call('ZADD', pkey, fmt17(tonumber(flat[i + 1]) * f), flat[i]) end
    epoch = new_epoch
    redis.call('SET', pkey .. ':epoch', fmt17(epoch))
    x = (ts - epoch) / tau
  end
  redis.call('ZINCRBY', pkey, fmt17(w * math.exp(x)), item)
end
local function arm_prior(key)
  redis.call('HSETNX', key, 'alpha', 1)
  redis.call('HSETNX', key, 'beta', 1)
end
local function bump_arms(ikey, item, field)
  local akey = prefix .. 'bandit:ts:' .. item
  arm_prior(akey)
  redis.call('HINCRBYFLOAT', akey, field, 1)
  local seg = redis.call('GET', ikey .. ':seg')
  if seg then
    local skey = prefix .. 'bandit:tsseg:' .. seg .. '|' .. item
    arm_prior(skey)
    redis.call('HINCRBYFLOAT', skey, field, 1)
    if seg_ttl > 0 then redis.call('EXPIRE', skey, seg_ttl) end
  end
end
local function apply_one(ev)
  local id, user, item, etype, ts = ev[1], ev[2], ev[3], ev[4], ev[5]
  local w, genres, req, reward, slate = ev[6], ev[7], ev[8], ev[9], ev[10]
  local exps, variants, interaction, seg = ev[11], ev[12], ev[13] == 1, ev[14]
  if redis.call('SET', prefix .. 'event:' .. id, '1', 'NX', 'EX', ttl) then
    local ukey = prefix .. 'user:' .. user .. ':stats'
    redis.call('HINCRBY', ukey, etype, 1)
    if interaction then redis.call('HINCRBY', ukey, 'total', 1) end
    local last = tonumber(redis.call('HGET', ukey, 'last_active') or '0')
    if ts > last then redis.call('HSET', ukey, 'last_active', fmt(ts)) end
    if etype == 'impression' then
      local ikey = prefix .. 'imp:' .. req
      for _, it in ipairs(slate) do
        redis.call('HINCRBY', prefix .. 'item:' .. it .. ':stats', 'impression', 1)
        if req ~= '' then redis.call('HSETNX', ikey, it, 0) end
      end
      if req ~= '' then
        local keep = math.floor(window) + 86400
        redis.call('EXPIRE', ikey, keep)
        redis.call('ZADD', prefix .. 'imp:pending', 'NX', fmt(ts + window), req)
        if seg ~= '' and not redis.call('SET', ikey .. ':seg', seg, 'NX', 'EX', keep) then
          redis.call('EXPIRE', ikey .. ':seg', keep)
        end
      end
      local meta = {}
      for n, exp in ipairs(exps) do
        local variant = variants[n]
        local ebase = prefix .. 'exp:' .. exp
        redis.call('SADD', ebase .. ':variants', variant)
        local skey = ebase .. ':' .. variant .. ':stats'
        redis.call('HINCRBY', skey, 'impressions', 1)
        local xkey = ebase .. ':user:' .. user
        if redis.call('HSETNX', xkey, 'variant', variant) == 1 then
          redis.call('HSET', xkey, 'first_exposure', fmt(ts))
          redis.call('HINCRBY', skey, 'users', 1)
        end
        redis.call('HINCRBY', xkey, 'impressions', 1)
        meta[#meta + 1] = exp .. '\n' .. variant
      end
      if req ~= '' and #meta > 0 then
        redis.call('SET', ikey .. ':exp', table.concat(meta, '\n'), 'EX', math.floor(window) + 86400)
      end
    elseif interaction then
      local rkey = prefix .. 'user:' .. user .. ':recent_items'
      redis.call('LREM', rkey, 0, item)
      redis.call('LPUSH', rkey, item)
      redis.call('LTRIM', rkey, 0, cap - 1)
      local ckey = prefix .. 'user:' .. user .. ':consumed'
      redis.call('ZADD', ckey, fmt17(ts), item)
      if redis.call('ZCARD', ckey) > consumed_cap then
        redis.call('ZREMRANGEBYRANK', ckey, 0, -(consumed_cap + 1))
      end
      local gkey = prefix .. 'user:' .. user .. ':genre_scores'
      local flat = redis.call('HGETALL', gkey)
      local scores = {}
      for i = 1, #flat, 2 do scores[flat[i]] = tonumber(flat[i + 1]) * (1 - alpha) end
      for _, g in ipairs(genres) do scores[g] = (scores[g] or 0) + alpha * w end
      local args = {}
      for g, s in pairs(scores) do
        args[#args + 1] = g
        args[#args + 1] = fmt(s)
      end
      if #args > 0 then redis.call('HSET', gkey, unpack(args)) end
      redis.call('HINCRBY', prefix .. 'item:' .. item .. ':stats', etype, 1)
      popularity(item, w, ts)
      if reward == 1 and req ~= '' then
        local ikey = prefix .. 'imp:' .. req
        local state = redis.call('HGET', ikey, item)
        if state ~= '1' then
          if state == '0' then redis.call('HSET', ikey, item, 1) end
          bump_arms(ikey, item, 'alpha')
          rewards = rewards + 1
        end
        local meta = redis.call('GET', ikey .. ':exp')
        if meta then
          local parts = {}
          for line in string.gmatch(meta, '[^\n]+') do parts[#parts + 1] = line end
          for n = 1, #parts - 1, 2 do
            local ebase = prefix .. 'exp:' .. parts[n]
            local skey = ebase .. ':' .. parts[n + 1] .. ':stats'
            redis.call('HINCRBY', skey, etype, 1)
            if redis.call('HINCRBY', ebase .. ':user:' .. user, etype, 1) == 1 then
              redis.call('HINCRBY', skey, 'users_' .. etype, 1)
            end
          end
        end
      end
    end
    return 'ok'
  end
  return 'dup'
end
local transient = {'OOM', 'READONLY', 'LOADING', 'BUSY', 'MASTERDOWN', 'TRYAGAIN', 'CLUSTERDOWN',
  'NOREPLICAS'}
local function transient_code(msg)
  for _, code in ipairs(transient) do
    if string.sub(msg, 1, #code + 1) == code .. ' ' or string.find(msg, '-' .. code .. ' ', 1, true) then
      return code
    end
  end
end
local failed = {}
local okey = prefix .. 'stream:offsets'
local stored, newest = {}, {}
local function seen_offset(src, off)
  if src == '' then return false end
  if stored[src] == nil then stored[src] = tonumber(redis.call('HGET', okey, src) or '-1') end
  return off <= stored[src]
end
for i, ev in ipairs(batch) do
  local src, off = ev[15], ev[16]
  local ok, res
  if seen_offset(src, off) then
    -- applied by an earlier call: a replay of any age is a no-op (whatever the event-id markers)
    ok, res = true, 'dup'
  else
    ok, res = pcall(apply_one, ev)
    if src ~= '' and (newest[src] == nil or off > newest[src]) then newest[src] = off end
  end
  if not ok then
    local msg = type(res) == 'table' and tostring(res.err) or tostring(res)
    local code = transient_code(msg)
    if code then
      -- Redis cannot write now (e.g. maxmemory): fail the whole call so the batch is retried; the
      -- events before this one are applied and their markers make the retry skip them
      return redis.error_reply(code .. ' ' .. msg)
    end
    failed[#failed + 1] = tostring(i)
    failed[#failed + 1] = msg
  elseif res == 'ok' then
    applied = applied + 1
  else
    dup = dup + 1
  end
end
for src, off in pairs(newest) do
  if off > stored[src] then redis.call('HSET', okey, src, off) end
end
return {applied, dup, rewards, failed}
"""

_SETTLE_LUA = r"""
local prefix = ARGV[1]
local now = ARGV[2]
local limit = tonumber(ARGV[3])
local seg_ttl = tonumber(ARGV[4])
local pkey = prefix .. 'imp:pending'
local reqs = redis.call('ZRANGEBYSCORE', pkey, '-inf', now, 'LIMIT', 0, limit)
local zeros = 0
local function zero(akey)
  redis.call('HSETNX', akey, 'alpha', 1)
  redis.call('HSETNX', akey, 'beta', 1)
  redis.call('HINCRBYFLOAT', akey, 'beta', 1)
end
for _, req in ipairs(reqs) do
  local ikey = prefix .. 'imp:' .. req
  local flat = redis.call('HGETALL', ikey)
  local seg = redis.call('GET', ikey .. ':seg')
  for i = 1, #flat, 2 do
    if flat[i + 1] == '0' then
      zero(prefix .. 'bandit:ts:' .. flat[i])
      if seg then
        local skey = prefix .. 'bandit:tsseg:' .. seg .. '|' .. flat[i]
        zero(skey)
        if seg_ttl > 0 then redis.call('EXPIRE', skey, seg_ttl) end
      end
      zeros = zeros + 1
    end
  end
  redis.call('DEL', ikey, ikey .. ':exp', ikey .. ':seg')
  redis.call('ZREM', pkey, req)
end
return {#reqs, zeros}
"""


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


class FeatureWriter:
    """Applies batches of validated events to Redis (see the module docstring for every key).

    catalog: item genres (an ItemCatalog or a plain {item_id: [genres]} mapping); unknown items
    have none. Replace ``writer.catalog`` to hot-swap it.
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
        self._apply = redis.register_script(_APPLY_LUA)
        self._settle = redis.register_script(_SETTLE_LUA)
        # --- contextual bandit rewards (owned by recstack/exploration, a separate Lua script):
        # impressions/clicks with a request_id update the LinUCB statistics in Redis.
        self.linear_rewards = LinearRewardWriter(redis, self.keys.prefix, reward_window_s)

    def _encode(self, event: UserEvent, source: tuple[str, int] | None = None) -> list[Any]:
        return [
            event.event_id,
            event.user_id,
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
            source[0] if source else "",
            int(source[1]) if source else -1,
        ]

    async def apply(
        self, events: Sequence[UserEvent], sources: Sequence[tuple[str, int]] | None = None
    ) -> ApplyResult:
        """Apply validated events in order, in one EVALSHA. Raises redis.RedisError when Redis is
        unreachable (then nothing of the batch was written); per-event errors are in ``failed``.

        ``sources``: each event's (``topic:partition``, offset). The script records the newest
        applied offset of every partition in ``stream:offsets`` in the same atomic call and skips
        (as duplicates) events at or below it, so a replay of any age is a no-op."""
        if not events:
            return ApplyResult(0, 0, 0)
        if sources is not None and len(sources) != len(events):
            raise ValueError(f"{len(sources)} sources for {len(events)} events")
        encoded = [self._encode(e, sources[k] if sources else None) for k, e in enumerate(events)]
        payload = json.dumps(encoded, separators=(",", ":"))
        applied, dup, rewards, failed = await self._apply(
            keys=[],
            args=[
                self.keys.prefix,
                self.alpha,
                self.dedup_ttl_s,
                self.recent_cap,
                self.reward_window_s,
                payload,
                popularity_tau(self.popularity_half_life_s),
                self.popularity_rescale_at,
                self.segment_arm_ttl_s,
                self.consumed_cap,
            ],
        )
        errors = tuple((int(failed[i]) - 1, str(failed[i + 1])) for i in range(0, len(failed), 2))
        for index, error in errors:
            log.error("event %s not applied: %s", events[index].event_id, error)
        await self.linear_rewards.apply(events)  # contextual bandit (LinUCB) rewards
        return ApplyResult(int(applied), int(dup), int(rewards), errors)

    async def settle(self, now: float | None = None, limit: int = 1000) -> SettleResult:
        """Close impression windows that ended before ``now``: zero reward (beta += 1) for every
        served item that was not clicked/liked/purchased. Returns the counts."""
        now = time.time() if now is None else now
        args = [self.keys.prefix, repr(float(now)), limit, self.segment_arm_ttl_s]
        requests, zeros = await self._settle(keys=[], args=args)
        await self.linear_rewards.settle(now, limit)  # contextual bandit zero rewards
        return SettleResult(int(requests), int(zeros))
