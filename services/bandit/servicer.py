"""Bandit.Explore over ``recstack.exploration.explorer.Explorer``: Thompson over an ArmCache, or
LinUCB / LinTS / hybrid LinUCB over Redis LinUCB state.

Request rules are the Explorer's (its module docstring); a ``PolicyInputError`` becomes
INVALID_ARGUMENT with its message, which names the field: ``policy`` one of the explorer's
policies (``thompson`` when empty); ``k >= 1``; ``explore_slots >= 0`` (0: the service default);
``segment`` "" or 1..64 characters of ``[A-Za-z0-9_.:-]`` (Thompson draws from the segment's arms
with a prior borrowed from the global arms, recstack/exploration/segments.py; the contextual
policies ignore it); candidate scores finite; candidate ids distinct; genre scores finite
(contextual policies). Documented behaviour instead of an error: no candidates -> an empty slate;
``k`` larger than the candidates -> a slate of every candidate; ``explore_slots`` larger than the
slate -> the whole slate is explored. The contextual policies build their features themselves
(``ContextBuilder``: genre scores, the catalogue's item genres, the upstream score), so a request
cannot carry features of the wrong size. The request id (gRPC metadata ``x-request-id``, set by
the gateway) keys the recorded contexts of the explored items.
"""

from __future__ import annotations

import grpc

from recstack.exploration.arms import ArmCache
from recstack.exploration.base import PolicyInputError
from recstack.exploration.explorer import Explorer
from recstack.exploration.online import ContextualExplorer
from recstack.exploration.thompson import ThompsonSlatePolicy
from recstack.logging import current_request_id
from recstack.rpc.convert import scored_items
from recstack.rpc.servicer import abort_invalid
from recstack.v1 import bandit_pb2, bandit_pb2_grpc


class BanditServicer(bandit_pb2_grpc.BanditServicer):
    """Explore over ``Explorer(policy, arms, contextual)`` (contextual None: Thompson only)."""

    def __init__(
        self, policy: ThompsonSlatePolicy, arms: ArmCache, contextual: ContextualExplorer | None = None
    ):
        self.explorer = Explorer(policy, arms, contextual)

    @property
    def policies(self) -> tuple[str, ...]:
        return self.explorer.policies

    async def Explore(
        self, request: bandit_pb2.ExploreRequest, context: grpc.aio.ServicerContext
    ) -> bandit_pb2.ExploreResponse:
        policy = request.policy or "thompson"
        try:
            decision, stale = await self.explorer.explore(
                policy,
                [c.item_id for c in request.candidates],
                [c.score for c in request.candidates],
                request.k,
                request.explore_slots,
                genre_scores=request.user.genre_scores,
                segment=request.segment,
                request_id=current_request_id(),
            )
        except PolicyInputError as exc:
            await abort_invalid(context, str(exc))
        reply = bandit_pb2.ExploreResponse(policy=policy, stale_state=stale)
        if not decision.items:
            return reply
        upstream = {c.item_id: c for c in request.candidates}
        for msg in scored_items(decision.items, decision.scores, propensities=decision.propensities):
            msg.scores.update(upstream[msg.item_id].scores)
            reply.items.append(msg)
        return reply
