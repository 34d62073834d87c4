"""Experiment configuration: parsing, error paths, layered assignment, hot reload."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest
import yaml

from recstack.experiments import assignment
from recstack.experiments.config import (
    DEFAULT_EXPERIMENT,
    ConfigWatcher,
    ExperimentConfigError,
    ExperimentsConfig,
    UnknownExperimentError,
    load_experiments,
    parse_experiments,
)

VALID = {
    "holdout": 0.1,
    "experiments": [
        {
            "id": "slots",
            "salt": "slots-v1",
            "layer": "bandit",
            "traffic": 0.6,
            "variants": [
                {"name": "control", "weight": 1, "pipeline": {"bandit": {"policy": "thompson", "slots": 1}}},
                {"name": "treatment", "weight": 1, "pipeline": {"bandit": {"slots": 2}}},
            ],
        },
        {
            "id": "div",
            "salt": "div-v1",
            "layer": "diversity",
            "variants": [
                {"name": "control"},
                {
                    "name": "dpp",
                    "weight": 3,
                    "pipeline": {
                        "ranker": "ncf",
                        "rerank": {"enabled": False, "model": "gru4rec"},
                        "diversity": {"method": "dpp", "lambda": 0.6},
                        "multitask_weights": {"click": 1, "like": 0.5, "purchase": 2},
                    },
                },
            ],
        },
        {
            "id": "ranker",
            "salt": "ranker-v1",
            "layer": "bandit",
            "traffic": 0.4,
            "variants": [{"name": "control"}, {"name": "mt"}],
        },
    ],
}


def write(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_valid_yaml_and_json_load(tmp_path: Path) -> None:
    cfg = load_experiments(write(tmp_path / "exp.yaml", VALID))
    (tmp_path / "exp.json").write_text(json.dumps(VALID))
    assert load_experiments(tmp_path / "exp.json") == cfg
    div = cfg.get("div")
    p = div.variant("dpp").pipeline
    assert (p.ranker, p.rerank.enabled, p.diversity.method, p.diversity.lam) == ("ncf", False, "dpp", 0.6)
    assert p.multitask_weights.purchase == 2.0
    assert div.weights == {"control": 0.25, "dpp": 0.75}
    assert div.control == "control"


def test_adopts_the_hash_assignment() -> None:
    cfg = parse_experiments(VALID)
    exp = cfg.get("slots")
    assert exp.hash_salt == "bandit:slots-v1"  # the layer is part of the salt
    assert exp.variant("treatment").pipeline.to_assignment().explore_slots == 2
    for i in range(300):
        for a in cfg.assign(f"u{i}"):
            expected = assignment.assign(cfg.get(a.experiment_id), f"u{i}")
            assert a.variant == expected.name


def test_holdout_and_layer_traffic_shares() -> None:
    cfg = parse_experiments(VALID)
    n = 20_000
    per_layer = {"bandit": {"slots": 0, "ranker": 0}, "diversity": {"div": 0}}
    held = 0
    for i in range(n):
        got = cfg.assign(f"user-{i}")
        held += not got
        layers = [a.layer for a in got]
        assert len(layers) == len(set(layers))  # at most one experiment per layer: no overlap
        for a in got:
            per_layer[a.layer][a.experiment_id] += 1
    assert held / n == pytest.approx(0.1, abs=0.01)
    active = n - held
    assert per_layer["bandit"]["slots"] / active == pytest.approx(0.6, abs=0.015)
    assert per_layer["bandit"]["ranker"] / active == pytest.approx(0.4, abs=0.015)
    assert per_layer["diversity"]["div"] == active  # traffic 1.0


def test_layers_hash_independently() -> None:
    cfg = parse_experiments(VALID)
    joint = {(s, d): 0 for s in ("control", "treatment") for d in ("control", "dpp")}
    for i in range(20_000):
        got = {a.experiment_id: a.variant for a in cfg.assign(f"user-{i}")}
        if "slots" in got:
            joint[(got["slots"], got["div"])] += 1
    for s in ("control", "treatment"):
        share_dpp = joint[(s, "dpp")] / (joint[(s, "dpp")] + joint[(s, "control")])
        assert share_dpp == pytest.approx(0.75, abs=0.02)


def bad(**changes: object) -> dict:
    data = json.loads(json.dumps(VALID))
    for path, value in changes.items():
        node = data
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        node[keys[-1]] = value
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            bad(experiments__1__variants__1__pipeline__diversity__lambda=1.5),
            "experiments[1].variants[1].pipeline.diversity.lambda: must be between 0 and 1",
        ),
        (bad(experiments__1__variants__1__pipeline__diversity__lambda=1.0), "must be < 1 for dpp"),
        (bad(experiments__0__traffic=-0.1), "experiments[0].traffic: must be between 0 and 1"),
        (bad(experiments__0__traffic=0.7), "experiments[2].traffic: layer 'bandit' traffic sums to 1.1 > 1"),
        (bad(experiments__2__id="slots"), "experiments[2].id: duplicate experiment id 'slots'"),
        (bad(experiments__0__variants__1__name="control"), "experiments[0].variants[1].name: duplicate"),
        (bad(experiments__0__variants__0__weight=-1), "experiments[0].variants[0].weight: must be >= 0"),
        (bad(experiments__0__variants__0__pipeline__ranker="xgb"), "pipeline.ranker: Input should be"),
        (bad(experiments__0__variants__0__pipeline__bandit__policy="ucb"), "bandit.policy"),
        (
            bad(experiments__0__variants__0__pipeline__bandit__segment_by="device"),
            "experiments[0].variants[0].pipeline.bandit.segment_by: must be 'none', 'top_genre' or "
            "'attribute:NAME'",
        ),
        (
            bad(experiments__0__variants__0__pipeline__bandit__segment_by="attribute:a b"),
            "pipeline.bandit.segment_by: must be",
        ),
        (bad(experiments__1__variants__1__pipeline__rerank__model="lstm"), "rerank.model"),
        (bad(experiments__0__variants__0__pipeline__colour="red"), "pipeline.colour: unknown field"),
        (bad(experiments__0__variants=[]), "experiments[0].variants:"),
        (bad(holdout=2), "holdout: must be between 0 and 1"),
        (bad(experiments__0__id="has space"), "experiments[0].id: must be 1..128 characters"),
    ],
)
def test_validation_errors_name_the_field(data: dict, message: str) -> None:
    with pytest.raises(ExperimentConfigError) as err:
        parse_experiments(data)
    assert message in str(err.value)


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ExperimentConfigError, match="not found"):
        load_experiments(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("experiments: [\n  - id: x\n   bad")
    with pytest.raises(ExperimentConfigError, match="not valid YAML"):
        load_experiments(broken)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(ExperimentConfigError, match="top level must be a mapping"):
        load_experiments(listy)
    with pytest.raises(UnknownExperimentError, match="unknown experiment 'nope'; configured"):
        parse_experiments(VALID).get("nope")


def test_watcher_reloads_and_keeps_last_valid(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    path = write(tmp_path / "exp.yaml", VALID)
    seen = []
    watcher = ConfigWatcher(path, interval_s=1.0, on_change=seen.append, clock=lambda: now[0])
    first = watcher.current()
    assert [e.id for e in first.experiments] == ["slots", "div", "ranker"]

    def bump(data: dict) -> None:
        write(path, data)
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10_000_000))

    bump(bad(experiments__0__traffic=0.7))
    now[0] += 0.5
    assert watcher.current() is first  # not due yet
    now[0] += 1.0
    with caplog.at_level(logging.ERROR, logger="recstack.experiments.config"):
        assert watcher.current() is first  # invalid file: previous config kept
    assert "traffic sums to 1.1" in (watcher.last_error or "")
    assert any("keeping the previous one" in r.getMessage() for r in caplog.records)

    good = bad(holdout=0.2)
    bump(good)
    now[0] += 1.0
    assert watcher.current().holdout == 0.2
    assert watcher.last_error is None and len(seen) == 1
    assert watcher.reload() is False  # unchanged file


def test_watcher_first_load_must_succeed(tmp_path: Path) -> None:
    with pytest.raises(ExperimentConfigError, match="not found"):
        ConfigWatcher(tmp_path / "none.yaml")


def test_default_layer_keeps_the_gateway_hash() -> None:
    cfg = DEFAULT_EXPERIMENT
    assert cfg.layer == "default" and cfg.hash_salt == DEFAULT_EXPERIMENT.salt
    assert cfg.variant("treatment").pipeline.bandit.slots == 2
    full = ExperimentsConfig(experiments=[cfg])
    for i in range(500):
        (got,) = full.assign(f"u{i}")
        assert got.variant == assignment.assign(DEFAULT_EXPERIMENT, f"u{i}").name


@pytest.mark.parametrize("policy", ["thompson", "linucb", "lints", "linucb-hybrid"])
def test_every_served_bandit_policy_is_accepted(policy: str) -> None:
    data = bad(experiments__0__variants__0__pipeline__bandit__policy=policy)
    cfg = parse_experiments(data)
    assert cfg.experiments[0].variants[0].pipeline.to_assignment().policy == policy


@pytest.mark.parametrize(
    ("segment_by", "canonical"),
    [("none", ""), ("top_genre", "top_genre"), ("attribute:device", "attribute:device")],
)
def test_segment_by_reaches_the_pipeline_and_layers(segment_by: str, canonical: str) -> None:
    data = bad(experiments__0__variants__0__pipeline__bandit__segment_by=segment_by)
    data["default_pipeline"] = {"bandit": {"segment_by": "top_genre"}}
    cfg = parse_experiments(data)
    assert cfg.experiments[0].variants[0].pipeline.to_assignment().segment_by == canonical
    other = cfg.experiments[0].variants[1].name
    # a variant that sets only other bandit fields keeps the default pipeline's segment_by
    for i in range(2000):
        r = cfg.resolve(f"user{i}")
        got = {a.experiment_id: a.variant for a in r.assignments}
        if got.get("slots") == other:
            assert r.pipeline.segment_by == "top_genre"
            break
    else:
        raise AssertionError("no user in the other variant")
