"""The Redis key schema, in one place. Every reader and writer builds keys here.

Every key carries a Redis Cluster hash tag (the part in braces, prefix included) so that each Lua
call and each multi-key command touches one slot (docs/DESIGN.md, "Redis Cluster"):

| tag                     | keys under it                                                      |
|-------------------------|--------------------------------------------------------------------|
| {P u:USER}              | the user's features, experiment record, impressions, event markers, |
|                         | applied offsets and stored effects of the stream                    |
| {P i:ITEM}              | the item's counters, Thompson arms (global and per segment),        |
|                         | applied offsets, settle markers                                     |
| {P items:popularity}    | the popularity zset, its epoch, applied offsets                     |
| {P imp:pending}         | open impression windows ([user, request] JSON), applied offsets     |
| {P exp:EXP}             | the experiment's variants and per-variant stats, applied offsets    |
| {P bandit}              | every linear-bandit (LinUCB/LinTS/hybrid) key: the hybrid model's   |
|                         | shared statistics couple all its arms, so they share one slot       |

(P = the prefix.) On a single Redis the tags are plain characters of the names. A user or item id
containing '}' ends its tag early; every key of that id still shares the (shorter) tag, so it
still lands in one slot.
"""

from __future__ import annotations

import json
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
    """Key builder behind an optional prefix (e.g. "prod:"); every key hash-tagged (module doc)."""

    prefix: str = ""

    # --- hash tags -----------------------------------------------------------------------------
    def user_tag(self, user_id: str) -> str:
        return f"{{{self.prefix}u:{user_id}}}"

    def item_tag(self, item_id: str) -> str:
        return f"{{{self.prefix}i:{item_id}}}"

    def experiment_tag(self, experiment_id: str) -> str:
        return f"{{{self.prefix}exp:{experiment_id}}}"

    def bandit_tag(self) -> str:
        return f"{{{self.prefix}bandit}}"

    # --- per user ------------------------------------------------------------------------------
    def recent_items(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:recent_items"

    def consumed(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:consumed"

    def genre_scores(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:genre_scores"

    def user_stats(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:stats"

    def event_seen(self, user_id: str, event_id: str) -> str:
        """Idempotency marker of an applied event, under its user's tag."""
        return f"{self.user_tag(user_id)}:event:{event_id}"

    def impression(self, user_id: str, request_id: str) -> str:
        """Served item -> 0/1 of a request, under the tag of the user it was served to (its
        rewards come from the same user, so one call updates both)."""
        return f"{self.user_tag(user_id)}:imp:{request_id}"

    def impression_experiment(self, user_id: str, request_id: str) -> str:
        return f"{self.impression(user_id, request_id)}:exp"

    def impression_segment(self, user_id: str, request_id: str) -> str:
        return f"{self.impression(user_id, request_id)}:seg"

    def user_experiments(self, user_id: str) -> str:
        """The user's A/B records of every experiment: fields ``{exp}\n{field}`` (field: variant,
        first_exposure, impressions, click, ...; see ``experiment_field``)."""
        return f"{self.user_tag(user_id)}:experiments"

    def user_offsets(self, user_id: str) -> str:
        return f"{self.user_tag(user_id)}:offsets"

    def user_effects(self, user_id: str) -> str:
        """``topic:partition\tfirst\tlast`` -> JSON [[offset, effects], ...] of the events one
        call of the writer applied (effects on other tags that depend on the user's state), kept
        until the partition moves past them (TTL the dedup TTL): a replay re-sends them to the
        tags that missed them."""
        return f"{self.user_tag(user_id)}:effects"

    # --- per item ------------------------------------------------------------------------------
    def item_stats(self, item_id: str) -> str:
        return f"{self.item_tag(item_id)}:stats"

    def bandit_arm(self, item_id: str) -> str:
        return f"{self.item_tag(item_id)}:ts"

    def bandit_segment_arm(self, segment: str, item_id: str) -> str:
        """The Thompson arm of an item in one segment (a valid segment id, see
        recstack/exploration/segments.py), under the item's tag."""
        return f"{self.item_tag(item_id)}:tsseg:{segment}"

    def item_offsets(self, item_id: str) -> str:
        return f"{self.item_tag(item_id)}:offsets"

    def item_settled(self, item_id: str, request_id: str) -> str:
        """Marker: the zero reward of (request, item) was applied by settle (TTL one day)."""
        return f"{self.item_tag(item_id)}:settled:{request_id}"

    # --- global --------------------------------------------------------------------------------
    def popularity(self) -> str:
        return f"{{{self.prefix}items:popularity}}"

    def popularity_epoch(self) -> str:
        return f"{self.popularity()}:epoch"

    def popularity_offsets(self) -> str:
        return f"{self.popularity()}:offsets"

    def impressions_pending(self) -> str:
        """``{user_id}\n{request_id}`` -> unix s when the impression's reward window closes."""
        return f"{{{self.prefix}imp:pending}}"

    def impressions_pending_offsets(self) -> str:
        return f"{self.impressions_pending()}:offsets"

    def experiment_variants(self, experiment_id: str) -> str:
        return f"{self.experiment_tag(experiment_id)}:variants"

    def experiment_stats(self, experiment_id: str, variant: str) -> str:
        return f"{self.experiment_tag(experiment_id)}:{variant}:stats"

    def experiment_offsets(self, experiment_id: str) -> str:
        return f"{self.experiment_tag(experiment_id)}:offsets"

    # --- linear bandit (one tag) ---------------------------------------------------------------
    def linear_arm(self, item_id: str, kind: str = "linucb") -> str:
        """The statistics of an item's arm of a linear policy family (``linucb``, shared by LinTS,
        or ``linucb-hybrid``)."""
        return f"{self.bandit_tag()}:{kind}:{item_id}"

    def linear_shared(self, kind: str = "linucb-hybrid") -> str:
        """The hybrid LinUCB model's shared statistics (A0, b0)."""
        return f"{self.bandit_tag()}:{kind}-shared"

    def bandit_contexts(self, request_id: str) -> str:
        """The contexts the bandit recorded for the explored items of one request."""
        return f"{self.bandit_tag()}:ctx:{request_id}"

    def bandit_contexts_pending(self) -> str:
        """request_id -> unix s when the reward window of its recorded contexts closes."""
        return f"{self.bandit_tag()}:ctx:pending"


def experiment_field(experiment_id: str, field: str) -> str:
    """A field of ``Keys.user_experiments``: the user's ``field`` in experiment ``experiment_id``."""
    return f"{experiment_id}\n{field}"


def pending_member(user_id: str, request_id: str) -> str:
    """A member of ``Keys.impressions_pending``: the JSON array ``[user_id, request_id]`` (settle
    needs the user to find the impression under its tag)."""
    return json.dumps([user_id, request_id], separators=(",", ":"))
