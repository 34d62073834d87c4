"""Throwaway X.509 certificates for local TLS: a CA and certificates it signs (cryptography).

For tests, `recstack bench serve --secure` and `recstack auth dev-certs`; production certificates
come from cert-manager or your PKI (docs/operations.md, "Security").
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


@dataclass(frozen=True)
class DevPki:
    """Paths of a CA and a server and client certificate it signed (see ``dev_pki``)."""

    ca: Path
    ca_key: Path
    server: Issued
    client: Issued

    def env(self, mtls: bool = True) -> dict[str, str]:
        """RECSTACK_TLS_* of a process that serves with the server certificate and calls with the
        client one (the gateway; the stages ignore the client part)."""
        out = {
            "RECSTACK_TLS_CERT": str(self.server.cert),
            "RECSTACK_TLS_KEY": str(self.server.key),
            "RECSTACK_TLS_CA": str(self.ca),
            "RECSTACK_TLS_CLIENT_CERT": str(self.client.cert),
            "RECSTACK_TLS_CLIENT_KEY": str(self.client.key),
        }
        if mtls:
            out["RECSTACK_TLS_CLIENT_AUTH"] = "true"
        return out


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> Path:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    path.chmod(0o600)
    return path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(out: Path, name: str = "recstack test CA", days: int = 30) -> tuple[Path, Path]:
    """A self-signed CA under ``out`` (ca.crt, ca.key); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    key = _key()
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(_name(name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(key, hashes.SHA256())
    )
    ca_path = out / "ca.crt"
    ca_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return ca_path, _write_key(key, out / "ca.key")


def issue(
    ca: Path, ca_key: Path, out: Path, name: str, hosts: tuple[str, ...] = ("localhost", "127.0.0.1"),
    client: bool = False, days: int = 30,
) -> Issued:  # fmt: skip
    """A certificate for ``name`` signed by the CA (SANs ``hosts``; server and/or client use);
    written to out/NAME.crt and out/NAME.key."""
    out.mkdir(parents=True, exist_ok=True)
    ca_cert = x509.load_pem_x509_certificate(ca.read_bytes())
    signing_key = serialization.load_pem_private_key(ca_key.read_bytes(), password=None)
    key = _key()
    now = dt.datetime.now(dt.UTC)
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    usages = [ExtendedKeyUsageOID.SERVER_AUTH] + ([ExtendedKeyUsageOID.CLIENT_AUTH] if client else [])
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(signing_key, hashes.SHA256())  # type: ignore[arg-type]
    cert_path = out / f"{name}.crt"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, _write_key(key, out / f"{name}.key"))


def dev_pki(out: Path, hosts: tuple[str, ...] = ("localhost", "127.0.0.1")) -> DevPki:
    """A CA, a server certificate for ``hosts`` and a client certificate, under ``out``."""
    ca, ca_key = make_ca(out)
    # client use too: the gateway presents RECSTACK_TLS_CERT to the stages when no client cert is given
    server = issue(ca, ca_key, out, "server", hosts, client=True)
    client = issue(ca, ca_key, out, "client", hosts, client=True)
    return DevPki(ca, ca_key, server, client)
