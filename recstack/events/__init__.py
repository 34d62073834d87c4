"""User events: the JSON schema v1 (schema.py) and the Kafka producer (producer.py)."""

from recstack.events.schema import (
    EVENT_TYPES,
    INTERACTION_TYPES,
    REASON_CODES,
    REWARD_TYPES,
    InvalidEvent,
    UserEvent,
    event_from_dict,
    event_to_json,
    new_event,
    parse_event,
)

__all__ = [
    "EVENT_TYPES",
    "INTERACTION_TYPES",
    "REASON_CODES",
    "REWARD_TYPES",
    "InvalidEvent",
    "UserEvent",
    "event_from_dict",
    "event_to_json",
    "new_event",
    "parse_event",
]
