"""Bandit.Explore -> ThompsonSlatePolicy.select over arms from an ArmCache (Redis)."""

from __future__ import annotations

import grpc

from recstack.exploration.arms import ArmCache
from recstack.exploration.thompson import PolicyError, ThompsonSlatePolicy
from recstack.rpc.convert import scored_items
from recstack.rpc.loading import abort_invalid
from recstack.v1 import bandit_pb2, bandit_pb2_grpc

POLICIES = ("thompson",)


class BanditServicer(bandit_pb2_grpc.BanditServicer):
    def __init__(self, policy: ThompsonSlatePolicy, arms: ArmCache):
        self.policy = policy
        self.arms = arms

    async def Explore(
        self, request: bandit_pb2.ExploreRequest, context: grpc.aio.ServicerContext
    ) -> bandit_pb2.ExploreResponse:
        policy = request.policy or "thompson"
        if policy == "linucb":
            await context.abort(
                grpc.StatusCode.UNIMPLEMENTED, "policy 'linucb' is not served yet; use 'thompson' (or empty)"
            )
        if policy not in POLICIES:
            await abort_invalid(context, f"policy must be 'thompson' or 'linucb' (or empty), got {policy!r}")
        if request.k < 1:
            await abort_invalid(context, f"k must be >= 1, got {request.k}")
        if request.explore_slots < 0:
            await abort_invalid(
                context, f"explore_slots must be >= 0 (0: service default), got {request.explore_slots}"
            )
        if not request.candidates:
            return bandit_pb2.ExploreResponse(policy=policy)
        items = [c.item_id for c in request.candidates]
        scores = [c.score for c in request.candidates]
        arms, stale = await self.arms.get(items)
        try:
            chosen, out, props = self.policy.select(
                items, scores, request.k, arms, explore_slots=request.explore_slots or None
            )
        except PolicyError as exc:
            await abort_invalid(context, f"candidates: {exc}")
        upstream = {c.item_id: c for c in request.candidates}
        reply = bandit_pb2.ExploreResponse(policy=policy, stale_state=stale)
        for msg in scored_items(chosen, out, propensities=props):
            msg.scores.update(upstream[msg.item_id].scores)
            reply.items.append(msg)
        return reply
