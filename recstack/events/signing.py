"""Per-producer event signatures: HMAC-SHA256 of the record value, in the record's headers.

Kafka ACLs decide who may write the events topic; signatures let the stream reject events that a
principal with write access did not produce as one of the known producers (a forged or replayed-
with-changes event), and record which producer sent each event.

| variable                    | meaning                                                            |
|-----------------------------|--------------------------------------------------------------------|
| RECSTACK_EVENT_KEYS_FILE    | YAML/JSON ``{producers: {ID: SECRET, ...}}`` (SECRET: >= 32 chars)  |
| RECSTACK_EVENT_PRODUCER_ID  | the ID this process signs as (gateway, `recstack events produce`) |

The stream (feature_stream) with RECSTACK_EVENT_KEYS_FILE set verifies every record: a record
without the headers, with an unknown producer or a wrong signature is dead-lettered with reason
``unauthenticated`` and never reaches Redis. A producer with both variables set signs what it sends
(its keys file need only hold its own key). Neither set: nothing is signed or checked.

Headers: ``recstack-producer: ID`` and ``recstack-signature: hex(HMAC-SHA256(SECRET, value))``.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from recstack.config_files import read_setting_yaml

KEYS_FILE_ENV = "RECSTACK_EVENT_KEYS_FILE"
PRODUCER_ID_ENV = "RECSTACK_EVENT_PRODUCER_ID"
PRODUCER_HEADER = "recstack-producer"
SIGNATURE_HEADER = "recstack-signature"
MIN_SECRET_CHARS = 32
UNAUTHENTICATED = "unauthenticated"

Headers = list[tuple[str, bytes]]
AnyHeaders = Iterable[tuple[str, Any]] | Mapping[str, Any] | None


class SigningConfigError(ValueError):
    """The keys file or producer id is unusable; the message names the variable."""


def new_secret() -> str:
    """A fresh producer secret (64 hex characters)."""
    return secrets.token_hex(32)


def load_keys(path: str, variable: str = KEYS_FILE_ENV) -> dict[str, bytes]:
    """producer id -> secret bytes from the keys file."""
    data = read_setting_yaml(path, variable, SigningConfigError)
    producers = data.get("producers") if isinstance(data, dict) else None
    if not isinstance(producers, dict) or not producers:
        raise SigningConfigError(f"{variable}={path}: expected a non-empty mapping under 'producers'")
    keys: dict[str, bytes] = {}
    for producer, secret in producers.items():
        if not isinstance(secret, str) or len(secret) < MIN_SECRET_CHARS:
            raise SigningConfigError(
                f"{variable}={path}: the secret of producer {producer!r} must be a string of at least "
                f"{MIN_SECRET_CHARS} characters"
            )
        keys[str(producer)] = secret.encode("utf-8")
    return keys


def signature(secret: bytes, value: bytes) -> str:
    return hmac.new(secret, value, hashlib.sha256).hexdigest()


class Signer:
    """Adds the producer id and signature headers to a record value."""

    def __init__(self, producer_id: str, secret: bytes) -> None:
        self.producer_id = producer_id
        self.secret = secret

    def headers(self, value: bytes) -> Headers:
        return [
            (PRODUCER_HEADER, self.producer_id.encode("utf-8")),
            (SIGNATURE_HEADER, signature(self.secret, value).encode("ascii")),
        ]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Signer | None:
        """The Signer of RECSTACK_EVENT_PRODUCER_ID with its key from RECSTACK_EVENT_KEYS_FILE; None
        when either is unset."""
        e = os.environ if environ is None else environ
        path, producer = e.get(KEYS_FILE_ENV, ""), e.get(PRODUCER_ID_ENV, "")
        if not path or not producer:
            return None
        keys = load_keys(path)
        if producer not in keys:
            raise SigningConfigError(f"{PRODUCER_ID_ENV}={producer}: no key for it in {KEYS_FILE_ENV}={path}")
        return cls(producer, keys[producer])


def _header(headers: AnyHeaders, name: str) -> bytes | None:
    if not headers:
        return None
    items = headers.items() if isinstance(headers, Mapping) else headers
    for key, value in items:
        key = key.decode() if isinstance(key, bytes) else key
        if key == name:
            return value.encode() if isinstance(value, str) else bytes(value or b"")
    return None


def producer_of(headers: AnyHeaders) -> str | None:
    """The producer id a record claims (None without the header)."""
    raw = _header(headers, PRODUCER_HEADER)
    return raw.decode("utf-8", "replace") if raw is not None else None


class Verifier:
    """Checks a record's signature against the keys of every known producer."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        self.keys = dict(keys)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Verifier | None:
        path = (os.environ if environ is None else environ).get(KEYS_FILE_ENV, "")
        return cls(load_keys(path)) if path else None

    def check(self, value: bytes, headers: AnyHeaders) -> str | None:
        """None when ``value`` carries a valid signature of a known producer, else why not."""
        producer = producer_of(headers)
        sig = _header(headers, SIGNATURE_HEADER)
        if producer is None or sig is None:
            return f"unsigned event (no {PRODUCER_HEADER} / {SIGNATURE_HEADER} headers)"
        secret = self.keys.get(producer)
        if secret is None:
            return f"unknown producer {producer[:64]!r}"
        if not hmac.compare_digest(signature(secret, value or b"").encode("ascii"), sig.strip()):
            return f"bad signature for producer {producer[:64]!r}"
        return None
