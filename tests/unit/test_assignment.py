from __future__ import annotations

import pytest

from recstack.experiments.assignment import (
    DEFAULT_EXPERIMENT,
    Experiment,
    ExperimentConfigError,
    UnknownVariantError,
    Variant,
    assign,
    bucket,
)


def test_assignment_is_stable() -> None:
    first = [assign(DEFAULT_EXPERIMENT, f"u{i}").name for i in range(200)]
    again = [assign(DEFAULT_EXPERIMENT, f"u{i}").name for i in range(200)]
    assert first == again


def test_split_follows_weights() -> None:
    exp = Experiment("e", "salt-1", (Variant("a", 0.2), Variant("b", 0.8)))
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
        Experiment("e", "s", ())
    with pytest.raises(ExperimentConfigError):
        Experiment("e", "s", (Variant("a", 1), Variant("a", 1)))
    with pytest.raises(ExperimentConfigError):
        Experiment("e", "s", (Variant("a", 0),))
