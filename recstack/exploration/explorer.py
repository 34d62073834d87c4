"""One exploration decision per request, whatever the policy: the core the bandit service
(services/bandit) and the gateway's in-process bandit (``recstack.serving.stages.LocalBandit``)
both call.

``Explorer.explore`` validates the request, gathers what the named policy learns from and returns
``(SlateDecision, stale)``:

* ``thompson``: the candidates' Beta arms (global, and the segment's with a ``segment``) from an
  ``ArmCache``, then ``ThompsonSlatePolicy.select``;
* ``linucb``, ``lints``, ``linucb-hybrid`` (``CONTEXTUAL_POLICIES``, when a ``ContextualExplorer``
  is given): contexts built from the user's genre scores, arm state refreshed from Redis, the
  explored contexts recorded for the reward join (``recstack.exploration.online``).

Request rules (``PolicyInputError`` with a message naming the field, checked in this order):
``policy`` one of ``policies`` ("" = ``thompson``); ``k >= 1``; ``explore_slots >= 0`` (0 or None:
the policy's default); ``segment`` "" or a valid segment id (recstack/exploration/segments.py;
the contextual policies ignore it); candidate scores finite; then the policy's own checks (distinct
ids, ...), whose messages start with ``candidates:``. Documented behaviour instead of an error: no
candidates -> an empty slate; ``k`` larger than the candidates -> a slate of every candidate;
``explore_slots`` larger than the slate -> the whole slate is explored. ``stale``: some arm state
could not be read in time, the decision used the last state loaded (or the prior).
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence

from recstack.exploration.arms import ArmCache
from recstack.exploration.base import PolicyInputError, SlateDecision, SlateSizeError
from recstack.exploration.online import ContextualExplorer
from recstack.exploration.segments import is_valid_segment
from recstack.exploration.thompson import ThompsonSlatePolicy

# (policy name, items, scores, k, explore_slots, genre_scores, segment, request_id) -> (slate, stale)
_Decide = Callable[
    [str, Sequence[str], Sequence[float], int, "int | None", Mapping[str, float], str, str],
    Awaitable[tuple[SlateDecision, bool]],
]


class SegmentError(PolicyInputError):
    """``segment`` is not a valid segment id."""


class Explorer:
    """The policies a service offers, by name (see the module docstring).

    thompson: the Thompson policy and the ``ArmCache`` of its Beta arms (with a
    ``segment_reader`` for segment requests); contextual: the contextual policies (None: Thompson
    only).
    """

    def __init__(
        self, thompson: ThompsonSlatePolicy, arms: ArmCache, contextual: ContextualExplorer | None = None
    ):
        self.thompson = thompson
        self.arms = arms
        self.contextual = contextual
        self._decide: dict[str, _Decide] = {thompson.name: self._thompson}
        if contextual is not None:
            for name in contextual.policies:
                self._decide[name] = self._contextual

    @property
    def policies(self) -> tuple[str, ...]:
        """Policy names this explorer serves, ``thompson`` first."""
        return tuple(self._decide)

    async def explore(
        self,
        policy: str,
        items: Sequence[str],
        scores: Sequence[float],
        k: int,
        explore_slots: int | None = None,
        *,
        genre_scores: Mapping[str, float] | None = None,
        segment: str = "",
        request_id: str = "",
    ) -> tuple[SlateDecision, bool]:
        """(slate, stale) of one request; raises ``PolicyInputError`` (see the module docstring).

        policy: a name of ``policies`` ("" = thompson); items [C] / scores [C]: the upstream
        ranking, best first; explore_slots: None or 0 = the policy's default; genre_scores: the
        user's genre scores (contextual features); segment: the Thompson segment ("" = none);
        request_id: keys the recorded contexts of the explored items (contextual policies)."""
        name = policy or self.thompson.name
        decide = self._decide.get(name)
        if decide is None:
            names = ", ".join(self.policies)
            raise PolicyInputError(f"policy must be one of {names} (or empty), got {policy!r}")
        if k < 1:
            raise SlateSizeError(f"k must be >= 1, got {k}")
        if explore_slots is not None and explore_slots < 0:
            raise SlateSizeError(f"explore_slots must be >= 0 (0: service default), got {explore_slots}")
        if segment and not is_valid_segment(segment):
            raise SegmentError(
                f"segment {segment[:80]!r} is not a valid segment id: segment must be 1..64 characters "
                "of letters, digits, '_', '.', ':', '-'"
            )
        if not items:
            return SlateDecision.empty(), False
        for item, score in zip(items, scores, strict=True):
            if not math.isfinite(score):
                raise PolicyInputError(f"candidates: score of {item!r} is not finite ({score})")
        try:
            return await decide(
                name, items, scores, k, explore_slots or None, genre_scores or {}, segment, request_id
            )
        except PolicyInputError as exc:
            raise type(exc)(f"candidates: {exc}") from exc

    async def _thompson(
        self,
        policy: str,
        items: Sequence[str],
        scores: Sequence[float],
        k: int,
        explore_slots: int | None,
        genre_scores: Mapping[str, float],
        segment: str,
        request_id: str,
    ) -> tuple[SlateDecision, bool]:
        arms, segment_arms, stale = await self.arms.get_segmented(list(items), segment)
        decision = self.thompson.select(
            items, scores, k, arms, explore_slots=explore_slots, segment=segment, segment_arms=segment_arms
        )
        return decision, stale

    async def _contextual(
        self,
        policy: str,
        items: Sequence[str],
        scores: Sequence[float],
        k: int,
        explore_slots: int | None,
        genre_scores: Mapping[str, float],
        segment: str,
        request_id: str,
    ) -> tuple[SlateDecision, bool]:
        return await self.contextual.explore(
            policy, genre_scores, items, scores, k, explore_slots, request_id=request_id
        )
