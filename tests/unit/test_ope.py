from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from recstack.exploration.ope.data import LoggedBandit, OPEError, read_obd_csv, read_recstack_log
from recstack.exploration.ope.estimators import TargetPolicy, doubly_robust, evaluate, ips, replay, snips
from recstack.exploration.ope.policies import policy_from_spec
from recstack.exploration.ope.runner import run_ope

# ---------------------------------------------------------------- synthetic logs, known truth

N_CTX, N_ACT = 6, 5


def _world(seed: int = 123) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(context probabilities [C], true click prob q [C, A], logging mu [C, A], target pi [C, A])."""
    rng = np.random.default_rng(seed)
    p_ctx = rng.dirichlet(np.ones(N_CTX))
    q = rng.uniform(0.05, 0.6, size=(N_CTX, N_ACT))
    mu = rng.dirichlet(np.ones(N_ACT) * 3, size=N_CTX)
    pi = rng.dirichlet(np.ones(N_ACT), size=N_CTX)
    return p_ctx, q, mu, pi


def _log(n: int, seed: int, mu: np.ndarray, world_seed: int = 123) -> tuple[LoggedBandit, np.ndarray]:
    p_ctx, q, _, _ = _world(world_seed)
    rng = np.random.default_rng(seed)
    ctx = rng.choice(N_CTX, size=n, p=p_ctx)
    u = rng.random(n)[:, None]
    actions = (u > np.cumsum(mu[ctx], axis=1)).sum(axis=1).clip(max=N_ACT - 1)
    rewards = (rng.random(n) < q[ctx, actions]).astype(float)
    data = LoggedBandit(
        actions=actions,
        rewards=rewards,
        propensities=mu[ctx, actions],
        positions=np.zeros(n, dtype=np.int64),
        action_ids=[f"a{j}" for j in range(N_ACT)],
        contexts=np.eye(N_CTX)[ctx],
    )
    return data, ctx


def test_estimators_cover_the_true_value_of_a_known_policy() -> None:
    p_ctx, q, mu, pi = _world()
    truth = float(p_ctx @ (pi * q).sum(axis=1))
    covered = {"ips": 0, "snips": 0, "dr": 0}
    seeds = range(40)
    for seed in seeds:
        data, ctx = _log(3000, seed, mu)
        est = evaluate(data, TargetPolicy("pi", pi[ctx]))
        for name in covered:
            e = est[name]
            assert e.ci_low < e.value < e.ci_high
            covered[name] += e.ci_low <= truth <= e.ci_high
    for name, hits in covered.items():
        assert hits / len(seeds) >= 0.85, (name, hits)


def test_bootstrap_intervals_cover_the_truth_and_match_normal_width() -> None:
    p_ctx, q, mu, pi = _world()
    truth = float(p_ctx @ (pi * q).sum(axis=1))
    hits = 0
    for seed in range(15):
        data, ctx = _log(2000, seed, mu)
        target = TargetPolicy("pi", pi[ctx])
        boot = evaluate(data, target, estimators=["snips", "dr"], ci="bootstrap", n_boot=400, seed=seed)
        normal = evaluate(data, target, estimators=["snips", "dr"])
        for name in ("snips", "dr"):
            hits += boot[name].ci_low <= truth <= boot[name].ci_high
            w_boot = boot[name].ci_high - boot[name].ci_low
            w_norm = normal[name].ci_high - normal[name].ci_low
            assert 0.7 < w_boot / w_norm < 1.3
    assert hits / 30 >= 0.8


def test_replay_is_unbiased_under_uniform_logging() -> None:
    p_ctx, q, _, _ = _world()
    uniform = np.full((N_CTX, N_ACT), 1.0 / N_ACT)
    best = np.eye(N_ACT)[q.argmax(axis=1)]  # deterministic target [C, A]
    truth = float(p_ctx @ q.max(axis=1))
    data, ctx = _log(20_000, 7, uniform)
    est = evaluate(data, TargetPolicy("best", best[ctx]))
    assert est["replay"].ci_low <= truth <= est["replay"].ci_high
    assert est["replay"].n_effective == pytest.approx((data.actions == q.argmax(axis=1)[ctx]).sum())
    assert abs(est["replay"].value - est["snips"].value) < 1e-12  # same estimator under uniform logging


def test_logging_policy_as_target_gives_the_on_policy_mean() -> None:
    _, _, mu, _ = _world()
    data, _ = _log(1000, 3, mu)
    est = evaluate(data, policy_from_spec("logged", data))
    assert est["ips"].value == pytest.approx(data.rewards.mean())
    assert est["snips"].value == pytest.approx(data.rewards.mean())
    assert est["dr"].value == pytest.approx(data.rewards.mean(), abs=0.02)


def test_estimator_input_errors() -> None:
    r = np.array([1.0, 0.0])
    with pytest.raises(OPEError, match=r"\(0, 1\]"):
        ips(r, np.array([0.5, 0.0]), np.array([0.5, 0.5]))
    with pytest.raises(OPEError, match="same length"):
        snips(r, np.array([0.5]), np.array([0.5, 0.5]))
    with pytest.raises(OPEError, match="deterministic"):
        replay(r, np.array([0.5, 1.0]))
    with pytest.raises(OPEError, match="one value per record"):
        doubly_robust(r, np.ones(2), np.ones(2), np.ones(3), np.ones(2))
    with pytest.raises(OPEError, match="ci must be"):
        ips(r, np.ones(2), np.ones(2), ci="wilson")
    assert np.isnan(replay(r, np.zeros(2)).value)
    with pytest.raises(OPEError, match=r"propensities must be in \(0, 1\]; record 1"):
        LoggedBandit(np.zeros(2, int), r, np.array([1.0, 1.5]), np.zeros(2, int), ["a"])
    data = LoggedBandit(np.zeros(2, int), r, np.ones(2), np.zeros(2, int), ["a", "b"])
    with pytest.raises(OPEError, match="sum to 1"):
        evaluate(data, TargetPolicy("bad", np.array([[0.5, 0.2], [0.5, 0.5]])))
    with pytest.raises(OPEError, match="shape"):
        evaluate(data, TargetPolicy("bad", np.ones((3, 2)) / 2))
    with pytest.raises(OPEError, match="unknown policy spec"):
        policy_from_spec("nope", data)


# ---------------------------------------------------------------- recstack JSON-lines log


def _write_log(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n", encoding="utf-8")
    return path


def test_read_recstack_log_and_run_ope(tmp_path: Path) -> None:
    rows = [
        {
            "request_id": f"r{j}",
            "user_id": f"u{j % 3}",
            "context": {"device": "ios"},
            "items": ["i1", "i2", f"i{3 + j % 4}"],
            "positions": [0, 1, 2],
            "propensities": [1.0, 1.0, 0.25],
            "rewards": [j % 2, 0, int(j % 4 == 0)],
        }
        for j in range(40)
    ]
    log = _write_log(tmp_path / "imp.jsonl", rows)
    data = read_recstack_log(log)
    assert data.n == 120 and data.action_ids[:3] == ["i1", "i2", "i3"]
    assert data.raw_contexts[0] == {"device": "ios"} and data.request_ids[3] == "r1"
    np.testing.assert_array_equal(data.positions[:3], [0, 1, 2])
    out = run_ope(log, "uniform")
    assert out["records"] == 120 and set(out["estimates"]) == {"ips", "snips", "dr"}
    assert out["estimates"]["ips"]["value"] == pytest.approx(
        float(np.mean(data.rewards / data.n_actions / data.propensities))
    )
    weights = tmp_path / "w.json"
    weights.write_text(json.dumps({"i3": 1.0, "i4": 1.0}))
    est = run_ope(log, f"json:{weights}")["estimates"]
    assert est["ips"]["value"] >= 0
    assert "replay" in run_ope(log, "best")["estimates"]
    learned = run_ope(log, "linucb:alpha=0.5")["estimates"]
    assert set(learned) == {"replay"} and 0 < learned["replay"]["n_effective"] <= 120


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"request_id": "r"}', "missing fields"),
        (
            '{"request_id": "r", "items": ["a"], "positions": [0, 1], "propensities": [1], "rewards": [0]}',
            "equal length",
        ),
        (
            '{"request_id": "r", "items": ["a"], "positions": [0], "propensities": [0], "rewards": [0]}',
            "propensity",
        ),
    ],
)
def test_recstack_log_errors_name_the_line(tmp_path: Path, line: str, message: str) -> None:
    log = tmp_path / "bad.jsonl"
    good = '{"request_id": "r0", "items": ["a"], "positions": [0], "propensities": [1], "rewards": [1]}'
    log.write_text(good + "\n" + line + "\n")
    with pytest.raises(OPEError, match=rf"bad.jsonl:2: .*{message}"):
        read_recstack_log(log)
    with pytest.raises(OPEError, match="does not exist"):
        read_recstack_log(tmp_path / "missing.jsonl")


def test_obd_reader_rejects_other_csv(tmp_path: Path) -> None:
    csv = tmp_path / "x.csv"
    csv.write_text(",a,b\n0,1,2\n")
    with pytest.raises(OPEError, match="missing columns"):
        read_obd_csv(csv)


# ---------------------------------------------------------------- agreement with obp on the OBD sample

OBP_VERSION = "0.5.7"
CACHE = Path.home() / ".cache" / "recstack"

# Reference values computed by obp 0.5.7 itself (Python 3.10 venv, numpy 1.23.5, pandas 1.5.2,
# scikit-learn 1.1.3; obp's optional torch import stubbed out) on the OBD sample shipped in the
# obp 0.5.7 sdist (obp/dataset/obd/{random,bts}/all/all.csv, 10,000 rows each):
#   OpenBanditDataset(behavior_policy=B, campaign="all", data_path=...).obtain_batch_bandit_feedback()
#   InverseProbabilityWeighting / SelfNormalizedInverseProbabilityWeighting / DoublyRobust
#     .estimate_policy_value(action_dist=pi, ...), ReplayMethod with the argmax of the same logits,
#   IPW .estimate_interval(n_bootstrap_samples=2000, random_state=0)
# with the target policy and reward model of _obd_target below. Command (setup in its docstring):
#   /tmp/obpenv/bin/python scripts/obp_reference.py /tmp/obp/obp-0.5.7/obp/dataset/obd
OBP_REFERENCE = {
    "random": {
        "ips": 0.0031913796792881954,
        "snips": 0.0031753248316355328,
        "dr": 0.0030916576588132377,
        "replay": 0.0,
        "ips_boot_ci": (0.0021266447438663834, 0.00425742500958399),
    },
    "bts": {
        "ips": 0.005769885922553464,
        "snips": 0.0058159768786795445,
        "dr": 0.007392287167036127,
        "replay": 0.022727272727272724,
        "ips_boot_ci": (0.000909759810151206, 0.014741849643666293),
    },
}


def _extract_obd(archive: Path, dest: Path) -> None:
    """Copy obp/dataset/obd/**.csv out of an obp wheel (.whl) or sdist (.tar.gz) into dest."""
    marker = "obp/dataset/obd/"
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if marker in name and name.endswith(".csv"):
                    target = dest / name.split(marker, 1)[1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(name))
    else:
        with tarfile.open(archive) as tf:
            for member in tf.getmembers():
                if marker in member.name and member.name.endswith(".csv"):
                    target = dest / member.name.split(marker, 1)[1]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tf.extractfile(member).read())


def _obd_sample_dir() -> Path:
    """The OBD sample directory (holding random/all/all.csv): $OBD_SAMPLE_DIR, the cache, or a
    one-time `pip download obp==0.5.7` into ~/.cache/recstack (obp is never installed)."""
    env = os.environ.get("OBD_SAMPLE_DIR")
    if env:
        if not (Path(env) / "random" / "all" / "all.csv").is_file():
            pytest.fail(f"OBD_SAMPLE_DIR={env} has no random/all/all.csv (point it at obp/dataset/obd)")
        return Path(env)
    cached = CACHE / f"obp-{OBP_VERSION}-obd"
    if (cached / "random" / "all" / "all.csv").is_file():
        return cached
    dl = CACHE / "downloads"
    dl.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", f"obp=={OBP_VERSION}", "--no-deps"]
    cmd += ["--ignore-requires-python", "-d", str(dl), "-q"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"OBD sample unavailable: set OBD_SAMPLE_DIR (pip download obp failed: {exc})")
    archives = sorted(dl.glob(f"obp-{OBP_VERSION}*"))
    if proc.returncode != 0 or not archives:
        pytest.skip(f"OBD sample unavailable offline: set OBD_SAMPLE_DIR ({proc.stderr.strip()[-200:]})")
    _extract_obd(archives[0], cached)
    return cached


def _obd_target(data: LoggedBandit) -> tuple[np.ndarray, np.ndarray]:
    """pi(a | i) = softmax_a(5 * affinity[i, a] + 0.1 * ((7a + 3 pos_i) % 11)) and its argmax."""
    a = np.arange(data.n_actions)[None, :]
    logits = 5.0 * data.contexts + 0.1 * ((7 * a + 3 * data.positions[:, None]) % 11)
    pi = np.exp(logits - logits.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    det = np.zeros_like(pi)
    det[np.arange(data.n), logits.argmax(axis=1)] = 1.0
    return pi, det


@pytest.mark.parametrize("behavior", ["random", "bts"])
def test_agrees_with_obp_on_open_bandit_dataset_sample(behavior: str) -> None:
    data = read_obd_csv(_obd_sample_dir() / behavior / "all" / "all.csv")
    assert data.n == 10_000 and data.n_actions == 80 and data.n_positions == 3
    pi, det = _obd_target(data)
    est = evaluate(data, TargetPolicy("softmax", pi), estimators=["ips", "snips", "dr"])
    ref = OBP_REFERENCE[behavior]
    for name in ("ips", "snips", "dr"):
        assert est[name].value == pytest.approx(ref[name], rel=1e-9), name
    rep = evaluate(data, TargetPolicy("argmax", det), estimators=["replay"])["replay"]
    assert rep.value == pytest.approx(ref["replay"], abs=1e-12)
    boot = evaluate(data, TargetPolicy("softmax", pi), estimators=["ips"], ci="bootstrap", n_boot=2000)["ips"]
    lo, hi = ref["ips_boot_ci"]
    width = hi - lo
    assert abs(boot.ci_low - lo) < 0.1 * width and abs(boot.ci_high - hi) < 0.1 * width
