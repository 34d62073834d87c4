"""Kafka connection security (SASL and/or TLS) from the environment, for every client recstack opens.

| variable                  | meaning                                                           |
|---------------------------|-------------------------------------------------------------------|
| KAFKA_SECURITY_PROTOCOL   | PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL              |
| KAFKA_SASL_MECHANISM      | SCRAM-SHA-512 (default), SCRAM-SHA-256 or PLAIN                   |
| KAFKA_SASL_USERNAME       | SASL user (the Kafka principal; a Strimzi KafkaUser's name)       |
| KAFKA_SASL_PASSWORD       | its password                                                      |
| KAFKA_SSL_CA              | PEM CA that signed the brokers' certificates (SSL, SASL_SSL)      |
| KAFKA_SSL_CERT            | PEM client certificate (TLS client authentication; optional)      |
| KAFKA_SSL_KEY             | its key                                                           |

``aiokafka_kwargs()`` is spread into every AIOKafkaProducer / AIOKafkaConsumer /
AIOKafkaAdminClient; ``faust_credentials()`` is the Faust app's ``broker_credentials``. A bad value
or unreadable file raises KafkaSecurityError naming the variable.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")


class KafkaSecurityError(ValueError):
    """A KAFKA_* security setting is wrong; the message names the variable."""


@dataclass(frozen=True)
class KafkaSecurity:
    protocol: str = "PLAINTEXT"
    mechanism: str = "SCRAM-SHA-512"
    username: str = ""
    password: str = ""
    ca: str = ""
    cert: str = ""
    key: str = ""

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaSecurity:
        e = os.environ if environ is None else environ
        security = cls(
            protocol=(e.get("KAFKA_SECURITY_PROTOCOL") or "PLAINTEXT").upper(),
            mechanism=(e.get("KAFKA_SASL_MECHANISM") or "SCRAM-SHA-512").upper(),
            username=e.get("KAFKA_SASL_USERNAME", ""),
            password=e.get("KAFKA_SASL_PASSWORD", ""),
            ca=e.get("KAFKA_SSL_CA", ""),
            cert=e.get("KAFKA_SSL_CERT", ""),
            key=e.get("KAFKA_SSL_KEY", ""),
        )
        security.validate()
        return security

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    def validate(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise KafkaSecurityError(
                f"KAFKA_SECURITY_PROTOCOL must be one of {', '.join(PROTOCOLS)}, got {self.protocol!r}"
            )
        if self.sasl:
            if self.mechanism not in MECHANISMS:
                raise KafkaSecurityError(
                    f"KAFKA_SASL_MECHANISM must be one of {', '.join(MECHANISMS)}, got {self.mechanism!r}"
                )
            if not self.username or not self.password:
                raise KafkaSecurityError(
                    f"KAFKA_SECURITY_PROTOCOL={self.protocol} needs KAFKA_SASL_USERNAME and "
                    "KAFKA_SASL_PASSWORD"
                )
        if bool(self.cert) != bool(self.key):
            raise KafkaSecurityError("KAFKA_SSL_CERT and KAFKA_SSL_KEY must be set together")
        for variable, path in (
            ("KAFKA_SSL_CA", self.ca),
            ("KAFKA_SSL_CERT", self.cert),
            ("KAFKA_SSL_KEY", self.key),
        ):
            if path and not self.tls:
                raise KafkaSecurityError(
                    f"{variable} is set but KAFKA_SECURITY_PROTOCOL={self.protocol} uses no TLS "
                    "(SSL or SASL_SSL)"
                )
            if path and not Path(path).is_file():
                raise KafkaSecurityError(f"{variable}={path}: no such file")

    def ssl_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        from aiokafka.helpers import create_ssl_context

        try:
            return create_ssl_context(
                cafile=self.ca or None, certfile=self.cert or None, keyfile=self.key or None
            )
        except (ssl.SSLError, OSError) as exc:
            raise KafkaSecurityError(
                f"KAFKA_SSL_CA/KAFKA_SSL_CERT/KAFKA_SSL_KEY: cannot load ({exc})"
            ) from exc

    def aiokafka_kwargs(self) -> dict[str, Any]:
        if self.protocol == "PLAINTEXT":
            return {}
        kwargs: dict[str, Any] = {"security_protocol": self.protocol}
        if self.tls:
            kwargs["ssl_context"] = self.ssl_context()
        if self.sasl:
            kwargs.update(
                sasl_mechanism=self.mechanism,
                sasl_plain_username=self.username,
                sasl_plain_password=self.password,
            )
        return kwargs

    def faust_credentials(self) -> Any:
        """``broker_credentials`` of a Faust app (None for PLAINTEXT)."""
        import faust

        if self.protocol == "PLAINTEXT":
            return None
        if self.sasl:
            # SASL_SSL when a context is given, else SASL_PLAINTEXT (faust derives the protocol)
            return faust.SASLCredentials(
                username=self.username,
                password=self.password,
                mechanism=self.mechanism,
                ssl_context=self.ssl_context(),
            )
        return faust.SSLCredentials(self.ssl_context())


def aiokafka_kwargs(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Security keyword arguments of an aiokafka client, from KAFKA_* (empty for PLAINTEXT)."""
    return KafkaSecurity.from_env(environ).aiokafka_kwargs()
