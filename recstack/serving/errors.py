"""Errors raised by the serving cores (mapped to gRPC status codes by the servicers)."""

from __future__ import annotations

from collections.abc import Sequence


class UnknownItemError(KeyError, ValueError):
    """Candidate item ids that the loaded bundle does not know (gRPC: INVALID_ARGUMENT)."""

    def __init__(self, item_ids: Sequence[str], bundle_version: str = ""):
        self.item_ids = list(item_ids)
        shown = ", ".join(repr(x) for x in self.item_ids[:5])
        more = f" and {len(self.item_ids) - 5} more" if len(self.item_ids) > 5 else ""
        where = f" bundle {bundle_version}" if bundle_version else " the loaded bundle"
        super().__init__(
            f"unknown item ids {shown}{more}: not in{where}'s item map; send ids from the catalogue "
            "the bundle was trained on, or retrain the bundle"
        )

    def __str__(self) -> str:
        return str(self.args[0])


class UnknownModelError(ValueError):
    """A model name that the loaded bundle does not hold (gRPC: INVALID_ARGUMENT)."""
