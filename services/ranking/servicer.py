"""Ranking.Rank -> Ranker.rank."""

from __future__ import annotations

import logging
from typing import Any

import grpc

from recstack.rpc.convert import scored_items, user_from_proto
from recstack.rpc.loading import abort_invalid, abort_not_loaded, is_client_error
from recstack.v1 import ranking_pb2, ranking_pb2_grpc

log = logging.getLogger(__name__)

RANKING_MODELS = ("multitask", "ncf")


def task_score_name(task: str) -> str:
    """ "click" -> "p_click" (the name in ScoredItem.scores)."""
    return task if task.startswith("p_") else f"p_{task}"


class RankingServicer(ranking_pb2_grpc.RankingServicer):
    """core: a ``Ranker`` (``rank(user, candidates, model, weights) -> (ids, scores, per_task)``)."""

    def __init__(self, core: Any = None, version: str = ""):
        self.core = core
        self.version = version

    async def Rank(
        self, request: ranking_pb2.RankRequest, context: grpc.aio.ServicerContext
    ) -> ranking_pb2.RankResponse:
        if self.core is None:
            await abort_not_loaded(context, "ranking")
        model = request.model or "multitask"
        if model not in RANKING_MODELS:
            await abort_invalid(
                context, f"model must be one of {list(RANKING_MODELS)} (or empty), got {model!r}"
            )
        if not request.candidates:
            return ranking_pb2.RankResponse(model_version=self.version)
        candidates = [c.item_id for c in request.candidates]
        if any(not c for c in candidates):
            await abort_invalid(context, "candidates[].item_id must not be empty")
        weights = dict(request.task_weights) or None
        user = user_from_proto(request.user)
        try:
            ids, scores, per_task = self.core.rank(user, candidates, model, weights)
        except Exception as exc:
            if is_client_error(exc):
                await abort_invalid(context, str(exc))
            log.exception("Rank failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"ranking failed: {type(exc).__name__}")
        components = {task_score_name(t): v for t, v in (per_task or {}).items()}
        return ranking_pb2.RankResponse(
            items=scored_items(ids, scores, components), model_version=self.version
        )
