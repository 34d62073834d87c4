"""Logged bandit feedback for off-policy evaluation: the data model and the log readers.

Data model: one record per served (impression, position): logged action a_i (index into
``action_ids``), position p_i (0-based slot), reward r_i, logging propensity mu_i in (0, 1].

Log formats:
  recstack JSON lines, one impression per line::

    {"request_id": "r1", "user_id": "u1", "context": {...},
     "items": ["i3", "i9"], "positions": [0, 1], "propensities": [1.0, 0.02], "rewards": [0, 1]}

  items, positions, propensities and rewards are parallel lists (one entry per served item;
  propensity as in ``recstack.exploration.base``: 1.0 for fixed positions, P(in the
  exploration slots) for explored items; reward 0/1 or any finite number). ``context`` is the
  request's context (kept per record in ``raw_contexts``). ``read_recstack_log`` reads it.

  Open Bandit Dataset CSV (``read_obd_csv``): columns timestamp, item_id, position (1-based),
  click, propensity_score, user_feature_*, user-item_affinity_<item>; rows sorted by
  timestamp like obp; contexts = the user-item affinity columns [n, n_items].
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd


class OPEError(ValueError):
    """Invalid logged data or target policy; the message names the field and the fix."""


@dataclass(frozen=True)
class LoggedBandit:
    """Logged feedback, one row per served (impression, position).

    actions int [n] (index into ``action_ids``), rewards float [n], propensities float [n] in
    (0, 1], positions int [n] (0-based), action_ids [A], contexts float [n, d] or None,
    request_ids [n] or None, raw_contexts (one dict per record) or None.
    """

    actions: np.ndarray
    rewards: np.ndarray
    propensities: np.ndarray
    positions: np.ndarray
    action_ids: list[str]
    contexts: np.ndarray | None = None
    request_ids: list[str] | None = None
    raw_contexts: list[dict] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = self.actions.shape[0]
        for name in ("rewards", "propensities", "positions"):
            if getattr(self, name).shape != (n,):
                raise OPEError(f"{name} must have shape ({n},), got {getattr(self, name).shape}")
        if n == 0:
            raise OPEError("the log has no records")
        if self.actions.min() < 0 or self.actions.max() >= len(self.action_ids):
            raise OPEError(f"actions must index action_ids (0..{len(self.action_ids) - 1})")
        if self.positions.min() < 0:
            raise OPEError("positions must be >= 0 (0-based)")
        if not np.isfinite(self.rewards).all():
            raise OPEError("rewards contain NaN or inf")
        p = self.propensities
        if not (np.isfinite(p).all() and (p > 0).all() and (p <= 1).all()):
            bad = int(np.flatnonzero(~(np.isfinite(p) & (p > 0) & (p <= 1)))[0])
            raise OPEError(f"propensities must be in (0, 1]; record {bad} has {p[bad]}")
        if self.contexts is not None and self.contexts.shape[0] != n:
            raise OPEError(f"contexts must have {n} rows, got {self.contexts.shape[0]}")

    @property
    def n(self) -> int:
        return int(self.actions.shape[0])

    @property
    def n_actions(self) -> int:
        return len(self.action_ids)

    @property
    def n_positions(self) -> int:
        return int(self.positions.max()) + 1


def read_recstack_log(path: str | Path) -> LoggedBandit:
    """Read recstack's impression/reward JSON lines (format in the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise OPEError(f"log file {path} does not exist")
    index: dict[str, int] = {}
    actions: list[int] = []
    positions: list[int] = []
    props: list[float] = []
    rewards: list[float] = []
    request_ids: list[str] = []
    contexts: list[dict] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as exc:
                raise OPEError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(rec, dict):
                raise OPEError(f"{path}:{lineno}: expected a JSON object")
            missing = [
                k for k in ("request_id", "items", "positions", "propensities", "rewards") if k not in rec
            ]
            if missing:
                raise OPEError(f"{path}:{lineno}: missing fields {missing}")
            items = rec["items"]
            cols = [rec["positions"], rec["propensities"], rec["rewards"]]
            if not isinstance(items, list) or any(
                not isinstance(c, list) or len(c) != len(items) for c in cols
            ):
                raise OPEError(
                    f"{path}:{lineno}: items, positions, propensities, rewards must be lists of equal length"
                )
            ctx = rec.get("context") or {}
            for item, pos, prop, rew in zip(items, *cols, strict=True):
                try:
                    pos_i, prop_f, rew_f = int(pos), float(prop), float(rew)
                except (TypeError, ValueError):
                    raise OPEError(
                        f"{path}:{lineno}: non-numeric position/propensity/reward for item {item!r}"
                    ) from None
                if not 0 < prop_f <= 1:
                    raise OPEError(f"{path}:{lineno}: propensity of {item!r} must be in (0, 1], got {prop}")
                actions.append(index.setdefault(str(item), len(index)))
                positions.append(pos_i)
                props.append(prop_f)
                rewards.append(rew_f)
                request_ids.append(str(rec["request_id"]))
                contexts.append(ctx)
    if not actions:
        raise OPEError(f"{path}: no impressions in the log")
    return LoggedBandit(
        actions=np.asarray(actions, dtype=np.int64),
        rewards=np.asarray(rewards, dtype=np.float64),
        propensities=np.asarray(props, dtype=np.float64),
        positions=np.asarray(positions, dtype=np.int64),
        action_ids=list(index),
        request_ids=request_ids,
        raw_contexts=contexts,
    )


OBD_REQUIRED = ("timestamp", "item_id", "position", "click", "propensity_score")


def read_obd_csv(path: str | Path, n_items: int | None = None) -> LoggedBandit:
    """Read an Open Bandit Dataset CSV (e.g. ``obd/random/all/all.csv``).

    Actions are the integer item ids 0..n_items-1 (``n_items`` defaults to the number of
    user-item_affinity columns, else max item_id + 1); positions = dense rank of ``position``
    minus 1 (as obp); rows stably sorted by timestamp.
    """
    path = Path(path)
    if not path.is_file():
        raise OPEError(f"OBD file {path} does not exist")
    df = pd.read_csv(path, index_col=0)
    missing = [c for c in OBD_REQUIRED if c not in df.columns]
    if missing:
        raise OPEError(f"{path}: not an Open Bandit Dataset CSV, missing columns {missing}")
    df = df.sort_values("timestamp", kind="stable")
    aff_cols = [c for c in df.columns if c.startswith("user-item_affinity_")]
    aff_cols.sort(key=lambda c: int(c.rsplit("_", 1)[1]))
    items = df["item_id"].to_numpy(dtype=np.int64)
    if n_items is None:
        n_items = len(aff_cols) or int(items.max()) + 1
    if items.min() < 0 or items.max() >= n_items:
        raise OPEError(f"{path}: item_id must be in 0..{n_items - 1}")
    positions = pd.Series(df["position"]).rank(method="dense").to_numpy(dtype=np.int64) - 1
    return LoggedBandit(
        actions=items,
        rewards=df["click"].to_numpy(dtype=np.float64),
        propensities=df["propensity_score"].to_numpy(dtype=np.float64),
        positions=positions,
        action_ids=[str(i) for i in range(n_items)],
        contexts=df[aff_cols].to_numpy(dtype=np.float64) if aff_cols else None,
    )


def read_log(path: str | Path, fmt: str = "auto") -> LoggedBandit:
    """``fmt``: ``recstack`` (JSON lines), ``obd`` (CSV) or ``auto`` (by suffix: .csv -> obd)."""
    if fmt == "auto":
        fmt = "obd" if str(path).endswith(".csv") else "recstack"
    if fmt == "recstack":
        return read_recstack_log(path)
    if fmt == "obd":
        return read_obd_csv(path)
    raise OPEError(f"log format must be recstack, obd or auto, got {fmt!r}")
