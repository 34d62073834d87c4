"""What ``recstack ope --log LOG --policy SPEC`` runs: read the log, pick the estimators, report."""

from __future__ import annotations

from pathlib import Path

from recstack.exploration.ope.data import read_log
from recstack.exploration.ope.estimators import evaluate
from recstack.exploration.ope.policies import policy_from_spec
from recstack.exploration.ope.replay import LEARNING_POLICIES, replay_learning


def run_ope(
    log: str | Path,
    policy: str,
    fmt: str = "auto",
    ci: str = "normal",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict:
    """What ``recstack ope --log LOG --policy SPEC`` prints: a JSON-ready dict."""
    data = read_log(log, fmt)
    if policy.partition(":")[0] in LEARNING_POLICIES:  # learns from its rewards: replay only
        est = {"replay": replay_learning(data, policy, seed=seed, ci=ci, level=level, n_boot=n_boot)}
    else:
        est = evaluate(data, policy_from_spec(policy, data), ci=ci, level=level, n_boot=n_boot, seed=seed)
    return {
        "log": str(log),
        "policy": policy,
        "records": data.n,
        "actions": data.n_actions,
        "on_policy_mean_reward": float(data.rewards.mean()),
        "estimates": {k: v.to_dict() for k, v in est.items()},
    }
