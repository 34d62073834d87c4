"""JSON-lines logging with a per-request id held in a contextvar.

Every record is one JSON object: ``ts``, ``severity``, ``logger``, ``message``, ``request_id``
(empty outside a request) and ``exception`` when one is attached. The gRPC interceptor in
``recstack.rpc.server`` sets the request id for the duration of each call.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from contextvars import ContextVar, Token

request_id_var: ContextVar[str] = ContextVar("recstack_request_id", default="")


def new_request_id() -> str:
    """A fresh request id (32 hex chars)."""
    return uuid.uuid4().hex


def set_request_id(request_id: str) -> Token[str]:
    """Set the current request id; pass the returned token to ``reset_request_id``."""
    return request_id_var.set(request_id)


def reset_request_id(token: Token[str]) -> None:
    request_id_var.reset(token)


def current_request_id() -> str:
    return request_id_var.get()


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line (severity, logger, message, request_id, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "severity": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": request_id_var.get(),
        }
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            payload.update(extra)
        if record.exc_info:
            payload["exception"] = self.formatException(record.exc_info)
        return json.dumps(payload, default=str)


def configure_logging(level: str | int = "INFO") -> None:
    """Send every log record to stderr as a JSON line. Idempotent."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_recstack_json", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler._recstack_json = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
