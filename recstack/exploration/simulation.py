"""Regret of exploration policies in a known linear-logistic environment.

Environment (``LinearLogisticEnv``): ``n_arms`` arms with hidden coefficients theta_a
~ N(0, scale^2 I / dim); every round each arm shows a fresh context x_{t,a} (x[0] = 1 bias,
the rest ~ N(0, 1)) and a click happens with probability sigmoid(theta_a . x_{t,a} + bias).
A policy serves one arm per round (a slate of k = 1 with one exploration slot) and learns from
the click. Regret of round t = max_a p_{t,a} - p_{t,chosen} (expected regret, so the curves do
not carry the Bernoulli noise of the clicks); all policies of a seed see the same contexts and
the same uniform draws for the clicks.

Policies, all through ``recstack.exploration.linucb`` (the serving classes):
``uniform`` (epsilon = 1), ``epsilon_greedy`` (ridge means, alpha = 0, epsilon), ``linucb``
(alpha, epsilon = 0), ``lints`` (v); ``vw_squarecb`` optionally: Vowpal Wabbit
``--cb_explore_adf --squarecb`` with per-arm interactions (needs the ``vowpalwabbit`` package).
``simulate(config)`` returns the curves; ``plot_regret`` writes a PNG (matplotlib, Agg).
"""

from __future__ import annotations

import importlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from recstack.exploration.linucb import LinTS, LinUCB

POLICIES = ("uniform", "epsilon_greedy", "linucb", "lints")


class SimulationError(ValueError):
    """Bad simulation settings or a missing optional dependency."""


@dataclass(frozen=True)
class SimulationConfig:
    """n_rounds per seed; ``record_every`` rounds between stored curve points."""

    n_rounds: int = 100_000
    n_arms: int = 20
    dim: int = 8
    seeds: tuple[int, ...] = (0, 1, 2)
    policies: tuple[str, ...] = POLICIES
    include_vw: bool = False
    alpha: float = 0.5
    epsilon: float = 0.1
    v: float = 0.3
    scale: float = 3.0
    bias: float = -1.0
    record_every: int = 100

    def check(self) -> None:
        if self.n_rounds < 1 or self.n_arms < 2 or self.dim < 2:
            raise SimulationError("need n_rounds >= 1, n_arms >= 2, dim >= 2")
        if not self.seeds:
            raise SimulationError("seeds must not be empty")
        unknown = set(self.policies) - set(POLICIES)
        if unknown:
            raise SimulationError(f"unknown policies {sorted(unknown)}; choose from {POLICIES}")
        if self.record_every < 1:
            raise SimulationError("record_every must be >= 1")


class LinearLogisticEnv:
    """The hidden model: ``probs(x) = sigmoid(theta_a . x_a + bias)`` per arm."""

    def __init__(self, n_arms: int, dim: int, seed: int, scale: float = 3.0, bias: float = -1.0):
        rng = np.random.default_rng([seed, 1])
        self.theta = rng.normal(size=(n_arms, dim)) * scale / np.sqrt(dim)  # [A, d]
        self.bias = bias
        self.n_arms, self.dim = n_arms, dim
        self._rng = np.random.default_rng([seed, 2])

    def contexts(self, rounds: int) -> np.ndarray:
        """Contexts [rounds, A, d] with a bias column of ones."""
        x = self._rng.normal(size=(rounds, self.n_arms, self.dim))
        x[..., 0] = 1.0
        return x

    def probs(self, x: np.ndarray) -> np.ndarray:
        """Click probability [..., A] of contexts [..., A, d]."""
        return 1.0 / (1.0 + np.exp(-(np.einsum("...ad,ad->...a", x, self.theta) + self.bias)))

    def uniforms(self, rounds: int) -> np.ndarray:
        return self._rng.random(rounds)


@dataclass
class SimulationResult:
    """Cumulative expected regret at ``rounds`` for each policy and seed: ``curves[name]`` is
    [n_seeds, len(rounds)]; ``seconds[name]`` the wall time per seed."""

    config: SimulationConfig
    rounds: np.ndarray
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    seconds: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready: final regret mean/std over seeds per policy, and the config."""
        final = {
            name: {
                "final_regret_mean": float(c[:, -1].mean()),
                "final_regret_std": float(c[:, -1].std()),
                "regret_per_round": float(c[:, -1].mean() / self.rounds[-1]),
                "seconds_per_seed": float(np.mean(self.seconds[name])),
            }
            for name, c in self.curves.items()
        }
        return {"config": asdict(self.config), "policies": final}


class _VWPolicy:
    """Vowpal Wabbit SquareCB over action-dependent features (per-arm weights via -q ax)."""

    def __init__(self, n_arms: int, seed: int):
        try:
            vw = importlib.import_module("vowpalwabbit")
        except ImportError:
            raise SimulationError(
                "include_vw needs the vowpalwabbit package: pip install vowpalwabbit"
            ) from None
        self._vw = vw.Workspace(
            f"--cb_explore_adf --squarecb --gamma_scale 10 -q ax --quiet --random_seed {seed}"
        )
        self._rng = np.random.default_rng(seed)
        self.n_arms = n_arms

    def _lines(self, x: np.ndarray, label: tuple[int, float, float] | None = None) -> list[str]:
        lines = ["shared |s c"]
        for a in range(self.n_arms):
            feats = " ".join(f"f{i}:{v:.5f}" for i, v in enumerate(x[a]))
            prefix = f"0:{label[1]}:{label[2]} " if label is not None and label[0] == a else ""
            lines.append(f"{prefix}|a arm{a} |x {feats}")
        return lines

    def choose(self, x: np.ndarray) -> tuple[int, float]:
        pmf = np.asarray(self._vw.predict(self._lines(x)), dtype=np.float64)
        pmf /= pmf.sum()
        a = int(self._rng.choice(self.n_arms, p=pmf))
        return a, float(pmf[a])

    def learn(self, x: np.ndarray, a: int, prob: float, reward: float) -> None:
        self._vw.learn(self._lines(x, (a, -reward, prob)))

    def close(self) -> None:
        self._vw.finish()


def _make(name: str, cfg: SimulationConfig, seed: int) -> LinUCB:
    if name == "uniform":
        return LinUCB(cfg.dim, alpha=0.0, epsilon=1.0, seed=seed)
    if name == "epsilon_greedy":
        return LinUCB(cfg.dim, alpha=0.0, epsilon=cfg.epsilon, seed=seed)
    if name == "linucb":
        return LinUCB(cfg.dim, alpha=cfg.alpha, epsilon=0.0, seed=seed)
    return LinTS(cfg.dim, v=cfg.v, seed=seed, n_draws=1)  # propensities unused here


def _run_policy(
    name: str, cfg: SimulationConfig, seed: int, x: np.ndarray, p: np.ndarray, u: np.ndarray
) -> np.ndarray:
    """Cumulative regret at every round [n_rounds] for one policy and seed."""
    regret = np.empty(cfg.n_rounds)
    best = p.max(axis=1)
    arm_ids = [f"a{j}" for j in range(cfg.n_arms)]
    if name == "vw_squarecb":
        vw = _VWPolicy(cfg.n_arms, seed)
        for t in range(cfg.n_rounds):
            a, prob = vw.choose(x[t])
            vw.learn(x[t], a, prob, float(u[t] < p[t, a]))
            regret[t] = best[t] - p[t, a]
        vw.close()
        return np.cumsum(regret)
    policy = _make(name, cfg, seed)
    index = {arm: j for j, arm in enumerate(arm_ids)}
    for t in range(cfg.n_rounds):
        dec = policy.select(x[t], arm_ids, k=1, explore_slots=1)
        a = index[dec.items[0]]
        policy.update(dec.items[0], x[t, a], float(u[t] < p[t, a]))
        regret[t] = best[t] - p[t, a]
    return np.cumsum(regret)


def simulate(config: SimulationConfig) -> SimulationResult:
    """Run every policy on every seed; returns the regret curves."""
    config.check()
    names = list(config.policies) + (["vw_squarecb"] if config.include_vw else [])
    rounds = np.unique(
        np.r_[np.arange(config.record_every, config.n_rounds + 1, config.record_every), config.n_rounds]
    )
    result = SimulationResult(config, rounds)
    per = {name: [] for name in names}
    for name in names:
        result.seconds[name] = []
    for seed in config.seeds:
        env = LinearLogisticEnv(config.n_arms, config.dim, seed, config.scale, config.bias)
        x = env.contexts(config.n_rounds)
        p = env.probs(x)
        u = env.uniforms(config.n_rounds)
        for name in names:
            t0 = time.perf_counter()
            curve = _run_policy(name, config, seed, x, p, u)
            result.seconds[name].append(time.perf_counter() - t0)
            per[name].append(curve[rounds - 1])
    result.curves = {name: np.stack(c) for name, c in per.items()}
    return result


def plot_regret(result: SimulationResult, path: str | Path) -> Path:
    """Mean cumulative regret (band: min..max over seeds) per policy, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, c in result.curves.items():
        ax.plot(result.rounds, c.mean(axis=0), label=name)
        ax.fill_between(result.rounds, c.min(axis=0), c.max(axis=0), alpha=0.2)
    cfg = result.config
    ax.set_xlabel("round")
    ax.set_ylabel("cumulative expected regret (log scale)")
    ax.set_yscale("log")
    ax.set_title(f"{cfg.n_arms} arms, d={cfg.dim}, {len(cfg.seeds)} seeds (linear-logistic)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
