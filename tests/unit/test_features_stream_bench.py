"""The stream benchmark's histogram quantiles (interpolated like Prometheus' histogram_quantile)."""

from __future__ import annotations

import math

import pytest

from recstack.bench.stream import histogram_quantile

NAME = "recstack_stream_event_to_feature_seconds"


def text(counts: dict[str, float]) -> str:
    lines = [f'{NAME}_bucket{{le="{le}"}} {count}' for le, count in counts.items()]
    return "\n".join(lines + [f"{NAME}_count {counts['+Inf']}"])


def test_quantile_interpolates_inside_its_bucket() -> None:
    scrape = text({"0.01": 0, "0.02": 50, "0.05": 90, "0.1": 100, "+Inf": 100})
    assert histogram_quantile(scrape, NAME, 0.5) == pytest.approx(0.02)
    assert histogram_quantile(scrape, NAME, 0.25) == pytest.approx(0.015)
    assert histogram_quantile(scrape, NAME, 0.7) == pytest.approx(0.02 + 0.03 * 0.5)
    assert histogram_quantile(scrape, NAME, 0.99) == pytest.approx(0.05 + 0.05 * 0.9)


def test_quantile_of_the_difference_between_two_scrapes() -> None:
    before = text({"0.01": 10, "0.02": 10, "0.05": 10, "0.1": 10, "+Inf": 10})
    after = text({"0.01": 10, "0.02": 10, "0.05": 110, "0.1": 110, "+Inf": 110})
    assert histogram_quantile(after, NAME, 0.5, before) == pytest.approx(0.035)


def test_empty_histogram_and_overflow_bucket() -> None:
    assert math.isnan(histogram_quantile(text({"0.1": 0, "+Inf": 0}), NAME, 0.5))
    # everything above the last finite bound reads as that bound (a lower limit)
    assert histogram_quantile(text({"0.1": 0, "+Inf": 5}), NAME, 0.5) == 0.1
