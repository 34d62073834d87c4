"""The Redis key schema, in one place. Every reader and writer builds keys here.

| key                       | type | content                                              |
|---------------------------|------|------------------------------------------------------|
| user:{id}:recent_items    | list | item ids, newest first, capped at RECENT_ITEMS_CAP   |
| user:{id}:consumed        | zset | item id -> unix s of its last interaction, the       |
|                           |      | CONSUMED_ITEMS_CAP newest kept (never recommended)   |
| user:{id}:genre_scores    | hash | genre -> EMA score (alpha GENRE_EMA_ALPHA)           |
| user:{id}:stats           | hash | counter per event type, total (interactions only),   |
|                           |      | last_active (unix s)                                 |
| item:{id}:stats           | hash | counter per event type                               |
| items:popularity          | zset | item id -> time-decayed popularity, scaled to epoch  |
| items:popularity:epoch    | str  | unix s the popularity scores are scaled to           |
| bandit:ts:{item}          | hash | alpha, beta of the item's Beta posterior             |
| bandit:tsseg:{seg}|{item} | hash | alpha, beta of the item's posterior in segment seg   |
|                           |      | (both include the Beta(1, 1) prior; '|' never occurs |
|                           |      | in a segment id, so no item id or segment collides)  |
| bandit:{kind}:{item}      | hash | LinUCB statistics of an item, kind linucb (shared by |
|                           |      | LinTS) or linucb-hybrid: format, dim, n, state       |
|                           |      | (float32 blocks, recstack/exploration/state_codec.py)|
| bandit:{kind}-shared      | hash | the hybrid model's shared A0, b0 (same fields)       |
| bandit:ctx:{request_id}   | hash | ridge, kind, shared, x:{item} -> context (float32) of|
|                           |      | each explored item, until its reward is applied      |
| bandit:ctx:pending        | zset | request_id -> unix s when its reward window closes   |
| stream:offsets            | hash | "topic:partition" -> newest offset applied (written  |
|                           |      | with the batch: replays of any age are no-ops)       |
| event:{event_id}          | str  | idempotency marker of an applied event (with a TTL)  |
| imp:{request_id}          | hash | served item -> 0 (no reward yet) / 1 (rewarded)      |
| imp:pending               | zset | request_id -> unix s when its reward window closes   |
| imp:{request_id}:exp      | str  | "experiment_id\nvariant" of an impression            |
| imp:{request_id}:seg      | str  | bandit segment of an impression (expires with imp:)  |
| exp:{exp}:variants        | set  | variants seen in impressions of the experiment       |
| exp:{exp}:{variant}:stats | hash | impressions, users (exposed), click/like/purchase    |
|                           |      | (attributed via request_id), users_{type}            |
| exp:{exp}:user:{id}       | hash | variant, first_exposure, impressions, click/like/... |
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RECENT_ITEMS_CAP = 50
CONSUMED_ITEMS_CAP = 1000
GENRE_EMA_ALPHA = 0.1


SEGMENT_MAX_LEN = 64
SEGMENT_CONTEXT_KEY = "bandit_segment"
"""Impression context key under which the gateway records the request's segment (reserved:
clients cannot set it)."""
_SEGMENT_RE = re.compile(r"[A-Za-z0-9_.:\-]{1,64}")


def is_valid_segment(segment: str) -> bool:
    """True for a segment id: 1..64 characters of letters, digits, '_', '.', ':', '-' (segment ids
    are part of keys; recstack/exploration/segments.py says where they come from)."""
    return isinstance(segment, str) and _SEGMENT_RE.fullmatch(segment) is not None


@dataclass(frozen=True)
class Keys:
    """Key builder behind an optional prefix (e.g. "prod:")."""

    prefix: str = ""

    def recent_items(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}:recent_items"

    def consumed(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}:consumed"

    def genre_scores(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}:genre_scores"

    def user_stats(self, user_id: str) -> str:
        return f"{self.prefix}user:{user_id}:stats"

    def item_stats(self, item_id: str) -> str:
        return f"{self.prefix}item:{item_id}:stats"

    def popularity(self) -> str:
        return f"{self.prefix}items:popularity"

    def popularity_epoch(self) -> str:
        return f"{self.prefix}items:popularity:epoch"

    def bandit_arm(self, item_id: str) -> str:
        return f"{self.prefix}bandit:ts:{item_id}"

    def bandit_segment_arm(self, segment: str, item_id: str) -> str:
        """The Thompson arm of an item in one segment (a valid segment id, see
        recstack/exploration/segments.py: it never contains '|', so the first '|' ends it and no
        (segment, item) pair, nor any global arm ``bandit:ts:{item}``, shares the key)."""
        return f"{self.prefix}bandit:tsseg:{segment}|{item_id}"

    def linear_arm(self, item_id: str, kind: str = "linucb") -> str:
        """The statistics of an item's arm of a linear policy family (``linucb``, shared by LinTS,
        or ``linucb-hybrid``)."""
        return f"{self.prefix}bandit:{kind}:{item_id}"

    def linear_shared(self, kind: str = "linucb-hybrid") -> str:
        """The hybrid LinUCB model's shared statistics (A0, b0)."""
        return f"{self.prefix}bandit:{kind}-shared"

    def bandit_contexts(self, request_id: str) -> str:
        """The contexts the bandit recorded for the explored items of one request."""
        return f"{self.prefix}bandit:ctx:{request_id}"

    def bandit_contexts_pending(self) -> str:
        """request_id -> unix s when the reward window of its recorded contexts closes."""
        return f"{self.prefix}bandit:ctx:pending"

    def stream_offsets(self) -> str:
        """Built inside the writer's Lua script as ``prefix .. 'stream:offsets'`` (same name)."""
        return f"{self.prefix}stream:offsets"

    def event_seen(self, event_id: str) -> str:
        return f"{self.prefix}event:{event_id}"

    def impression(self, request_id: str) -> str:
        return f"{self.prefix}imp:{request_id}"

    def impressions_pending(self) -> str:
        return f"{self.prefix}imp:pending"

    def impression_experiment(self, request_id: str) -> str:
        return f"{self.prefix}imp:{request_id}:exp"

    def impression_segment(self, request_id: str) -> str:
        return f"{self.prefix}imp:{request_id}:seg"

    def experiment_variants(self, experiment_id: str) -> str:
        return f"{self.prefix}exp:{experiment_id}:variants"

    def experiment_stats(self, experiment_id: str, variant: str) -> str:
        return f"{self.prefix}exp:{experiment_id}:{variant}:stats"

    def experiment_user(self, experiment_id: str, user_id: str) -> str:
        return f"{self.prefix}exp:{experiment_id}:user:{user_id}"
