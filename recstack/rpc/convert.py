"""Protobuf <-> Python conversions shared by servicers and the gateway's gRPC stages."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from recstack.features.types import UserFeatures
from recstack.v1 import common_pb2


def user_to_proto(user: UserFeatures) -> common_pb2.UserFeatures:
    return common_pb2.UserFeatures(
        user_id=user.user_id,
        recent_items=list(user.recent_items),
        genre_scores={k: float(v) for k, v in user.genre_scores.items()},
        counters={k: int(v) for k, v in user.counters.items()},
        last_active=float(user.last_active),
    )


def user_from_proto(msg: common_pb2.UserFeatures) -> UserFeatures:
    return UserFeatures(
        user_id=msg.user_id,
        recent_items=list(msg.recent_items),
        genre_scores=dict(msg.genre_scores),
        counters=dict(msg.counters),
        last_active=float(msg.last_active),
    )


def scored_items(
    item_ids: Sequence[str],
    scores: np.ndarray | Sequence[float],
    components: Mapping[str, np.ndarray | Sequence[float]] | None = None,
    propensities: Sequence[float] | None = None,
) -> list[common_pb2.ScoredItem]:
    """Build ScoredItem messages; ``components`` maps a name to a per-item score array [N] (a
    non-finite entry, e.g. NaN for "no such score", is left out of that item's map)."""
    out = []
    for i, item_id in enumerate(item_ids):
        msg = common_pb2.ScoredItem(item_id=item_id, score=float(scores[i]))
        if components:
            for name, values in components.items():
                value = float(values[i])
                if math.isfinite(value):
                    msg.scores[name] = value
        if propensities is not None:
            msg.propensity = float(propensities[i])
        out.append(msg)
    return out


def components_from_proto(items: Sequence[common_pb2.ScoredItem]) -> dict[str, np.ndarray]:
    """The ``scores`` maps of ScoredItem messages as {name: scores [N]}, NaN where one lacks it."""
    out: dict[str, np.ndarray] = {}
    for k, x in enumerate(items):
        for name, value in x.scores.items():
            if name not in out:
                out[name] = np.full(len(items), np.nan)
            out[name][k] = value
    return out


def candidates_to_proto(
    item_ids: Sequence[str],
    scores: np.ndarray | Sequence[float],
    components: Mapping[str, np.ndarray | Sequence[float]] | None = None,
) -> common_pb2.Candidates:
    """A Candidates message (packed columns) of ids, scores and named scores [N] each."""
    msg = common_pb2.Candidates(item_ids=list(item_ids), scores=np.asarray(scores, dtype=np.float64).tolist())
    for name, values in (components or {}).items():
        msg.components[name].values.extend(np.asarray(values, dtype=np.float64).tolist())
    return msg


class CandidatesError(ValueError):
    """A Candidates message whose columns do not line up (INVALID_ARGUMENT)."""


def candidates_from_proto(msg: common_pb2.Candidates) -> tuple[list[str], np.ndarray, dict[str, np.ndarray]]:
    """(ids, scores float64 [N], {name: float64 [N]}) of a Candidates message; CandidatesError when
    a column's length differs from the ids' or an id is empty."""
    ids = list(msg.item_ids)
    scores = np.asarray(msg.scores, dtype=np.float64)
    if len(scores) != len(ids):
        raise CandidatesError(f"candidates.scores holds {len(scores)} values for {len(ids)} item_ids")
    if any(not x for x in ids):
        raise CandidatesError("candidates.item_ids must not be empty strings")
    components = {}
    for name, column in msg.components.items():
        values = np.asarray(column.values, dtype=np.float64)
        if len(values) != len(ids):
            raise CandidatesError(
                f"candidates.components[{name[:64]!r}] holds {len(values)} values for {len(ids)} item_ids"
            )
        components[name] = values
    return ids, scores, components
