"""``recstack redis migrate-keys``: copy a deployment's Redis state from the key names before hash
tags (recstack < the Redis Cluster change: ``user:{id}:stats``, ``bandit:ts:{item}``, ...) to the
tagged names of recstack/features/keys.py, on the same Redis or into another one (e.g. a new Redis
Cluster). Each key is copied with DUMP + RESTORE (type, value and TTL kept); the old keys stay
unless ``delete`` (then they are deleted after every copy succeeded).

Copied (old -> new; P the prefix):

| old                                 | new                                   |
|-------------------------------------|---------------------------------------|
| P user:{id}:{recent_items,consumed,genre_scores,stats} | {P u:{id}}:... (same suffix) |
| P item:{id}:stats                   | {P i:{id}}:stats                      |
| P items:popularity, ...:epoch       | {P items:popularity}, ...:epoch       |
| P bandit:ts:{item}                  | {P i:{item}}:ts                       |
| P bandit:tsseg:{seg}|{item}         | {P i:{item}}:tsseg:{seg}              |
| P bandit:{linucb,linucb-hybrid}:{item}, P bandit:linucb-hybrid-shared | {P bandit}:... |
| P exp:{exp}:variants, P exp:{exp}:{variant}:stats | {P exp:{exp}}:...           |
| P exp:{exp}:user:{id} (hash)        | fields ``{exp}\\n{field}`` of {P u:{id}}:experiments |

Not copied: ``event:*`` markers and ``stream:offsets`` (stop the old stream worker first: SIGTERM
commits its offsets, so the new one replays nothing), the open reward windows ``imp:*`` /
``imp:pending`` and ``bandit:ctx:*`` (they name a request, not its user: the zero rewards of
windows open at the switch are lost, at most one reward window of them). Ids containing ':' are
parsed with the suffixes above (the last ':stats', ':user:' ...).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from recstack.features.keys import Keys, experiment_field

USER_SUFFIXES = ("recent_items", "consumed", "genre_scores", "stats")
LINEAR_KINDS = ("linucb", "linucb-hybrid")


@dataclass
class MigrationReport:
    copied: int = 0
    merged_records: int = 0
    skipped: int = 0
    deleted: int = 0
    kinds: dict[str, int] = field(default_factory=dict)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def new_name(old: str, keys: Keys) -> tuple[str, str] | None:
    """(kind, new key) of an old key name (without the prefix), None when it is not copied; kind
    ``exp_user`` is a record merged into the user's experiments hash (new key = that hash)."""
    if old.startswith("user:"):
        body = old[len("user:") :]
        for suffix in USER_SUFFIXES:
            if body.endswith(":" + suffix):
                user = body[: -len(suffix) - 1]
                return "user", f"{keys.user_tag(user)}:{suffix}"
        return None
    if old.startswith("item:") and old.endswith(":stats"):
        return "item", keys.item_stats(old[len("item:") : -len(":stats")])
    if old == "items:popularity":
        return "popularity", keys.popularity()
    if old == "items:popularity:epoch":
        return "popularity", keys.popularity_epoch()
    if old.startswith("bandit:ts:"):
        return "thompson", keys.bandit_arm(old[len("bandit:ts:") :])
    if old.startswith("bandit:tsseg:") and "|" in old:
        segment, item = old[len("bandit:tsseg:") :].split("|", 1)
        return "thompson", keys.bandit_segment_arm(segment, item)
    if old == "bandit:linucb-hybrid-shared":
        return "linear", keys.linear_shared("linucb-hybrid")
    for kind in LINEAR_KINDS:
        if old.startswith(f"bandit:{kind}:"):
            return "linear", keys.linear_arm(old[len(f"bandit:{kind}:") :], kind)
    if old.startswith("exp:"):
        body = old[len("exp:") :]
        if ":user:" in body:
            exp, user = body.rsplit(":user:", 1)
            return "exp_user", keys.user_experiments(user)
        if body.endswith(":variants"):
            return "experiment", keys.experiment_variants(body[: -len(":variants")])
        if body.endswith(":stats") and body.count(":") >= 2:
            exp, variant = body[: -len(":stats")].rsplit(":", 1)
            return "experiment", keys.experiment_stats(exp, variant)
    return None


def _old_keys(client: Any, prefix: str, count: int) -> Iterator[str]:
    for pattern in ("user:*", "item:*", "items:popularity*", "bandit:*", "exp:*"):
        for raw in client.scan_iter(match=_glob_escape(prefix) + pattern, count=count):
            name = raw.decode() if isinstance(raw, bytes) else raw
            if not name.startswith("{"):  # tagged names never match these patterns; be explicit
                yield name


def migrate_keys(
    source: Any, target: Any, prefix: str = "", delete: bool = False, count: int = 1000
) -> MigrationReport:
    """Copy every old key of ``prefix`` from ``source`` to its new name in ``target`` (both
    synchronous clients, bytes responses; the same client for an in-place migration). Idempotent:
    RESTORE ... REPLACE, and the experiment records are HSET field by field."""
    keys = Keys(prefix)
    report = MigrationReport()
    done: list[str] = []
    for old in list(_old_keys(source, prefix, count)):
        mapped = new_name(old[len(prefix) :], keys)
        if mapped is None:
            report.skipped += 1
            continue
        kind, new = mapped
        if kind == "exp_user":
            exp = old[len(prefix) + len("exp:") :].rsplit(":user:", 1)[0]
            row = source.hgetall(old)
            if row:
                fields = {experiment_field(exp, _text(k)): v for k, v in row.items()}
                target.hset(new, mapping=fields)
                report.merged_records += 1
        else:
            dumped = source.dump(old)
            if dumped is None:  # expired meanwhile
                continue
            ttl = source.pttl(old)
            target.restore(new, ttl if ttl and ttl > 0 else 0, dumped, replace=True)
            report.copied += 1
        report.kinds[kind] = report.kinds.get(kind, 0) + 1
        done.append(old)
    if delete:
        for old in done:
            report.deleted += source.delete(old)
    return report


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
