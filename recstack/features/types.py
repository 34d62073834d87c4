"""The user's real-time features as every stage sees them."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class UserFeatures:
    """Real-time features of one user, read from Redis in one round trip.

    recent_items: item ids, most recent first (at most 50).
    genre_scores: genre -> EMA score (alpha 0.1).
    counters: event type -> count, plus "total" (view/click/like/purchase/rating only).
    last_active: unix seconds of the last event, 0.0 when unknown.
    consumed: every item the user interacted with that the stream keeps (the newest 1,000); the
        gateway never recommends them. Not sent to the stages (they get it as exclusions).
    """

    user_id: str
    recent_items: list[str] = field(default_factory=list)
    genre_scores: dict[str, float] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    last_active: float = 0.0
    consumed: list[str] = field(default_factory=list)

    @property
    def is_cold(self) -> bool:
        return not self.recent_items
