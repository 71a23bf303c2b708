"""gRPC transport: mTLS server and channel factories, options, peer identity, health, shutdown.

Every option below says why it is set. Mutual TLS is the default everywhere; plaintext exists only
for explicit ``insecure=True`` and logs a warning each time it is used.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from silobridge.core.config import TlsFiles
from silobridge.core.errors import ConfigError, PermissionDenied, SiloBridgeError, Unavailable
from silobridge.security.identity import (
    PeerIdentity,
    certificate_serial_hex,
    identity_from_certificate_pem,
    server_dns_name,
)

log = logging.getLogger(__name__)

MiB = 1024 * 1024
# Requests are one query vector or a batch of texts/anchors; 8 MiB bounds memory per call while
# leaving room for an anchor batch of ~5,000 384-d vectors. Larger messages fail with
# RESOURCE_EXHAUSTED before any handler runs.
MAX_MESSAGE_BYTES = 8 * MiB

SERVER_OPTIONS: Sequence[tuple[str, Any]] = (
    # Bound what a peer can make us buffer.
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Refuse to share a port with another process: a second server on the same port must fail
    # loudly instead of silently splitting traffic.
    ("grpc.so_reuseport", 0),
    # Accept the clients' keepalive pings (below) without calling them abusive, also on a
    # connection with no call open: else an idle client gets GOAWAY "too_many_pings".
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    # Ping idle connections so half-open ones (a peer that vanished) are noticed and closed.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
)

# Retries only for idempotent reads, and only when the server was not reached at all.
_RETRY_SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [
                    {"service": "silobridge.v1.SiloService", "method": "Describe"},
                    {"service": "silobridge.v1.SiloService", "method": "Search"},
                    {"service": "silobridge.v1.CoordinatorService", "method": "ListSilos"},
                    {"service": "silobridge.v1.CoordinatorService", "method": "ListAdapters"},
                ],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "1s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)

CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Detect a dead server on an idle channel within ~80 s instead of the OS TCP timeout (hours).
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.enable_retries", 1),
    ("grpc.service_config", _RETRY_SERVICE_CONFIG),
)


# Per file: mtime and size catch edits, inode a replace by rename, ctime a chmod.
_FileStamp = tuple[int, int, int, int]
# The stamp of a set with a file that cannot even be looked at (deleted mid-rotation).
_GONE: tuple[_FileStamp, ...] = ((-1, -1, -1, -1),)


def _stamp_files(tls: TlsFiles) -> tuple[_FileStamp, ...]:
    stamps = []
    for path in (tls.cert, tls.key, tls.ca):
        status = path.stat()
        stamps.append((status.st_mtime_ns, status.st_ctime_ns, status.st_size, status.st_ino))
    return tuple(stamps)


def _checked_tls_material(tls: TlsFiles) -> tuple[bytes, bytes, bytes, str]:
    """(cert, key, ca, serial) after checking they fit together; raises ``ConfigError``.

    Files rotated one at a time pass through states where the key does not match the
    certificate; refusing those keeps the previous, working configuration in place.
    """
    cert, key, ca = tls.read()
    try:
        chain = x509.load_pem_x509_certificates(cert)
    except ValueError:
        raise ConfigError(f"{tls.cert} holds no readable PEM certificate") from None
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError):
        raise ConfigError(
            f"{tls.key} is not an unencrypted PEM private key (a server starts unattended)"
        ) from None
    if private_key.public_key() != chain[0].public_key():
        raise ConfigError(f"the key in {tls.key} does not belong to the certificate in {tls.cert}")
    try:
        x509.load_pem_x509_certificates(ca)
    except ValueError:
        raise ConfigError(f"{tls.ca} holds no readable PEM CA certificate") from None
    return cert, key, ca, certificate_serial_hex(chain[0])


def _certificate_configuration(
    cert: bytes, key: bytes, ca: bytes
) -> grpc.ServerCertificateConfiguration:
    return grpc.ssl_server_certificate_configuration([(key, cert)], root_certificates=ca)


class ReloadingServerCertificates:
    """The server's certificate, key and CA bundle, re-read for new connections when changed.

    gRPC calls an instance before every new TLS handshake (``dynamic_ssl_server_credentials``):
    it returns a new configuration when the files' stamps changed and they fit together, else
    ``None`` (keep the current one). Existing connections keep what they were opened with.
    """

    def __init__(self, tls: TlsFiles) -> None:
        self.tls = tls
        self._lock = threading.Lock()
        try:
            # Stamped before reading, so a write during the read is seen on the next handshake.
            self._stamp: tuple[_FileStamp, ...] | None = _stamp_files(tls)
        except OSError:
            self._stamp = None  # tls.read() below names the missing file
        cert, key, ca, serial = _checked_tls_material(tls)
        self.initial = _certificate_configuration(cert, key, ca)
        self.serial = serial
        # The broken state last warned about, so a half-rotated set is reported once.
        self._failed_stamp: tuple[_FileStamp, ...] | None = None

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        # Never raise into gRPC's handshake path: any failure keeps the current configuration.
        try:
            return self._fetch()
        except Exception:
            log.exception("TLS reload of %s failed; keeping the current certificate", self.tls.cert)
            return None

    def _fetch(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            try:
                stamp = _stamp_files(self.tls)
            except OSError as error:
                self._warn_once(_GONE, f"cannot stat TLS file {error.filename}: {error.strerror}")
                return None
            if stamp in (self._stamp, self._failed_stamp):
                return None
            try:
                cert, key, ca, serial = _checked_tls_material(self.tls)
            except ConfigError as error:
                self._warn_once(stamp, error.message)
                return None
            self._stamp, self._failed_stamp, self.serial = stamp, None, serial
            log.info(
                "TLS files changed: new connections use certificate %s (serial %s) and CA %s",
                self.tls.cert,
                serial,
                self.tls.ca,
            )
            return _certificate_configuration(cert, key, ca)

    def _warn_once(self, stamp: tuple[_FileStamp, ...], reason: str) -> None:
        if stamp == self._failed_stamp:
            return
        self._failed_stamp = stamp
        log.warning("TLS files not reloaded, keeping the current certificate: %s", reason)


def server_credentials(tls: TlsFiles) -> grpc.ServerCredentials:
    """Server side of mutual TLS: a client without a certificate from our CA fails the handshake.

    The certificate, key and CA bundle are re-read for new connections when they change, so a
    certificate can be rotated (or a second CA trusted) without restarting the server.
    """
    certificates = ReloadingServerCertificates(tls)
    return grpc.dynamic_ssl_server_credentials(
        certificates.initial,
        # The stubs omit the documented ``None`` ("no change") from the fetcher's return type.
        certificates,  # type: ignore[arg-type]
        require_client_authentication=True,
    )


def channel_credentials(tls: TlsFiles) -> grpc.ChannelCredentials:
    """Client side of mutual TLS: present our certificate, trust only the consortium CA."""
    cert, key, ca = tls.read()
    return grpc.ssl_channel_credentials(
        root_certificates=ca, private_key=key, certificate_chain=cert
    )


def _warn_insecure(what: str, address: str) -> None:
    log.warning(
        "INSECURE: %s %s uses plaintext gRPC without authentication; "
        "never use --insecure outside a throwaway local test",
        what,
        address,
    )


def create_server(
    *,
    maximum_concurrent_rpcs: int | None = None,
    interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
) -> grpc.aio.Server:
    """An asyncio server with the options above; add servicers, then ``bind_server``."""
    return grpc.aio.server(
        options=SERVER_OPTIONS,
        maximum_concurrent_rpcs=maximum_concurrent_rpcs,
        interceptors=list(interceptors) or None,
    )


def bind_server(
    server: grpc.aio.Server, address: str, tls: TlsFiles | None, *, insecure: bool = False
) -> int:
    """Bind ``address`` (``host:0`` picks a free port) and return the bound port."""
    if tls is None:
        if not insecure:
            raise ConfigError("no TLS files configured; mTLS is required unless insecure is asked")
        _warn_insecure("server", address)
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, server_credentials(tls))
    if port == 0:
        raise ConfigError(f"could not bind {address}: is the port already in use?")
    return port


def open_channel(
    target: str, tls: TlsFiles | None, *, insecure: bool = False, expect: str | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to ``target`` over mTLS (or plaintext when explicitly insecure).

    ``expect`` is the SPIFFE id the server must hold: the TLS handshake then checks the server's
    certificate against the CA-assigned name of that identity instead of ``target``'s host, so
    any other consortium certificate (another silo listening at the address) is refused before
    a request is sent. Without it, any certificate of the CA naming the host passes.
    """
    if tls is None:
        if not insecure:
            raise ConfigError("no TLS files configured; mTLS is required unless insecure is asked")
        _warn_insecure("channel to", target)
        return grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
    options = list(CHANNEL_OPTIONS)
    if expect is not None:
        # gRPC's own hostname check then compares the certificate's DNS SANs with this name.
        options.append(("grpc.ssl_target_name_override", server_dns_name(expect)))
    return grpc.aio.secure_channel(target, channel_credentials(tls), options=options)


# How gRPC's TLS stack words a certificate that does not carry the expected name.
_HOSTNAME_CHECK_FAILED = ("Hostname Verification Check failed", "not in peer certificate")


def wrong_server_error(error: SiloBridgeError, target: str, expect: str | None) -> SiloBridgeError:
    """``error`` restated when a channel expecting ``expect`` met a server with another identity.

    gRPC reports a failed hostname check as UNAVAILABLE ("Hostname Verification Check failed";
    older releases: "Peer name ... is not in peer certificate"); said plainly, the server at
    ``target`` is not who the caller expected.
    """
    if expect is None or not isinstance(error, Unavailable):
        return error
    if not any(sign in error.peer_details for sign in _HOSTNAME_CHECK_FAILED):
        return error
    refused = Unavailable(
        f"the server at {target} is not {expect}: its certificate names another identity, so "
        "nothing was sent (check the endpoint and the expected name in the configuration)"
    )
    refused.status_name = error.status_name
    refused.peer_details = f"the server at {target} is not {expect}"
    return refused


ANONYMOUS = PeerIdentity(spiffe_id="", consortium="", role="", name="", org="")


def peer_certificate_pem(context: grpc.aio.ServicerContext[Any, Any]) -> bytes | None:
    """The caller's TLS certificate (PEM), or ``None`` for a plaintext caller."""
    pems = list(context.auth_context().get("x509_pem_cert", ()))
    if not pems:
        return None
    if len(pems) != 1:
        raise PermissionDenied("peer presented an unexpected certificate chain")
    return pems[0]


def peer_identity(context: grpc.aio.ServicerContext[Any, Any]) -> PeerIdentity:
    """The caller's identity, read from its TLS certificate only (never from a request field).

    Plaintext callers (insecure servers only) are ``ANONYMOUS``; policies match them only with an
    explicit ``"*"`` rule.
    """
    pem = peer_certificate_pem(context)
    if pem is None:
        return ANONYMOUS
    return identity_from_certificate_pem(pem)


def add_health(server: grpc.aio.Server) -> health.aio.HealthServicer:
    """Register grpc.health.v1 on ``server``; call ``mark_serving`` once it is ready."""
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return servicer


async def mark_serving(servicer: health.aio.HealthServicer, services: Sequence[str]) -> None:
    """Report SERVING for the overall server and each named service."""
    for name in ("", *services):
        await servicer.set(name, health_pb2.HealthCheckResponse.SERVING)


async def serve_until_signal(
    server: grpc.aio.Server,
    health_servicer: health.aio.HealthServicer,
    *,
    grace_seconds: float,
    on_stopped: Callable[[], Awaitable[None] | None] | None = None,
    stop_event: asyncio.Event | None = None,
) -> None:
    """Run until SIGTERM/SIGINT (or ``stop_event``), then shut down gracefully.

    Order matters: report NOT_SERVING so load balancers stop routing, let in-flight calls finish
    for ``grace_seconds``, then flush state (``on_stopped``).
    """
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("shutting down: NOT_SERVING, %.1f s grace", grace_seconds)
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace_seconds)
        if on_stopped is not None:
            result = on_stopped()
            if result is not None:
                await result
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
