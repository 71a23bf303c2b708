"""Whether the coordinator may send a silo anything: an admin's ``disabled`` reason, and the
denylist against the certificate the silo registered with and the one its endpoint presents.

gRPC Python does not show a client the server's certificate, so the endpoint's certificate is
fetched with a TLS handshake of its own (Python's ``ssl``, presenting the coordinator's client
certificate, verified against the consortium CA), at registration and at the ListSilos probe;
the result is cached for ``ttl_seconds`` per endpoint. Routing decisions read the records and
the last certificate seen, so a denylist edit stops queries at once, without a network call.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from silobridge.coordinator.state.records import SiloRecord
from silobridge.core.config import TlsFiles
from silobridge.core.endpoints import validate_endpoint
from silobridge.core.errors import Unavailable
from silobridge.security.denylist import Denylist, DenylistEntries
from silobridge.security.identity import certificate_serial_hex

log = logging.getLogger(__name__)
# How long an endpoint's certificate, once fetched, stands for it (ListSilos probes refresh it).
CERTIFICATE_TTL_S = 30.0


@dataclass(frozen=True)
class CertificateFacts:
    """What names one certificate on a denylist: its serial and SHA-256 fingerprint (hex)."""

    serial: str
    fingerprint: str


def certificate_facts(der: bytes) -> CertificateFacts:
    certificate = x509.load_der_x509_certificate(der)
    return CertificateFacts(
        certificate_serial_hex(certificate), certificate.fingerprint(hashes.SHA256()).hex()
    )


def _client_context(tls: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # The chain is verified against the consortium CA; which identity the endpoint must hold is
    # the gRPC channel's check (SPIFFE id), not this handshake's: here only its serial counts.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cafile=str(tls.ca))
    context.load_cert_chain(str(tls.cert), str(tls.key))
    context.set_alpn_protocols(["h2"])  # what a gRPC server expects to negotiate
    return context


async def fetch_server_certificate(
    endpoint: str, tls: TlsFiles, *, timeout: float
) -> CertificateFacts:
    """The certificate the server at ``endpoint`` presents; ``Unavailable`` if none is had."""
    host, _, port = validate_endpoint(endpoint).rpartition(":")
    host = host.strip("[]")
    try:
        context = _client_context(tls)
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, int(port), ssl=context, server_hostname=host), timeout
        )
    except (OSError, ssl.SSLError, TimeoutError) as error:
        raise Unavailable(
            f"could not read the certificate of the silo at {endpoint}: {error}"
        ) from None
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    finally:
        # Dropped, not closed: a TLS close waits for the server's close_notify, which a gRPC
        # server may never send to a connection that spoke no HTTP/2 (asyncio waits 30 s).
        writer.transport.abort()
    del reader
    if not der:
        raise Unavailable(f"the silo at {endpoint} presented no certificate")
    return certificate_facts(der)


def _listed(entries: DenylistEntries, serial: str, fingerprint: str) -> bool:
    return bool(serial and serial in entries.serials) or bool(
        fingerprint and fingerprint in entries.fingerprints
    )


class SiloRevocation:
    """The coordinator's view of which silos it must not send queries to, and why."""

    def __init__(
        self,
        denylist: Denylist,
        tls: TlsFiles | None,
        *,
        ttl_seconds: float = CERTIFICATE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.denylist = denylist
        self.tls = tls
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        # endpoint -> (when fetched, what was presented): read from worker threads by routing.
        self._seen: dict[str, tuple[float, CertificateFacts]] = {}

    async def server_certificate(
        self, endpoint: str, *, timeout: float, refresh: bool = False
    ) -> CertificateFacts | None:
        """The certificate ``endpoint`` presents (cached; ``None`` without TLS)."""
        if self.tls is None:
            return None
        with self._lock:
            cached = self._seen.get(endpoint)
        if cached is not None and not refresh and self._clock() - cached[0] < self._ttl:
            return cached[1]
        facts = await fetch_server_certificate(endpoint, self.tls, timeout=timeout)
        with self._lock:
            self._seen[endpoint] = (self._clock(), facts)
        return facts

    def denied_reason(self, record: SiloRecord) -> str:
        """Why no query may go to ``record``'s silo now (``""``: it may). No network call."""
        if record.disabled:
            return f"disabled by a consortium admin: {record.disabled}"
        entries = self.denylist.entries
        if _listed(entries, record.cert_serial, record.cert_fingerprint):
            return (
                f"the certificate silo {record.name} registered with (serial "
                f"{record.cert_serial}) is on the coordinator's denylist"
            )
        presented = [(record.server_serial, record.server_fingerprint)]
        with self._lock:
            seen = self._seen.get(record.endpoint)
        if seen is not None:
            presented.append((seen[1].serial, seen[1].fingerprint))
        for serial, fingerprint in presented:
            if _listed(entries, serial, fingerprint):
                return (
                    f"the certificate silo {record.name}'s endpoint presents (serial {serial}) "
                    "is on the coordinator's denylist"
                )
        return ""

    def refused_certificate(self, facts: CertificateFacts | None, endpoint: str) -> str:
        """Why the certificate ``facts`` seen at ``endpoint`` is refused (``""``: it is not)."""
        if facts is not None and _listed(self.denylist.entries, facts.serial, facts.fingerprint):
            return (
                f"the certificate the server at {endpoint} presents (serial {facts.serial}) is "
                "on the coordinator's denylist"
            )
        return ""
