"""The JSON user-event schema, version 1.

Every message on the ``user-events`` topic is one UTF-8 JSON object (key = user_id); this module
is the schema's one definition:

| field          | type              | rule                                                           |
|----------------|-------------------|----------------------------------------------------------------|
| schema_version | int               | required, must be 1                                            |
| event_id       | str               | required, non-empty; the idempotency key (applied once)        |
| user_id        | str               | required, non-empty                                            |
| item_id        | str               | required for view/click/like/purchase/rating, else optional    |
| event_type     | str               | impression, view, click, like, purchase, rating,               |
|                |                   | session_start, session_end                                     |
| timestamp      | number            | unix seconds, >= 0, at most now + 5 min                        |
| request_id     | str               | optional; the Recommend request that served the item           |
| rating         | number            | required for rating events (0..5), not allowed otherwise       |
| context        | {str: str}        | optional                                                       |
| items          | [str]             | impression only, required and non-empty there                  |
| positions      | [int]             | impression only, optional, same length as items, >= 0          |
| propensities   | [number]          | impression only, optional, same length as items, in (0, 1]     |
| variant        | str               | optional (A/B variant that served the request)                 |
| experiment_id  | str               | optional                                                       |
| model_versions | {str: str}        | optional (stage -> bundle version)                             |

Unknown fields are ignored (forward compatibility inside version 1). A message larger than 64 KiB
is rejected before decoding. Invalid input raises :class:`InvalidEvent` whose ``reason_code`` is
one of :data:`REASON_CODES` (the dead-letter topic and the metrics use it).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

SCHEMA_VERSION = 1
MAX_EVENT_BYTES = 64 * 1024
MAX_CLOCK_SKEW_S = 300.0

INTERACTION_TYPES = frozenset({"view", "click", "like", "purchase", "rating"})
REWARD_TYPES = frozenset({"click", "like", "purchase"})
EVENT_TYPES = INTERACTION_TYPES | {"impression", "session_start", "session_end"}

REASON_CODES = (
    "malformed_json",
    "missing_field",
    "wrong_type",
    "unknown_event_type",
    "future_timestamp",
    "too_large",
    "unknown_schema_version",
    "invalid_value",
)


class InvalidEvent(ValueError):
    """An event that does not follow schema v1. ``reason_code`` is one of REASON_CODES."""

    def __init__(self, reason_code: str, message: str) -> None:
        if reason_code not in REASON_CODES:
            raise ValueError(f"unknown reason code {reason_code!r}; use one of {REASON_CODES}")
        super().__init__(f"{reason_code}: {message}")
        self.reason_code = reason_code
        self.message = message


@dataclass(frozen=True)
class UserEvent:
    """One validated user event (schema v1). Lists are tuples; maps are plain dicts."""

    event_id: str
    user_id: str
    event_type: str
    timestamp: float
    item_id: str = ""
    request_id: str = ""
    rating: float | None = None
    context: dict[str, str] = field(default_factory=dict)
    items: tuple[str, ...] = ()
    positions: tuple[int, ...] = ()
    propensities: tuple[float, ...] = ()
    variant: str = ""
    experiment_id: str = ""
    model_versions: dict[str, str] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    @property
    def is_interaction(self) -> bool:
        """True for view/click/like/purchase/rating (events that touch recent items and genres)."""
        return self.event_type in INTERACTION_TYPES

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of this event; optional fields that are empty are left out."""
        out: dict[str, Any] = {
            "schema_version": self.schema_version,
            "event_id": self.event_id,
            "user_id": self.user_id,
            "event_type": self.event_type,
            "timestamp": self.timestamp,
        }
        optional: dict[str, Any] = {
            "item_id": self.item_id,
            "request_id": self.request_id,
            "context": self.context,
            "items": list(self.items),
            "positions": list(self.positions),
            "propensities": list(self.propensities),
            "variant": self.variant,
            "experiment_id": self.experiment_id,
            "model_versions": self.model_versions,
        }
        out.update({k: v for k, v in optional.items() if v})
        if self.rating is not None:
            out["rating"] = self.rating
        return out


def event_to_json(event: UserEvent) -> bytes:
    """Serialise an event to compact UTF-8 JSON (the wire format of the events topic)."""
    return json.dumps(event.to_dict(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_event(raw: bytes | None, now: float | None = None) -> UserEvent:
    """Decode and validate one message of the events topic.

    ``now`` (unix seconds, default the wall clock) bounds the timestamp: events more than five
    minutes in the future are rejected. Raises InvalidEvent.
    """
    if raw is None:
        raise InvalidEvent("malformed_json", "event has no value (a null / tombstone record)")
    if len(raw) > MAX_EVENT_BYTES:
        raise InvalidEvent(
            "too_large", f"event is {len(raw)} bytes; the limit is {MAX_EVENT_BYTES} bytes (64 KiB)"
        )
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError, UnicodeDecodeError and integers longer than Python's
        # int-conversion limit; RecursionError deeply nested arrays/objects (both fit in 64 KiB).
        raise InvalidEvent("malformed_json", f"event is not valid UTF-8 JSON: {exc}") from exc
    if not isinstance(obj, dict):
        raise InvalidEvent("malformed_json", f"event must be a JSON object, got {type(obj).__name__}")
    return event_from_dict(obj, now=now)


def event_from_dict(obj: Mapping[str, Any], now: float | None = None) -> UserEvent:
    """Validate a decoded JSON object and build the UserEvent (see the module table)."""
    now = time.time() if now is None else now
    if "schema_version" not in obj:
        raise InvalidEvent("missing_field", "schema_version is required (use 1)")
    version = obj["schema_version"]
    if not _is_int(version):
        raise InvalidEvent("wrong_type", f"schema_version must be an integer, got {_tname(version)}")
    if version != SCHEMA_VERSION:
        raise InvalidEvent(
            "unknown_schema_version", f"schema_version {version} is not supported; this reader knows 1"
        )
    event_id = _required_str(obj, "event_id")
    user_id = _required_str(obj, "user_id")
    event_type = _required_str(obj, "event_type")
    if event_type not in EVENT_TYPES:
        raise InvalidEvent(
            "unknown_event_type", f"event_type {event_type!r} is not one of {sorted(EVENT_TYPES)}"
        )
    if "timestamp" not in obj:
        raise InvalidEvent("missing_field", "timestamp (unix seconds) is required")
    timestamp = _number(obj["timestamp"], "timestamp")
    if timestamp < 0:
        raise InvalidEvent("invalid_value", f"timestamp must be unix seconds >= 0, got {timestamp}")
    if timestamp > now + MAX_CLOCK_SKEW_S:
        raise InvalidEvent(
            "future_timestamp",
            f"timestamp {timestamp} is {timestamp - now:.0f} s in the future"
            f" (limit {MAX_CLOCK_SKEW_S:.0f} s); send unix seconds, not milliseconds",
        )
    item_id = _optional_str(obj, "item_id")
    if event_type in INTERACTION_TYPES and not item_id:
        raise InvalidEvent("missing_field", f"item_id is required for {event_type} events")

    rating: float | None = None
    if obj.get("rating") is not None:
        if event_type != "rating":
            raise InvalidEvent("invalid_value", f"rating is only allowed on rating events, not {event_type}")
        rating = _number(obj["rating"], "rating")
        if not 0.0 <= rating <= 5.0:
            raise InvalidEvent("invalid_value", f"rating must be within 0..5, got {rating}")
    elif event_type == "rating":
        raise InvalidEvent("missing_field", "rating (0..5) is required for rating events")

    items = tuple(_str_list(obj, "items"))
    positions = tuple(_list(obj, "positions", _is_int, "integers"))
    propensities = tuple(float(p) for p in _list(obj, "propensities", _is_number, "numbers"))
    if event_type == "impression":
        if not items:
            raise InvalidEvent("missing_field", "items (the served slate) is required for impression events")
        for name, values in (("positions", positions), ("propensities", propensities)):
            if values and len(values) != len(items):
                raise InvalidEvent(
                    "invalid_value", f"{name} has {len(values)} entries but items has {len(items)}"
                )
        if any(p < 0 for p in positions):
            raise InvalidEvent("invalid_value", "positions must be >= 0")
        if any(not (0.0 < p <= 1.0) or math.isnan(p) for p in propensities):
            raise InvalidEvent("invalid_value", "propensities must be within (0, 1]")
    elif items or positions or propensities:
        raise InvalidEvent("invalid_value", "items/positions/propensities are only allowed on impressions")

    return UserEvent(
        event_id=event_id,
        user_id=user_id,
        event_type=event_type,
        timestamp=timestamp,
        item_id=item_id,
        request_id=_optional_str(obj, "request_id"),
        rating=rating,
        context=_str_map(obj, "context"),
        items=items,
        positions=positions,
        propensities=propensities,
        variant=_optional_str(obj, "variant"),
        experiment_id=_optional_str(obj, "experiment_id"),
        model_versions=_str_map(obj, "model_versions"),
    )


def new_event(
    user_id: str,
    event_type: str,
    item_id: str = "",
    *,
    timestamp: float | None = None,
    event_id: str | None = None,
    rating: float | None = None,
    request_id: str = "",
    context: Mapping[str, str] | None = None,
    items: Sequence[str] = (),
    positions: Sequence[int] = (),
    propensities: Sequence[float] = (),
    variant: str = "",
    experiment_id: str = "",
    model_versions: Mapping[str, str] | None = None,
) -> UserEvent:
    """Build a validated event, filling event_id (uuid4 hex) and timestamp (now). Raises InvalidEvent."""
    now = time.time()
    obj: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": event_id or uuid.uuid4().hex,
        "user_id": user_id,
        "event_type": event_type,
        "timestamp": now if timestamp is None else timestamp,
        "item_id": item_id,
        "request_id": request_id,
        "rating": rating,
        "context": dict(context or {}),
        "items": list(items),
        "positions": list(positions),
        "propensities": list(propensities),
        "variant": variant,
        "experiment_id": experiment_id,
        "model_versions": dict(model_versions or {}),
    }
    return event_from_dict(obj, now=now)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _tname(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _number(value: Any, name: str) -> float:
    if not _is_number(value):
        raise InvalidEvent("wrong_type", f"{name} must be a number, got {_tname(value)}")
    try:
        out = float(value)
    except OverflowError as exc:  # an integer beyond the float range
        raise InvalidEvent("invalid_value", f"{name} is out of range: {exc}") from exc
    if not math.isfinite(out):
        raise InvalidEvent("invalid_value", f"{name} must be finite, got {out}")
    return out


def _check_text(value: str, name: str) -> str:
    """JSON escapes can smuggle lone UTF-16 surrogates ("\\ud800") into a str that has no UTF-8
    form: Redis keys and the writer's Lua payload could not carry it, so reject it here."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidEvent("invalid_value", f"{name} is not valid Unicode text: {exc}") from exc
    return value


def _required_str(obj: Mapping[str, Any], name: str) -> str:
    if name not in obj or obj[name] is None:
        raise InvalidEvent("missing_field", f"{name} is required")
    value = obj[name]
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"{name} must be a string, got {_tname(value)}")
    if not value:
        raise InvalidEvent("missing_field", f"{name} must not be empty")
    return _check_text(value, name)


def _optional_str(obj: Mapping[str, Any], name: str) -> str:
    value = obj.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidEvent("wrong_type", f"{name} must be a string, got {_tname(value)}")
    return _check_text(value, name)


def _list(obj: Mapping[str, Any], name: str, check: Any, what: str) -> list[Any]:
    value = obj.get(name)
    if value is None:
        return []
    if not isinstance(value, list) or not all(check(v) for v in value):
        raise InvalidEvent("wrong_type", f"{name} must be a list of {what}")
    return value


def _str_list(obj: Mapping[str, Any], name: str) -> list[str]:
    values = _list(obj, name, lambda v: isinstance(v, str), "strings")
    if any(not v for v in values):
        raise InvalidEvent("invalid_value", f"{name} must not contain empty strings")
    for v in values:
        _check_text(v, name)
    return values


def _str_map(obj: Mapping[str, Any], name: str) -> dict[str, str]:
    value = obj.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise InvalidEvent("wrong_type", f"{name} must be an object of string -> string")
    for k, v in value.items():
        _check_text(k, name)
        _check_text(v, name)
    return dict(value)
