from __future__ import annotations

import pytest

from recstack.v1 import gateway_pb2
from services.gateway.validation import MAX_K, RequestError, validate_request


def req(user_id: str = "u1", k: int = 10, **context: object) -> gateway_pb2.RecommendRequest:
    return gateway_pb2.RecommendRequest(user_id=user_id, k=k, context=gateway_pb2.RecommendContext(**context))


def test_valid_request_passes() -> None:
    validate_request(req(attributes={"device": "ios", "page.home_v-2": "x" * 256}, exclude_items=["a"]))


@pytest.mark.parametrize(
    ("request_", "field", "message"),
    [
        (req(user_id=""), "user_id", "user_id is required"),
        (req(user_id="x" * 129), "user_id", "at most 128 characters, got 129"),
        (req(k=0), "k", "k must be between 1 and 100, got 0"),
        (req(k=-3), "k", "got -3"),
        (req(k=MAX_K + 1), "k", "got 101"),
        (req(attributes={"bad key": "v"}), "context.attributes", "key 'bad key' is invalid"),
        (req(attributes={"k" * 65: "v"}), "context.attributes", "is invalid"),
        (req(attributes={"ok": "v" * 257}), "context.attributes", "at most 256 characters"),
        (req(exclude_items=["a", ""]), "context.exclude_items", "context.exclude_items[1] is empty"),
    ],
)
def test_invalid_requests_name_the_field(
    request_: gateway_pb2.RecommendRequest, field: str, message: str
) -> None:
    with pytest.raises(RequestError, match=message.replace("[", r"\[").replace("]", r"\]")) as info:
        validate_request(request_)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"attributes": {f"k{i}": "v" for i in range(33)}}, "at most 32 entries, got 33"),
        ({"attributes": {f"k{i}": "v" * 250 for i in range(20)}}, "at most 4096 bytes"),
        ({"exclude_items": ["x" * 300]}, "exclude_items[0] must be at most 256 characters"),
        ({"force_variant": "v" * 10_000}, "force_variant must be at most 160 characters, got 10000"),
    ],
)
def test_unbounded_requests_are_refused_naming_the_limit(context: dict, message: str) -> None:
    from services.gateway.validation import RequestError, validate_request

    request = gateway_pb2.RecommendRequest(user_id="u1", k=3, context=gateway_pb2.RecommendContext(**context))
    with pytest.raises(RequestError) as info:
        validate_request(request)
    assert message in str(info.value) and len(str(info.value)) < 300
