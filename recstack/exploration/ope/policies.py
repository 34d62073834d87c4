"""Target policies for the ``recstack ope`` CLI, built from a spec string."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from recstack.exploration.ope.data import LoggedBandit, OPEError
from recstack.exploration.ope.estimators import TabularRewardModel, TargetPolicy


def policy_from_spec(spec: str, data: LoggedBandit) -> TargetPolicy:
    """Build a target policy for the CLI.

    ``logged``           pi = the logging propensities (IPS then equals the on-policy mean)
    ``uniform``          uniform over the log's actions, per position
    ``best``             deterministic: per position the action with the highest
                         ``TabularRewardModel`` estimate (replay applies); chosen on the same
                         log, so its estimate is optimistic (selection bias)
    ``json:PATH``        context-free distribution from a JSON object {item_id: weight}
                         (normalised; items absent from it get 0), same for every position
    ``softmax:TEMP``     pi(a|i) proportional to exp(context[i, a] / TEMP); needs per-action
                         contexts [n, A] such as the OBD user-item affinities
    """
    name, _, arg = spec.partition(":")
    a, n_pos = data.n_actions, data.n_positions
    if name == "logged":
        dist = np.zeros((data.n, a))
        dist[np.arange(data.n), data.actions] = data.propensities
        # the remaining mass goes uniformly to the other actions so rows sum to 1
        rest = (1.0 - data.propensities) / max(a - 1, 1)
        dist += rest[:, None] * (dist == 0)
        return TargetPolicy(spec, dist)
    if name == "uniform":
        return TargetPolicy(spec, np.full((n_pos, a), 1.0 / a), per_position=True)
    if name == "best":
        q = TabularRewardModel().fit(data).q_table()
        dist = np.zeros((n_pos, a))
        dist[np.arange(n_pos), np.argmax(q, axis=1)] = 1.0
        return TargetPolicy(spec, dist, per_position=True)
    if name == "json":
        path = Path(arg)
        if not path.is_file():
            raise OPEError(f"policy file {path} does not exist")
        weights = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(weights, dict):
            raise OPEError(f"{path}: expected a JSON object item_id -> weight")
        row = np.array([float(weights.get(i, 0.0)) for i in data.action_ids])
        if not np.isfinite(row).all() or (row < 0).any() or row.sum() <= 0:
            raise OPEError(f"{path}: weights must be >= 0 with a positive sum over the log's items")
        return TargetPolicy(spec, np.tile(row / row.sum(), (n_pos, 1)), per_position=True)
    if name == "softmax":
        if data.contexts is None or data.contexts.shape[1] != a:
            raise OPEError("softmax:TEMP needs per-action contexts [n, n_actions] (OBD affinities)")
        try:
            temp = float(arg)
        except ValueError:
            raise OPEError(f"softmax:TEMP needs a number, got {arg!r}") from None
        if temp <= 0:
            raise OPEError(f"softmax temperature must be > 0, got {temp}")
        logits = data.contexts / temp
        logits = logits - logits.max(axis=1, keepdims=True)
        dist = np.exp(logits)
        return TargetPolicy(spec, dist / dist.sum(axis=1, keepdims=True))
    raise OPEError(
        f"unknown policy spec {spec!r}: use logged, uniform, best, json:PATH, softmax:TEMP, "
        "or a learning policy (linucb, lints, linucb-hybrid, thompson; replay only)"
    )
