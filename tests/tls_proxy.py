"""A TLS-terminating TCP proxy, run by the tests as its own process in front of a plaintext broker.

    python -m tests.tls_proxy --listen-port P --target HOST:PORT --cert server.crt --key server.key \
        [--client-ca ca.crt] [--listen-host 127.0.0.1]

It plays the part of a TLS sidecar (stunnel, Envoy) that fronts a Kafka broker which cannot serve
TLS itself (Tansu 0.6). Each accepted TCP connection first completes a TLS (1.2 or newer) server
handshake with --cert/--key; with --client-ca the client must also present a certificate signed by
that CA (mutual TLS). Only then is a plaintext connection to --target opened, and bytes are piped
both ways until either side closes; then both are closed.

Output (stdout, flushed per line; the tests read it):

    tls_proxy ready on 127.0.0.1:P -> HOST:PORT (mtls)
    handshake accepted #N from 127.0.0.1:x client=CN=client
    handshake refused #N from 127.0.0.1:x: SSLError(...)

"ready" comes once the port is listening; N counts accepted and refused handshakes separately.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ssl

HANDSHAKE_TIMEOUT_S = 10.0
counts = {"accepted": 0, "refused": 0}


def say(line: str) -> None:
    print(line, flush=True)


def server_context(cert: str, key: str, client_ca: str | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:  # mutual TLS: no certificate, or one the CA did not sign, fails the handshake
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):  # includes ssl.SSLError and TimeoutError
        await asyncio.wait_for(writer.wait_closed(), 5)


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF or an error on either end, then close the writing side (which ends the
    opposite pipe too: closing a transport feeds EOF to its own reader)."""
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:  # includes ssl.SSLError: a reset or a TLS alert ends the connection
        pass
    finally:
        await close(writer)


async def handle(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, ctx: ssl.SSLContext, target: tuple[str, int]
) -> None:
    peer = "{}:{}".format(*writer.get_extra_info("peername")[:2])
    try:
        await writer.start_tls(ctx, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_S)
    except OSError as exc:  # ssl.SSLError, a reset or TimeoutError: the handshake failed
        counts["refused"] += 1
        say(f"handshake refused #{counts['refused']} from {peer}: {exc!r}")
        await close(writer)
        return
    cert = writer.get_extra_info("peercert") or {}
    subject = ",".join(f"{k}={v}" for rdn in cert.get("subject", ()) for k, v in rdn) or "-"
    counts["accepted"] += 1
    say(f"handshake accepted #{counts['accepted']} from {peer} client={subject}")
    try:
        up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError as exc:
        say(f"target {target[0]}:{target[1]} unreachable for {peer}: {exc!r}")
        await close(writer)
        return
    await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.target.rpartition(":")
    target = (host, int(port))
    ctx = server_context(args.cert, args.key, args.client_ca)
    server = await asyncio.start_server(
        lambda r, w: handle(r, w, ctx, target), args.listen_host, args.listen_port
    )
    mode = "mtls" if args.client_ca else "tls"
    say(f"tls_proxy ready on {args.listen_host}:{args.listen_port} -> {args.target} ({mode})")
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--target", required=True, help="HOST:PORT of the plaintext server")
    parser.add_argument("--cert", required=True, help="PEM server certificate")
    parser.add_argument("--key", required=True, help="its PEM key")
    parser.add_argument("--client-ca", help="PEM CA of client certificates (requires one: mTLS)")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(parser.parse_args()))


if __name__ == "__main__":
    main()
