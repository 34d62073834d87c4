"""Exec probe for a recstack gRPC server that serves TLS/mTLS (the prod overlay).

The kubelet's built-in gRPC probe speaks plaintext only, so with RECSTACK_TLS_CERT set the pods run
this instead (mounted from the ConfigMap recstack-grpc-probe):

    python /etc/recstack/probe/grpc_health_probe.py TLS_NAME

It calls grpc.health.v1.Health/Check on 127.0.0.1:$RECSTACK_PORT, verifying the server's
certificate with RECSTACK_TLS_CA against TLS_NAME (a DNS name in the certificate, e.g.
ranking.recstack.svc) and presenting RECSTACK_TLS_CLIENT_CERT/KEY (default RECSTACK_TLS_CERT/KEY)
for servers that require client certificates. Exit 0 when SERVING, 1 otherwise (NOT_SERVING while
loading or draining), 2 on a usage error.
"""

from __future__ import annotations

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: grpc_health_probe.py TLS_NAME\n")
        return 2
    port = os.environ.get("RECSTACK_PORT", "")
    if not port.isdigit():
        sys.stderr.write("RECSTACK_PORT must be set to the server's gRPC port\n")
        return 2
    target = f"127.0.0.1:{port}"
    ca = os.environ.get("RECSTACK_TLS_CA")
    if ca:
        cert = os.environ.get("RECSTACK_TLS_CLIENT_CERT") or os.environ.get("RECSTACK_TLS_CERT")
        key = os.environ.get("RECSTACK_TLS_CLIENT_KEY") or os.environ.get("RECSTACK_TLS_KEY")
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_read(ca),
            private_key=_read(key) if key else None,
            certificate_chain=_read(cert) if cert else None,
        )
        channel = grpc.secure_channel(
            target, credentials, options=[("grpc.ssl_target_name_override", argv[1])]
        )
    else:
        channel = grpc.insecure_channel(target)
    try:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=3
        )
    except grpc.RpcError as exc:
        sys.stderr.write(f"health check of {target} failed: {exc.code().name} {exc.details()}\n")
        return 1
    finally:
        channel.close()
    if reply.status != health_pb2.HealthCheckResponse.SERVING:
        sys.stderr.write(f"{target}: {health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)}\n")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
