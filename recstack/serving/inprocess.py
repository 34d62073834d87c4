"""In-process backends of the chain stages (no grpc): the serving cores in the gateway's process.

``InProcessStages(bundle)`` holds a Retriever, a Ranker and a Reranker built from one bundle and
hands out the retrieval, ranking and rerank backends of ``recstack.serving.stages``. Each backend
micro-batches concurrent requests into the core's batch method (``recstack.serving.batching``;
inline on the event loop by default, ``RECSTACK_INFERENCE=thread`` for a worker thread), as the
stage services do, so a small deployment (one
process, ``RECSTACK_STAGES=inprocess``), the demo and the tests run the same chain and the same
code as a split deployment. ``use(bundle)`` swaps all three cores at once (hot reload): a request
sees one bundle version in every in-process stage.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np

from recstack.features.types import UserFeatures
from recstack.serving.batching import MicroBatcher
from recstack.serving.stages import StageResult

log = logging.getLogger(__name__)

IN_PROCESS = "inprocess"


class InProcessStages:
    """The retrieval, ranking and rerank cores of one bundle, micro-batched (see the module docstring)."""

    def __init__(self, bundle: Any, max_batch: int = 64, max_queue: int = 512):
        self._setup(self.build(bundle), str(bundle.version), max_batch, max_queue)

    @classmethod
    def from_cores(
        cls, cores: dict[str, Any], version: str, max_batch: int = 64, max_queue: int = 512
    ) -> InProcessStages:
        """From cores already built (by :meth:`build`, e.g. off the event loop)."""
        self = cls.__new__(cls)
        self._setup(cores, version, max_batch, max_queue)
        return self

    def _setup(self, cores: dict[str, Any], version: str, max_batch: int, max_queue: int) -> None:
        self.cores: dict[str, Any] = {}
        self.version = ""
        self.swap(cores, version)
        self.batchers = {
            name: MicroBatcher(
                self._runner(name, method), f"inprocess-{name}", max_batch, max_queue, offload=False
            )
            for name, method in (
                ("retrieval", "retrieve_many"),
                ("ranking", "rank_many"),
                ("rerank", "rerank_many"),
            )
        }

    @staticmethod
    def build(bundle: Any) -> dict[str, Any]:
        """The three cores of ``bundle`` (slow: indexes, models; call it off the event loop)."""
        from recstack.serving.ranker import Ranker
        from recstack.serving.reranker import Reranker
        from recstack.serving.retriever import Retriever

        return {"retrieval": Retriever(bundle), "ranking": Ranker(bundle), "rerank": Reranker(bundle)}

    def swap(self, cores: dict[str, Any], version: str) -> None:
        """Use ``cores`` (from :meth:`build`) from the next batch on, all three together."""
        self.cores, self.version = cores, version
        log.info("in-process stages use bundle %s", version)

    def _runner(self, stage: str, method: str):
        def run(requests: list) -> list:
            core, version = self.cores[stage], self.version
            return [(r, version) for r in getattr(core, method)(requests)]

        return run

    @property
    def retrieval(self) -> InProcessRetrieval:
        return InProcessRetrieval(self.batchers["retrieval"])

    @property
    def ranking(self) -> InProcessRanking:
        return InProcessRanking(self.batchers["ranking"])

    @property
    def rerank(self) -> InProcessRerank:
        return InProcessRerank(self.batchers["rerank"])


class InProcessRetrieval:
    def __init__(self, batcher: MicroBatcher):
        self.batcher = batcher

    async def retrieve(self, user: UserFeatures, n: int, exclude: Collection[str]) -> StageResult:
        (ids, scores, components), version = await self.batcher((user, n, set(exclude)))
        return StageResult(list(ids), np.asarray(scores, np.float64), version, dict(components))


class InProcessRanking:
    def __init__(self, batcher: MicroBatcher):
        self.batcher = batcher

    async def rank(
        self,
        user: UserFeatures,
        items: Sequence[str],
        scores: np.ndarray,
        model: str,
        weights: Mapping[str, float] | None = None,
    ) -> StageResult:
        from recstack.serving.ranker import ranking_components

        (ids, combined, per_task), version = await self.batcher((user, list(items), model or None, weights))
        comps = ranking_components(combined, per_task)
        return StageResult(list(ids), np.asarray(combined, np.float64), version, comps)


class InProcessRerank:
    def __init__(self, batcher: MicroBatcher):
        self.batcher = batcher

    async def rerank(
        self,
        user: UserFeatures,
        items: Sequence[str],
        scores: np.ndarray,
        model: str,
        components: Mapping[str, np.ndarray] | None = None,
    ) -> StageResult:
        request = (user, list(items), scores, model or None, dict(components or {}))
        (ids, final), version = await self.batcher(request)
        return StageResult(list(ids), np.asarray(final, np.float64), version)
