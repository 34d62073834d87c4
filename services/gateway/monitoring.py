"""Gateway product metrics (Prometheus), after the seed's RecommenderMonitoring.

Per request (``GatewayMonitor.observe``):

- ``recstack_gateway_request_latency_seconds{outcome}``: whole Recommend latency (ok, degraded,
  error, invalid); the per-stage histogram is ``recstack_gateway_stage_latency_seconds`` (chain.py);
- ``recstack_gateway_requests_total{experiment,variant,outcome}``: once per experiment the request
  is in; holdout users count as ``experiment="", variant="holdout"``, users in no experiment as
  ``variant="none"``; QA requests (force_variant) as ``outcome="qa"`` next to their real outcome;
- ``recstack_gateway_recommendations``: items per reply (histogram);
- ``recstack_gateway_intra_list_diversity``: genre-Jaccard intra-list diversity of each reply
  (mean pairwise 1 - Jaccard, in [0, 1]; histogram: the alert uses sum / count over an hour);
- ``recstack_gateway_catalog_coverage``: distinct items recommended over the sliding window
  (``RECSTACK_COVERAGE_WINDOW_S``, default 3600 s, in 60 s buckets) / catalogue size (gauge);
- ``recstack_gateway_freshness_seconds``: mean age of the recommended items per reply (histogram).
  Age = now - the item's ``created_at`` (unix s) from the bundle's ``catalog.json`` map
  ``"created_at": {item_id: ts}`` (``Bundle.created_at``; written by ``recstack train`` from the
  dataset's item ``created_at``: synthetic item dates, MovieLens release date or title year, a CSV
  ``created_at`` column). Items without a created_at are left out; a reply with none is not
  observed and counts in ``recstack_gateway_freshness_unknown_total`` (e.g. bundles trained
  before catalog.json had the field, or on a CSV without dates);
- fallback usage: ``recstack_gateway_fallbacks_total{kind}`` (chain.py: popularity,
  catalog_popularity, fill) and ``recstack_gateway_stage_skipped_total{stage}``.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping, Sequence

from prometheus_client import Counter, Gauge, Histogram

from recstack.diversity.catalog import CatalogSimilarity

REQUESTS = Counter(
    "recstack_gateway_requests",
    "Recommend requests by experiment, variant and outcome (ok, degraded, error, invalid, qa).",
    ["experiment", "variant", "outcome"],
)
REQUEST_LATENCY = Histogram(
    "recstack_gateway_request_latency_seconds",
    "Whole Recommend latency, by outcome (ok, degraded, error, invalid).",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5),
)
RECOMMENDATIONS = Histogram(
    "recstack_gateway_recommendations",
    "Items returned per Recommend reply.",
    buckets=(0, 1, 5, 10, 20, 50, 100),
)
DIVERSITY = Histogram(
    "recstack_gateway_intra_list_diversity",
    "Genre-Jaccard intra-list diversity of each reply (mean pairwise 1 - Jaccard).",
    buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0),
)
COVERAGE = Gauge(
    "recstack_gateway_catalog_coverage",
    "Distinct recommended items over the sliding window / catalogue size.",
)
FRESHNESS = Histogram(
    "recstack_gateway_freshness_seconds",
    "Mean age (now - catalog created_at) of the items of one reply.",
    buckets=(3600, 6 * 3600, 86400, 7 * 86400, 30 * 86400, 90 * 86400, 365 * 86400, 5 * 365 * 86400),
)
FRESHNESS_UNKNOWN = Counter(
    "recstack_gateway_freshness_unknown",
    "Replies whose items have no created_at in the catalogue (freshness not observed).",
)


class CoverageWindow:
    """Distinct items seen over the last ``window_s`` seconds, kept in ``bucket_s`` buckets."""

    def __init__(self, window_s: float = 3600.0, bucket_s: float = 60.0):
        if window_s <= 0 or bucket_s <= 0:
            raise ValueError(f"window_s and bucket_s must be > 0, got {window_s}, {bucket_s}")
        self.window_s = window_s
        self.bucket_s = bucket_s
        self._buckets: deque[tuple[float, set[str]]] = deque()
        self._distinct: int | None = None

    def add(self, items: Sequence[str], now: float) -> None:
        start = now - now % self.bucket_s
        if not self._buckets or self._buckets[-1][0] != start:
            self._buckets.append((start, set()))
            self._distinct = None
        bucket = self._buckets[-1][1]
        before = len(bucket)
        bucket.update(items)
        if len(bucket) != before:
            self._distinct = None
        self._expire(now)

    def _expire(self, now: float) -> None:
        while self._buckets and self._buckets[0][0] + self.bucket_s <= now - self.window_s:
            self._buckets.popleft()
            self._distinct = None

    def distinct(self, now: float) -> int:
        self._expire(now)
        if self._distinct is None:
            seen: set[str] = set()
            for _, bucket in self._buckets:
                seen |= bucket
            self._distinct = len(seen)
        return self._distinct


class GatewayMonitor:
    """Observes every reply; ``use_catalog`` switches to a new bundle's catalogue."""

    def __init__(
        self,
        catalog_size: int,
        similarity: CatalogSimilarity | None = None,
        created_at: Mapping[str, float] | None = None,
        coverage_window_s: float = 3600.0,
        clock: object = time.time,
    ):
        self.catalog_size = max(int(catalog_size), 1)
        self.similarity = similarity
        self.created_at = dict(created_at or {})
        self.coverage = CoverageWindow(coverage_window_s, min(60.0, coverage_window_s))
        self._clock = clock
        self._last_coverage = 0.0

    def use_catalog(
        self, catalog_size: int, similarity: CatalogSimilarity | None, created_at: Mapping[str, float]
    ) -> None:
        self.catalog_size = max(int(catalog_size), 1)
        self.similarity = similarity
        self.created_at = dict(created_at)

    def observe(self, items: Sequence[str]) -> dict[str, float]:
        """Record one reply's list; returns the values observed (for tests and logs)."""
        now = float(self._clock())  # type: ignore[operator]
        out: dict[str, float] = {"n": float(len(items))}
        RECOMMENDATIONS.observe(len(items))
        if self.similarity is not None and len(items) >= 2:
            out["diversity"] = self.similarity.list_diversity(items)
            DIVERSITY.observe(out["diversity"])
        self.coverage.add(items, now)
        # The union over buckets costs O(distinct items): refresh the gauge at most once a second.
        if now - self._last_coverage >= 1.0:
            self._last_coverage = now
            COVERAGE.set(self.coverage.distinct(now) / self.catalog_size)
        ages = [now - self.created_at[x] for x in items if x in self.created_at]
        if ages:
            out["freshness_s"] = sum(ages) / len(ages)
            FRESHNESS.observe(out["freshness_s"])
        elif items:
            FRESHNESS_UNKNOWN.inc()
        return out
