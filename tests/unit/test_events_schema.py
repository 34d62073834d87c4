"""Schema v1 validation: every reason code, round trips and new_event."""

from __future__ import annotations

import json

import pytest

from recstack.events import REASON_CODES, InvalidEvent, event_to_json, new_event, parse_event

NOW = 1_700_000_000.0


def base(**overrides: object) -> dict:
    obj = {
        "schema_version": 1,
        "event_id": "e1",
        "user_id": "u1",
        "item_id": "i1",
        "event_type": "click",
        "timestamp": NOW - 10,
        "request_id": "r1",
    }
    obj.update(overrides)
    return {k: v for k, v in obj.items() if v is not _DROP}


_DROP = object()


def raw(obj: object) -> bytes:
    return json.dumps(obj).encode()


def reason(data: bytes) -> str:
    with pytest.raises(InvalidEvent) as info:
        parse_event(data, now=NOW)
    return info.value.reason_code


def test_valid_click_parses() -> None:
    event = parse_event(raw(base(context={"device": "ios"})), now=NOW)
    assert (event.user_id, event.item_id, event.event_type, event.request_id) == ("u1", "i1", "click", "r1")
    assert event.timestamp == NOW - 10
    assert event.context == {"device": "ios"}
    assert event.is_interaction


def test_impression_round_trip() -> None:
    event = new_event(
        "u1",
        "impression",
        items=["a", "b"],
        positions=[0, 1],
        propensities=[0.5, 1.0],
        request_id="r9",
        variant="B",
        experiment_id="exp1",
        model_versions={"ranking": "v3"},
    )
    again = parse_event(event_to_json(event))
    assert again == event
    assert again.items == ("a", "b") and again.propensities == (0.5, 1.0)
    assert not again.is_interaction


def test_rating_round_trip_and_new_event_fills_ids() -> None:
    a = new_event("u1", "rating", "i1", rating=4.0)
    b = new_event("u1", "rating", "i1", rating=4.0)
    assert a.event_id != b.event_id and len(a.event_id) == 32
    assert parse_event(event_to_json(a)).rating == 4.0


def test_unknown_fields_are_ignored() -> None:
    assert parse_event(raw(base(extra_field=1)), now=NOW).event_id == "e1"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"{not json", "malformed_json"),
        (b"\xff\xfe", "malformed_json"),
        (raw([1, 2]), "malformed_json"),
        (raw(base(user_id=_DROP)), "missing_field"),
        (raw(base(event_id="")), "missing_field"),
        (raw(base(schema_version=_DROP)), "missing_field"),
        (raw(base(timestamp=_DROP)), "missing_field"),
        (raw(base(item_id=_DROP)), "missing_field"),
        (raw(base(event_type="rating")), "missing_field"),
        (raw(base(event_type="impression", item_id=_DROP)), "missing_field"),
        (raw(base(user_id=42)), "wrong_type"),
        (raw(base(timestamp="yesterday")), "wrong_type"),
        (raw(base(timestamp=True)), "wrong_type"),
        (raw(base(schema_version="1")), "wrong_type"),
        (raw(base(context={"a": 1})), "wrong_type"),
        (raw(base(event_type="impression", items=["a", 3])), "wrong_type"),
        (raw(base(event_type="teleport")), "unknown_event_type"),
        (raw(base(timestamp=NOW + 301)), "future_timestamp"),
        (raw(base(timestamp=(NOW - 10) * 1000)), "future_timestamp"),
        (raw(base(context={"pad": "x" * 70_000})), "too_large"),
        (raw(base(schema_version=2)), "unknown_schema_version"),
        (raw(base(timestamp=-1)), "invalid_value"),
        (raw(base(event_type="rating", rating=7)), "invalid_value"),
        (raw(base(rating=3)), "invalid_value"),
        (raw(base(items=["a"])), "invalid_value"),
        (raw(base(event_type="impression", items=["a", "b"], positions=[0])), "invalid_value"),
        (raw(base(event_type="impression", items=["a"], propensities=[0.0])), "invalid_value"),
    ],
)
def test_reason_codes(data: bytes, code: str) -> None:
    assert reason(data) == code


def test_every_reason_code_is_covered() -> None:
    params = test_reason_codes.pytestmark[0].args[1]
    assert {code for _, code in params} == set(REASON_CODES)


def test_future_timestamp_within_skew_is_accepted() -> None:
    assert parse_event(raw(base(timestamp=NOW + 299)), now=NOW).timestamp == NOW + 299


def test_invalid_event_message_names_the_field() -> None:
    with pytest.raises(InvalidEvent, match="user_id must be a string"):
        parse_event(raw(base(user_id=42)), now=NOW)


def test_new_event_validates() -> None:
    with pytest.raises(InvalidEvent) as info:
        new_event("u1", "click")
    assert info.value.reason_code == "missing_field"


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (None, "malformed_json"),  # a tombstone record
        (b"[" * 50_000, "malformed_json"),  # deeper than Python's recursion limit, under 64 KiB
        (b'{"schema_version": ' + b"9" * 5000 + b"}", "malformed_json"),  # int-conversion limit
        (raw(base(timestamp=10**400)), "invalid_value"),  # overflows a float
        (raw(base(user_id="\ud800")), "invalid_value"),  # lone surrogate: no UTF-8 for Redis
        (raw(base(context={"k": "\udfff"})), "invalid_value"),
    ],
)
def test_hostile_input_is_an_invalid_event_not_a_crash(data: bytes | None, code: str) -> None:
    assert reason(data) == code  # type: ignore[arg-type]


def test_non_ascii_text_is_accepted() -> None:
    event = parse_event(raw(base(user_id="ユーザー", item_id="é\u00e8\U0001f600")), now=NOW)
    assert event.user_id == "ユーザー" and event.item_id.endswith("\U0001f600")
