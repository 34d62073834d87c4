"""TLS (and mTLS) for every recstack gRPC server and client, from the environment.

| variable                  | meaning                                                                |
|---------------------------|------------------------------------------------------------------------|
| RECSTACK_TLS_CERT         | PEM certificate (chain) of this server; with _KEY it turns TLS on      |
| RECSTACK_TLS_KEY          | PEM private key of RECSTACK_TLS_CERT                                   |
| RECSTACK_TLS_CA           | PEM CA bundle: clients verify servers with it, mTLS servers clients    |
| RECSTACK_TLS_CLIENT_AUTH  | true: servers require and verify a client certificate (mTLS)           |
| RECSTACK_TLS_CLIENT_CERT  | certificate a client presents (default RECSTACK_TLS_CERT)              |
| RECSTACK_TLS_CLIENT_KEY   | its key (default RECSTACK_TLS_KEY)                                     |
| RECSTACK_TLS_SERVER_NAME  | name a client checks in the server's certificate instead of the host   |

All unset: plaintext (``recstack up``'s default). A client uses TLS when RECSTACK_TLS_CA is set
(or a client certificate is given); a server when RECSTACK_TLS_CERT and RECSTACK_TLS_KEY are set.
A file that is missing, unreadable or not PEM raises TlsError naming the variable.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from recstack.config_files import read_setting_file
from recstack.rpc.settings import env

log = logging.getLogger(__name__)


class TlsError(ValueError):
    """A TLS setting is wrong; the message names the variable and the file."""


class TlsSettings(BaseSettings):
    model_config = SettingsConfigDict(populate_by_name=True, extra="ignore", case_sensitive=False)

    cert: str = Field("", validation_alias=env("RECSTACK_TLS_CERT"))
    key: str = Field("", validation_alias=env("RECSTACK_TLS_KEY"))
    ca: str = Field("", validation_alias=env("RECSTACK_TLS_CA"))
    client_auth: bool = Field(False, validation_alias=env("RECSTACK_TLS_CLIENT_AUTH"))
    client_cert: str = Field("", validation_alias=env("RECSTACK_TLS_CLIENT_CERT"))
    client_key: str = Field("", validation_alias=env("RECSTACK_TLS_CLIENT_KEY"))
    server_name: str = Field("", validation_alias=env("RECSTACK_TLS_SERVER_NAME"))

    @property
    def server_enabled(self) -> bool:
        return bool(self.cert or self.key)

    @property
    def client_enabled(self) -> bool:
        return bool(self.ca or self.client_cert)


def read_pem(path: str, variable: str, marker: bytes = b"-----BEGIN ") -> bytes:
    """The bytes of the PEM file ``path``; TlsError naming ``variable`` when it cannot be used."""
    data = read_setting_file(path, variable, TlsError)
    if marker not in data:
        raise TlsError(f"{variable}={path}: not a PEM file (no '-----BEGIN' line)")
    return data


def server_credentials(settings: TlsSettings) -> grpc.ServerCredentials | None:
    """Credentials of a TLS server (None for plaintext); mTLS with RECSTACK_TLS_CLIENT_AUTH."""
    if not settings.server_enabled:
        if settings.client_auth:
            raise TlsError("RECSTACK_TLS_CLIENT_AUTH=true needs RECSTACK_TLS_CERT and RECSTACK_TLS_KEY")
        return None
    cert = read_pem(settings.cert, "RECSTACK_TLS_CERT")
    key = read_pem(settings.key, "RECSTACK_TLS_KEY")
    _check_pair(cert, key)
    ca = None
    if settings.client_auth:
        if not settings.ca:
            raise TlsError(
                "RECSTACK_TLS_CLIENT_AUTH=true needs RECSTACK_TLS_CA (the CA of client certificates)"
            )
        ca = read_pem(settings.ca, "RECSTACK_TLS_CA")
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=settings.client_auth
    )


def _check_pair(
    cert: bytes, key: bytes, cert_var: str = "RECSTACK_TLS_CERT", key_var: str = "RECSTACK_TLS_KEY"
) -> None:
    """Parse the certificate and key (grpc would only fail at the first handshake)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificate(cert)
    except ValueError as exc:
        raise TlsError(f"{cert_var}: not a PEM certificate ({exc})") from exc
    try:
        private = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as exc:
        raise TlsError(f"{key_var}: not an unencrypted PEM private key ({exc})") from exc
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if certificate.public_key().public_bytes(enc, pub) != private.public_key().public_bytes(enc, pub):
        raise TlsError(f"{key_var} is not the key of the certificate in {cert_var}")


def channel_credentials(settings: TlsSettings) -> grpc.ChannelCredentials | None:
    """Credentials of a TLS client (None for plaintext): the CA, and a client certificate when
    RECSTACK_TLS_CLIENT_CERT (or, under mTLS, RECSTACK_TLS_CERT) is set."""
    if not settings.client_enabled and not settings.client_auth:
        return None
    if not settings.ca:
        raise TlsError("TLS clients need RECSTACK_TLS_CA (the CA that signed the servers' certificates)")
    ca = read_pem(settings.ca, "RECSTACK_TLS_CA")
    if settings.client_cert or settings.client_key:
        cert_path, key_path = settings.client_cert, settings.client_key
        cert_var, key_var = "RECSTACK_TLS_CLIENT_CERT", "RECSTACK_TLS_CLIENT_KEY"
    else:
        cert_path, key_path = settings.cert, settings.key
        cert_var, key_var = "RECSTACK_TLS_CERT", "RECSTACK_TLS_KEY"
    if bool(cert_path) != bool(key_path):
        raise TlsError(f"{cert_var} and {key_var} must be set together")
    cert = key = None
    if cert_path:
        cert = read_pem(cert_path, cert_var)
        key = read_pem(key_path, key_var)
        _check_pair(cert, key, cert_var, key_var)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)


def _options(settings: TlsSettings, options: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    out = list(options)
    if settings.server_name:
        out.append(("grpc.ssl_target_name_override", settings.server_name))
    return out


def settings_from(environ: Mapping[str, str]) -> TlsSettings:
    """TlsSettings of another process's environment (e.g. a child's), ignoring this one's."""
    fields = {name: "" for name in TlsSettings.model_fields}
    fields["client_auth"] = "false"
    for name in TlsSettings.model_fields:
        value = environ.get(f"RECSTACK_TLS_{name.upper()}")
        if value is not None:
            fields[name] = value
    return TlsSettings(**fields)


def load() -> TlsSettings:
    """TlsSettings from the environment (read at each call: tests and benches change it)."""
    return TlsSettings()


def aio_channel(
    address: str,
    options: Sequence[tuple[str, Any]] = (),
    settings: TlsSettings | None = None,
    interceptors: Sequence[Any] | None = None,
) -> grpc.aio.Channel:
    """A grpc.aio channel: secure when the TLS variables say so, else plaintext."""
    settings = settings or load()
    creds = channel_credentials(settings)
    if creds is None:
        return grpc.aio.insecure_channel(address, options=list(options), interceptors=interceptors)
    return grpc.aio.secure_channel(
        address, creds, options=_options(settings, options), interceptors=interceptors
    )


def sync_channel(
    address: str, options: Sequence[tuple[str, Any]] = (), settings: TlsSettings | None = None
) -> grpc.Channel:
    """A blocking channel (health checks): secure when the TLS variables say so."""
    settings = settings or load()
    creds = channel_credentials(settings)
    if creds is None:
        return grpc.insecure_channel(address, options=list(options))
    return grpc.secure_channel(address, creds, options=_options(settings, options))


def add_port(server: grpc.aio.Server, address: str, settings: TlsSettings | None = None) -> int:
    """Bind ``address``: add_secure_port when RECSTACK_TLS_CERT/KEY are set, else insecure."""
    settings = settings or load()
    creds = server_credentials(settings)
    if creds is None:
        log.info("gRPC on %s: plaintext (RECSTACK_TLS_CERT/KEY unset)", address)
        return server.add_insecure_port(address)
    log.info("gRPC on %s: TLS%s", address, " with client certificates (mTLS)" if settings.client_auth else "")
    return server.add_secure_port(address, creds)
