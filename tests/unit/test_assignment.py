from __future__ import annotations

import pytest

from recstack.experiments.assignment import ExperimentConfigError, UnknownVariantError, assign, bucket
from recstack.experiments.config import DEFAULT_EXPERIMENT, ExperimentConfig, parse_experiments


def experiment(id: str, salt: str, *variants: tuple[str, float]) -> dict:
    return {"id": id, "salt": salt, "variants": [{"name": n, "weight": w} for n, w in variants]}


def test_assignment_is_stable() -> None:
    first = [assign(DEFAULT_EXPERIMENT, f"u{i}").name for i in range(200)]
    again = [assign(DEFAULT_EXPERIMENT, f"u{i}").name for i in range(200)]
    assert first == again


def test_split_follows_weights() -> None:
    exp = ExperimentConfig.model_validate(experiment("e", "salt-1", ("a", 0.2), ("b", 0.8)))
    n = 20_000
    share_a = sum(assign(exp, f"user-{i}").name == "a" for i in range(n)) / n
    assert share_a == pytest.approx(0.2, abs=0.015)


def test_salt_reshuffles_users() -> None:
    a = [bucket("s1", f"u{i}") < 0.5 for i in range(2000)]
    b = [bucket("s2", f"u{i}") < 0.5 for i in range(2000)]
    agreement = sum(x == y for x, y in zip(a, b, strict=True)) / 2000
    assert 0.4 < agreement < 0.6


def test_force_variant() -> None:
    for i in range(20):
        assert assign(DEFAULT_EXPERIMENT, f"u{i}", force_variant="treatment").name == "treatment"
    with pytest.raises(UnknownVariantError, match="force_variant 'nope'"):
        assign(DEFAULT_EXPERIMENT, "u1", force_variant="nope")


def test_bad_experiments() -> None:
    with pytest.raises(ExperimentConfigError):
        parse_experiments({"experiments": [experiment("e", "s")]})
    with pytest.raises(ExperimentConfigError):
        parse_experiments({"experiments": [experiment("e", "s", ("a", 1), ("a", 1))]})
    with pytest.raises(ExperimentConfigError):
        parse_experiments({"experiments": [experiment("e", "s", ("a", 0))]})
