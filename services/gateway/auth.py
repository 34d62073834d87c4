"""Caller authentication of the gateway: API keys or JWTs, per-caller rate limits, per-caller metrics.

| variable                       | meaning                                                         |
|--------------------------------|-----------------------------------------------------------------|
| RECSTACK_AUTH_MODE             | none (default), api_key or jwt                                  |
| RECSTACK_API_KEYS_FILE         | api_key: YAML/JSON list of {caller, sha256[, methods]}          |
| RECSTACK_JWT_KEY_FILE          | jwt: PEM public key (RS256 / ES256) or an HS256 secret file      |
| RECSTACK_JWT_AUDIENCE          | jwt: required ``aud`` (empty: not checked)                      |
| RECSTACK_JWT_ISSUER            | jwt: required ``iss`` (empty: not checked)                      |
| RECSTACK_JWT_SCOPE             | jwt: scope the token must grant (default recstack.recommend)    |
| RECSTACK_RATE_LIMIT_RPS        | requests/s per caller (token bucket; 0 = unlimited)             |
| RECSTACK_RATE_LIMIT_BURST      | bucket size per caller (default: max(1, RPS))                   |
| RECSTACK_AUTH_METRICS_CALLERS  | distinct caller labels before the rest count as ``other`` (100) |

Callers send ``x-api-key: <key>`` or ``authorization: Bearer <jwt>``. Outcomes:

- no credentials, an unknown key, a bad/expired token, a wrong audience or issuer: UNAUTHENTICATED;
- valid credentials without the right (a key whose ``methods`` exclude the method, a token
  without RECSTACK_JWT_SCOPE in ``scope``/``scp``/``roles``): PERMISSION_DENIED;
- over the caller's rate: RESOURCE_EXHAUSTED.

The caller is the key's ``caller`` or the token's ``sub``. Keys are stored as SHA-256 hashes and
compared in constant time (``hmac.compare_digest`` against every entry). Health and reflection
methods stay open. ``recstack_gateway_auth_requests_total{caller,outcome}`` counts every decision;
failed authentications are counted under caller ``unknown``.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from prometheus_client import Counter
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recstack.config_files import read_setting_file, read_setting_yaml
from recstack.rpc.ratelimit import KeyedLimiter
from recstack.rpc.settings import env

log = logging.getLogger(__name__)

API_KEY_METADATA = "x-api-key"
AUTHORIZATION_METADATA = "authorization"
DEFAULT_SCOPE = "recstack.recommend"
JWT_LEEWAY_S = 30.0  # clock skew allowed on exp / nbf / iat
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
UNKNOWN_CALLER = "unknown"
OTHER_CALLER = "other"

AUTH_REQUESTS = Counter(
    "recstack_gateway_auth_requests",
    "Gateway calls by caller and authentication outcome (ok, unauthenticated, permission_denied, "
    "rate_limited); failed authentications count as caller 'unknown', callers past the label cap "
    "as 'other'.",
    ["caller", "outcome"],
)


class AuthConfigError(ValueError):
    """An authentication setting or file is wrong; the message names the variable."""


class AuthSettings(BaseSettings):
    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", case_sensitive=False)

    mode: str = Field("none", pattern="^(none|api_key|jwt)$", validation_alias=env("RECSTACK_AUTH_MODE"))
    api_keys_file: str = Field("", validation_alias=env("RECSTACK_API_KEYS_FILE"))
    jwt_key_file: str = Field("", validation_alias=env("RECSTACK_JWT_KEY_FILE"))
    jwt_audience: str = Field("", validation_alias=env("RECSTACK_JWT_AUDIENCE"))
    jwt_issuer: str = Field("", validation_alias=env("RECSTACK_JWT_ISSUER"))
    jwt_scope: str = Field(DEFAULT_SCOPE, validation_alias=env("RECSTACK_JWT_SCOPE"))
    rate_limit_rps: float = Field(0.0, ge=0, validation_alias=env("RECSTACK_RATE_LIMIT_RPS"))
    rate_limit_burst: float = Field(0.0, ge=0, validation_alias=env("RECSTACK_RATE_LIMIT_BURST"))
    metrics_callers: int = Field(100, ge=0, validation_alias=env("RECSTACK_AUTH_METRICS_CALLERS"))


@dataclass(frozen=True)
class Decision:
    """None ``code``: allowed, as ``caller``; else the status and message the call is refused with."""

    caller: str | None
    code: grpc.StatusCode | None = None
    message: str = ""

    @property
    def outcome(self) -> str:
        return {
            None: "ok",
            grpc.StatusCode.UNAUTHENTICATED: "unauthenticated",
            grpc.StatusCode.PERMISSION_DENIED: "permission_denied",
            grpc.StatusCode.RESOURCE_EXHAUSTED: "rate_limited",
        }.get(self.code, "error")


def hash_key(key: str) -> str:
    """The SHA-256 hex digest an API key is stored as in the keys file."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ApiKey:
    caller: str
    digest: bytes  # sha256 of the key
    methods: frozenset[str] = field(default_factory=frozenset)  # empty: every method


def _read_structured(path: str, variable: str) -> Any:
    return read_setting_yaml(path, variable, AuthConfigError)


def load_api_keys(path: str, variable: str = "RECSTACK_API_KEYS_FILE") -> list[ApiKey]:
    """Entries of the keys file: ``{"keys": [{"caller": NAME, "sha256": HEX, "methods": [..]}]}``
    (or the bare list). ``methods`` (optional) lists gRPC method names (``Recommend``) or full
    names (``/recstack.v1.Gateway/Recommend``) the key may call."""
    data = _read_structured(path, variable)
    entries = data.get("keys") if isinstance(data, dict) else data
    if not isinstance(entries, list) or not entries:
        raise AuthConfigError(f"{variable}={path}: expected a non-empty list under 'keys'")
    keys = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise AuthConfigError(f"{variable}={path}: keys[{i}] is not a mapping")
        caller, digest = entry.get("caller"), str(entry.get("sha256", "")).lower()
        if not caller or not isinstance(caller, str):
            raise AuthConfigError(f"{variable}={path}: keys[{i}] has no 'caller'")
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise AuthConfigError(
                f"{variable}={path}: keys[{i}] ({caller}): 'sha256' must be the 64 hex digits of "
                "sha256(key) (see `recstack auth new-key`)"
            )
        methods = entry.get("methods") or []
        if not isinstance(methods, list):
            raise AuthConfigError(f"{variable}={path}: keys[{i}] ({caller}): 'methods' must be a list")
        keys.append(ApiKey(caller, bytes.fromhex(digest), frozenset(str(m) for m in methods)))
    return keys


def _method_allowed(allowed: frozenset[str], full_method: str) -> bool:
    if not allowed:
        return True
    return full_method in allowed or full_method.rsplit("/", 1)[-1] in allowed


class ApiKeyVerifier:
    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self.keys = list(keys)

    def check(self, metadata: dict[str, str], full_method: str) -> Decision:
        presented = metadata.get(API_KEY_METADATA)
        if not presented:
            return Decision(
                None,
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing credentials: send '{API_KEY_METADATA}' metadata",
            )
        digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
        found: ApiKey | None = None
        for key in self.keys:  # every entry, no early exit: the time does not depend on which matched
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            return Decision(None, grpc.StatusCode.UNAUTHENTICATED, "invalid API key")
        if not _method_allowed(found.methods, full_method):
            return Decision(
                found.caller,
                grpc.StatusCode.PERMISSION_DENIED,
                f"caller {found.caller!r} may not call {full_method}",
            )
        return Decision(found.caller)


def load_jwt_key(path: str, variable: str = "RECSTACK_JWT_KEY_FILE") -> tuple[Any, list[str]]:
    """(verification key, accepted algorithms): a PEM public key or certificate (RSA: RS256, EC:
    ES256) or, for any other file, its stripped bytes as an HS256 secret (at least 32 bytes)."""
    data = read_setting_file(path, variable, AuthConfigError, " (RECSTACK_AUTH_MODE=jwt)")
    if b"-----BEGIN" in data:
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        try:
            if b"-----BEGIN CERTIFICATE" in data:
                public = x509.load_pem_x509_certificate(data).public_key()
            else:
                public = serialization.load_pem_public_key(data)
        except ValueError as exc:
            raise AuthConfigError(
                f"{variable}={path}: not a PEM public key or certificate ({exc}); a private key does not "
                "belong on the gateway"
            ) from exc
        if isinstance(public, rsa.RSAPublicKey):
            return public, ["RS256"]
        if isinstance(public, ec.EllipticCurvePublicKey):
            return public, ["ES256"]
        raise AuthConfigError(f"{variable}={path}: only RSA (RS256) and EC P-256 (ES256) keys are supported")
    secret = data.strip()
    if len(secret) < 32:
        raise AuthConfigError(
            f"{variable}={path}: an HS256 secret must be at least 32 bytes, got {len(secret)}"
        )
    return secret, ["HS256"]


def token_scopes(claims: dict[str, Any]) -> set[str]:
    """Scopes/roles a token grants: ``scope`` (space-separated) and the lists ``scp`` and ``roles``."""
    out: set[str] = set()
    for name in ("scope", "scp", "roles"):
        value = claims.get(name)
        if isinstance(value, str):
            out.update(value.split())
        elif isinstance(value, list):
            out.update(str(v) for v in value)
    return out


class JwtVerifier:
    def __init__(self, key: Any, algorithms: Sequence[str], audience: str = "", issuer: str = "",
                 scope: str = DEFAULT_SCOPE) -> None:  # fmt: skip
        self.key = key
        self.algorithms = list(algorithms)
        self.audience = audience
        self.issuer = issuer
        self.scope = scope

    def check(self, metadata: dict[str, str], full_method: str) -> Decision:
        import jwt

        header = metadata.get(AUTHORIZATION_METADATA, "")
        scheme, _, token = header.partition(" ")
        if not header:
            return Decision(
                None,
                grpc.StatusCode.UNAUTHENTICATED,
                "missing credentials: send 'authorization: Bearer <jwt>'",
            )
        if scheme.lower() != "bearer" or not token.strip():
            return Decision(
                None, grpc.StatusCode.UNAUTHENTICATED, "the authorization metadata must be 'Bearer <jwt>'"
            )
        required = ["exp", "sub"] + (["aud"] if self.audience else []) + (["iss"] if self.issuer else [])
        try:
            claims = jwt.decode(
                token.strip(),
                self.key,
                algorithms=self.algorithms,
                audience=self.audience or None,
                issuer=self.issuer or None,
                leeway=JWT_LEEWAY_S,
                options={"require": required, "verify_aud": bool(self.audience)},
            )
        except jwt.ExpiredSignatureError:
            return Decision(None, grpc.StatusCode.UNAUTHENTICATED, "the token has expired")
        except jwt.InvalidAudienceError:
            return Decision(None, grpc.StatusCode.UNAUTHENTICATED, "the token is not for this audience")
        except jwt.InvalidIssuerError:
            return Decision(None, grpc.StatusCode.UNAUTHENTICATED, "the token's issuer is not trusted")
        except jwt.MissingRequiredClaimError as exc:
            return Decision(None, grpc.StatusCode.UNAUTHENTICATED, f"the token lacks the {exc.claim!r} claim")
        except jwt.InvalidTokenError as exc:
            return Decision(None, grpc.StatusCode.UNAUTHENTICATED, f"invalid token ({type(exc).__name__})")
        caller = str(claims["sub"])
        if self.scope and self.scope not in token_scopes(claims):
            return Decision(
                caller,
                grpc.StatusCode.PERMISSION_DENIED,
                f"the token does not grant the scope {self.scope!r}",
            )
        return Decision(caller)


class CallerLabels:
    """Label values of the per-caller metrics: the first ``cap`` distinct callers by name, then
    ``other``; unauthenticated calls ``unknown``."""

    def __init__(self, cap: int, known: Iterable[str] = ()) -> None:
        self.cap = cap
        self.seen: set[str] = set()
        for name in known:
            self.label(name)

    def label(self, caller: str | None) -> str:
        if caller is None:
            return UNKNOWN_CALLER
        if caller in self.seen:
            return caller
        if len(self.seen) < self.cap:
            self.seen.add(caller)
            return caller
        return OTHER_CALLER


class Authenticator:
    """Credentials check, then the caller's rate limit; counts every decision."""

    def __init__(
        self, verifier: ApiKeyVerifier | JwtVerifier, limiter: KeyedLimiter, labels: CallerLabels
    ) -> None:
        self.verifier = verifier
        self.limiter = limiter
        self.labels = labels

    def decide(self, full_method: str, metadata: Iterable[tuple[str, Any]]) -> Decision:
        meta = {str(k).lower(): v if isinstance(v, str) else "" for k, v in metadata}
        decision = self.verifier.check(meta, full_method)
        if decision.code is None and not self.limiter.allow(decision.caller or ""):
            wait = self.limiter.retry_after(decision.caller or "")
            decision = Decision(
                decision.caller,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"rate limit of {self.limiter.rate:g} requests/s for caller {decision.caller!r} exceeded; "
                f"retry in {wait:.2f} s",
            )
        AUTH_REQUESTS.labels(self.labels.label(decision.caller), decision.outcome).inc()
        return decision


def build_authenticator(settings: AuthSettings) -> Authenticator | None:
    """The Authenticator of ``settings`` (None for mode none); AuthConfigError on a bad file."""
    if settings.mode == "none":
        return None
    limiter = KeyedLimiter(settings.rate_limit_rps, settings.rate_limit_burst or None)
    if settings.mode == "api_key":
        keys = load_api_keys(settings.api_keys_file)
        return Authenticator(
            ApiKeyVerifier(keys), limiter, CallerLabels(settings.metrics_callers, (k.caller for k in keys))
        )
    key, algorithms = load_jwt_key(settings.jwt_key_file)
    verifier = JwtVerifier(key, algorithms, settings.jwt_audience, settings.jwt_issuer, settings.jwt_scope)
    return Authenticator(verifier, limiter, CallerLabels(settings.metrics_callers))


def is_open(full_method: str) -> bool:
    """Health and reflection need no credentials (probes, grpcurl)."""
    return full_method.startswith(OPEN_PREFIXES)


def _refusal(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse)


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """Refuses calls whose credentials the Authenticator does not accept (before the servicer runs)."""

    def __init__(self, authenticator: Authenticator) -> None:
        self.authenticator = authenticator

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if is_open(method):
            return await continuation(handler_call_details)
        decision = self.authenticator.decide(method, handler_call_details.invocation_metadata or ())
        if decision.code is not None:
            log.info("refused %s for caller %s: %s: %s", method, decision.caller or UNKNOWN_CALLER,
                     decision.code.name, decision.message)  # fmt: skip
            return _refusal(decision.code, decision.message)
        return await continuation(handler_call_details)


def interceptors(settings: AuthSettings | None = None) -> list[grpc.aio.ServerInterceptor]:
    """[AuthInterceptor] for the gateway's server, or [] with RECSTACK_AUTH_MODE=none."""
    settings = settings or AuthSettings()
    authenticator = build_authenticator(settings)
    if authenticator is None:
        log.info("caller authentication off (RECSTACK_AUTH_MODE=none)")
        return []
    log.info("caller authentication: %s, rate limit %s requests/s per caller", settings.mode,
             settings.rate_limit_rps or "no")  # fmt: skip
    return [AuthInterceptor(authenticator)]
