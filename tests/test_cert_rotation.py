"""Certificate rotation over real gRPC and mTLS: a server takes new TLS files without a restart."""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2

from silobridge.core.config import TlsFiles
from silobridge.core.errors import ConfigError
from silobridge.rpc import transport
from silobridge.security.pki.ca import issue_certificate

from .conftest import Pki

pytestmark = pytest.mark.integration


class HealthServer:
    """A real asyncio gRPC server with only grpc.health.v1, bound with ``transport.bind_server``."""

    def __init__(self, tls: TlsFiles) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.server: grpc.aio.Server | None = None
        self.port = asyncio.run_coroutine_threadsafe(self._start(tls), self.loop).result(30)

    async def _start(self, tls: TlsFiles) -> int:
        self.server = transport.create_server()
        health = transport.add_health(self.server)
        port = transport.bind_server(self.server, "127.0.0.1:0", tls)
        await self.server.start()
        await transport.mark_serving(health, [])
        return port

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.stop(0), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@dataclass(frozen=True)
class Served:
    server: HealthServer
    files: TlsFiles  # the server's own copies, rewritten in place by the tests


@pytest.fixture
def served(pki: Pki, tmp_path: Path) -> Iterator[Served]:
    directory = tmp_path / "server"
    directory.mkdir()
    files = TlsFiles(
        cert=directory / "server.crt", key=directory / "server.key", ca=directory / "ca.crt"
    )
    shutil.copyfile(pki.silo.cert, files.cert)
    shutil.copyfile(pki.silo.key, files.key)
    shutil.copyfile(pki.silo.ca, files.ca)
    server = HealthServer(files)
    yield Served(server, files)
    server.stop()


def channel(port: int, client: TlsFiles) -> grpc.Channel:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=client.ca.read_bytes(),
        private_key=client.key.read_bytes(),
        certificate_chain=client.cert.read_bytes(),
    )
    # A private subchannel pool: a new channel makes a new connection, hence a new handshake.
    return grpc.secure_channel(
        f"127.0.0.1:{port}", credentials, options=[("grpc.use_local_subchannel_pool", 1)]
    )


def health_status(open_channel: grpc.Channel) -> int:
    # The typeshed stub of HealthStub declares no methods, so call the method by its path.
    check = open_channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    reply: health_pb2.HealthCheckResponse = check(health_pb2.HealthCheckRequest(), timeout=10)
    return reply.status


def serves_new_client(port: int, client: TlsFiles) -> bool:
    with channel(port, client) as fresh:
        return health_status(fresh) == health_pb2.HealthCheckResponse.SERVING


def presented_certificate(port: int, client: TlsFiles) -> x509.Certificate:
    """The certificate the server shows a new connection, seen through a plain TLS handshake."""
    context = ssl.create_default_context(cafile=str(client.ca))
    context.load_cert_chain(str(client.cert), str(client.key))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def test_a_second_ca_is_trusted_once_the_bundle_names_it(pki: Pki, served: Served) -> None:
    port = served.server.port
    with channel(port, pki.home_client) as existing:
        assert health_status(existing) == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as refused, channel(port, pki.foreign_ca_client) as c:
            health_status(c)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

        foreign_ca = (pki.root / "foreign-ca" / "ca.crt").read_bytes()
        served.files.ca.write_bytes(pki.silo.ca.read_bytes() + foreign_ca)  # in place, no restart

        assert serves_new_client(port, pki.foreign_ca_client)
        assert serves_new_client(port, pki.home_client)
        assert health_status(existing) == health_pb2.HealthCheckResponse.SERVING


def test_a_renewed_server_certificate_is_presented_to_new_connections(
    pki: Pki, served: Served, tmp_path: Path
) -> None:
    port = served.server.port
    old = presented_certificate(port, pki.home_client)
    assert old == x509.load_pem_x509_certificate(pki.silo.cert.read_bytes())
    renewed = issue_certificate(
        pki.ca,
        tmp_path / "renewed",
        role="silo",
        name="kjv",
        org="bible",
        dns_names=["localhost"],
        ip_addresses=["127.0.0.1"],
    )
    new = x509.load_pem_x509_certificate(renewed.cert.read_bytes())

    with channel(port, pki.home_client) as existing:
        assert health_status(existing) == health_pb2.HealthCheckResponse.SERVING

        # Half-way through a rotation the key no longer fits the certificate: keep the old pair.
        served.files.cert.write_bytes(renewed.cert.read_bytes())
        assert presented_certificate(port, pki.home_client) == old
        assert serves_new_client(port, pki.home_client)

        # A file missing mid-rotation keeps the old pair too.
        served.files.key.unlink()
        assert presented_certificate(port, pki.home_client) == old

        served.files.key.write_bytes(renewed.key.read_bytes())
        assert presented_certificate(port, pki.home_client) == new
        assert serves_new_client(port, pki.home_client)
        assert health_status(existing) == health_pb2.HealthCheckResponse.SERVING


def test_a_server_refuses_to_start_with_a_key_that_is_not_its_certificates(
    pki: Pki, tmp_path: Path
) -> None:
    mismatched = TlsFiles(cert=pki.silo.cert, key=pki.home_client.key, ca=pki.silo.ca)
    with pytest.raises(ConfigError, match="does not belong to the certificate"):
        transport.server_credentials(mismatched)
    encrypted = tmp_path / "encrypted.key"
    key = serialization.load_pem_private_key(pki.silo.key.read_bytes(), password=None)
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        transport.server_credentials(TlsFiles(cert=pki.silo.cert, key=encrypted, ca=pki.silo.ca))
    with pytest.raises(ConfigError, match="cannot read TLS key file"):
        transport.server_credentials(
            TlsFiles(cert=pki.silo.cert, key=tmp_path / "absent.key", ca=pki.silo.ca)
        )
