"""Bandit.Explore: Thompson over an ArmCache, or LinUCB / LinTS over Redis LinUCB state.

Request rules (INVALID_ARGUMENT with a message naming the field): ``policy`` one of
``thompson`` (default when empty), ``linucb``, ``lints``; ``k >= 1``; ``explore_slots >= 0``
(0: the service default); candidate ids distinct; candidate scores finite (NaN/inf rejected);
genre scores finite (contextual policies). Documented behaviour instead of an error: no
candidates -> an empty slate; ``k`` larger than the candidates -> a slate of every candidate;
``explore_slots`` larger than the slate -> the whole slate is explored. The contextual policies
build their features themselves (``ContextBuilder``: genre scores, the catalogue's item genres,
the upstream score), so a request cannot carry features of the wrong size. The request id (gRPC
metadata ``x-request-id``, set by the gateway) keys the recorded contexts of the explored items.

``segment`` (optional; 1..64 characters of ``[A-Za-z0-9_.:-]``, else INVALID_ARGUMENT): Thompson
draws from the segment's arms with a prior borrowed from the global arms
(recstack/exploration/segments.py); the contextual policies ignore it.
"""

from __future__ import annotations

import math

import grpc

from recstack.exploration.arms import ArmCache
from recstack.exploration.base import PolicyInputError
from recstack.exploration.online import CONTEXTUAL_POLICIES, ContextualExplorer
from recstack.exploration.segments import is_valid_segment
from recstack.exploration.thompson import PolicyError, ThompsonSlatePolicy
from recstack.logging import current_request_id
from recstack.rpc.convert import scored_items
from recstack.rpc.servicer import abort_invalid
from recstack.v1 import bandit_pb2, bandit_pb2_grpc


class BanditServicer(bandit_pb2_grpc.BanditServicer):
    def __init__(
        self, policy: ThompsonSlatePolicy, arms: ArmCache, contextual: ContextualExplorer | None = None
    ):
        self.policy = policy
        self.arms = arms
        self.contextual = contextual

    @property
    def policies(self) -> tuple[str, ...]:
        return ("thompson", *(CONTEXTUAL_POLICIES if self.contextual is not None else ()))

    async def Explore(
        self, request: bandit_pb2.ExploreRequest, context: grpc.aio.ServicerContext
    ) -> bandit_pb2.ExploreResponse:
        policy = request.policy or "thompson"
        if policy not in self.policies:
            names = ", ".join(self.policies)
            await abort_invalid(context, f"policy must be one of {names} (or empty), got {policy!r}")
        if request.k < 1:
            await abort_invalid(context, f"k must be >= 1, got {request.k}")
        if request.explore_slots < 0:
            await abort_invalid(
                context, f"explore_slots must be >= 0 (0: service default), got {request.explore_slots}"
            )
        segment = request.segment
        if segment and not is_valid_segment(segment):
            await abort_invalid(
                context,
                "segment must be 1..64 characters of letters, digits, '_', '.', ':', '-', "
                f"got {segment[:80]!r}",
            )
        if not request.candidates:
            return bandit_pb2.ExploreResponse(policy=policy)
        items = [c.item_id for c in request.candidates]
        scores = [c.score for c in request.candidates]
        for item, score in zip(items, scores, strict=True):
            if not math.isfinite(score):
                await abort_invalid(context, f"candidates: score of {item!r} is not finite ({score})")
        slots = request.explore_slots or None
        if policy == "thompson":
            arms, segment_arms, stale = await self.arms.get_segmented(items, segment)
            try:
                chosen, out, props = self.policy.select(
                    items,
                    scores,
                    request.k,
                    arms,
                    explore_slots=slots,
                    segment=segment,
                    segment_arms=segment_arms,
                )
            except PolicyError as exc:
                await abort_invalid(context, f"candidates: {exc}")
        else:
            try:
                decision, stale = await self.contextual.explore(
                    policy,
                    request.user.genre_scores,
                    items,
                    scores,
                    request.k,
                    slots,
                    request_id=current_request_id(),
                )
            except PolicyInputError as exc:
                await abort_invalid(context, f"candidates: {exc}")
            chosen, out, props = decision.items, decision.scores, decision.propensities
        upstream = {c.item_id: c for c in request.candidates}
        reply = bandit_pb2.ExploreResponse(policy=policy, stale_state=stale)
        for msg in scored_items(chosen, out, propensities=props):
            msg.scores.update(upstream[msg.item_id].scores)
            reply.items.append(msg)
        return reply
