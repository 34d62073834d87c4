"""RecommendRequest validation: every rule names the field it checks."""

from __future__ import annotations

import re

from recstack.v1 import gateway_pb2

MAX_K = 100
"""Largest slate a Recommend call may ask for (the chain retrieves 200 candidates)."""
MAX_USER_ID_LEN = 128
MAX_ATTRIBUTE_VALUE_LEN = 256
MAX_EXCLUDE_ITEMS = 1000
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTES_BYTES = 4096  # keys and values together: the impression event (64 KiB) always fits
MAX_EXCLUDE_ITEM_LEN = 256
MAX_FORCE_VARIANT_LEN = 160  # EXPERIMENT/VARIANT
ATTRIBUTE_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class RequestError(ValueError):
    """An invalid RecommendRequest; ``field`` names the offending field."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def validate_request(request: gateway_pb2.RecommendRequest) -> None:
    """Raise RequestError for the first rule the request breaks."""
    if not request.user_id:
        raise RequestError("user_id", "user_id is required (1..128 characters)")
    if len(request.user_id) > MAX_USER_ID_LEN:
        raise RequestError(
            "user_id", f"user_id must be at most {MAX_USER_ID_LEN} characters, got {len(request.user_id)}"
        )
    if not 1 <= request.k <= MAX_K:
        raise RequestError("k", f"k must be between 1 and {MAX_K}, got {request.k}")
    context = request.context
    if len(context.attributes) > MAX_ATTRIBUTES:
        raise RequestError(
            "context.attributes",
            f"context.attributes holds at most {MAX_ATTRIBUTES} entries, got {len(context.attributes)}",
        )
    size = sum(len(k.encode()) + len(v.encode()) for k, v in context.attributes.items())
    if size > MAX_ATTRIBUTES_BYTES:
        raise RequestError(
            "context.attributes",
            f"context.attributes hold at most {MAX_ATTRIBUTES_BYTES} bytes of keys and values, got {size}",
        )
    for key, value in context.attributes.items():
        if not ATTRIBUTE_KEY.fullmatch(key):
            raise RequestError(
                "context.attributes",
                f"context.attributes key {key[:80]!r} is invalid: use 1..64 characters of [A-Za-z0-9_.-]",
            )
        if len(value) > MAX_ATTRIBUTE_VALUE_LEN:
            raise RequestError(
                "context.attributes",
                f"context.attributes[{key[:64]!r}] must be at most {MAX_ATTRIBUTE_VALUE_LEN} characters, "
                f"got {len(value)}",
            )
    if len(context.force_variant) > MAX_FORCE_VARIANT_LEN:
        raise RequestError(
            "context.force_variant",
            f"context.force_variant must be at most {MAX_FORCE_VARIANT_LEN} characters, "
            f"got {len(context.force_variant)}",
        )
    if len(context.exclude_items) > MAX_EXCLUDE_ITEMS:
        raise RequestError(
            "context.exclude_items",
            f"context.exclude_items holds at most {MAX_EXCLUDE_ITEMS} ids, got {len(context.exclude_items)}",
        )
    for i, item in enumerate(context.exclude_items):
        if not item:
            raise RequestError("context.exclude_items", f"context.exclude_items[{i}] is empty; remove it")
        if len(item) > MAX_EXCLUDE_ITEM_LEN:
            raise RequestError(
                "context.exclude_items",
                f"context.exclude_items[{i}] must be at most {MAX_EXCLUDE_ITEM_LEN} characters, "
                f"got {len(item)}",
            )
