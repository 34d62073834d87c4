"""Credentials a client of the gateway sends (the CLI's demo and bench, scripts): from the environment.

RECSTACK_CLIENT_API_KEY -> ``x-api-key`` metadata; RECSTACK_CLIENT_TOKEN (a JWT) ->
``authorization: Bearer <token>``. Neither set: no credentials (a gateway with
RECSTACK_AUTH_MODE=none). TLS of the channel: recstack/rpc/tls.py.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

API_KEY_ENV = "RECSTACK_CLIENT_API_KEY"
TOKEN_ENV = "RECSTACK_CLIENT_TOKEN"


def caller_metadata(environ: Mapping[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    """The metadata carrying this client's credentials (empty when none are configured)."""
    environ = os.environ if environ is None else environ
    out: list[tuple[str, str]] = []
    if environ.get(API_KEY_ENV):
        out.append(("x-api-key", environ[API_KEY_ENV]))
    if environ.get(TOKEN_ENV):
        out.append(("authorization", f"Bearer {environ[TOKEN_ENV]}"))
    return tuple(out)
