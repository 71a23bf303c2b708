"""Issue 11, finding 4: every outgoing connection expects one server identity.

An impostor holding a valid consortium server certificate for another name, listening where a
party expects a particular server, is refused during the TLS handshake: it never receives the
query text (client -> home silo) nor a query (coordinator -> silo), over real gRPC and mTLS.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from silobridge.client.api import FederatedClient
from silobridge.client.config import load_client_config
from silobridge.core.config import TlsFiles
from silobridge.core.errors import (
    ConfigError,
    FailedPrecondition,
    InvalidArgument,
    PermissionDenied,
    Unavailable,
)
from silobridge.core.federation import SiloOutcome
from silobridge.rpc.coordinator_client import CoordinatorClient
from silobridge.security.identity import server_dns_name
from silobridge.security.pki.approve import subject_name
from silobridge.security.pki.ca import approve_request, issue_certificate, request_certificate

from .conftest import (
    CONSORTIUM,
    CoordinatorThread,
    Pki,
    ingest_kjv,
    write_client_config,
    write_coordinator_config,
    write_silo_config,
)

SPIFFE = f"spiffe://{CONSORTIUM}"
KJV = f"{SPIFFE}/silo/kjv"
HUB = f"{SPIFFE}/coordinator/hub"


class SiloAt:
    """A real silo server on its own loop, listening on ``listen`` (a fixed port can be reused)."""

    def __init__(self, config_path: Path, listen: str = "127.0.0.1:0") -> None:
        from silobridge.silo_agent.config import load_silo_config
        from silobridge.silo_agent.server import RunningSilo, open_service, start_silo

        self.service = open_service(load_silo_config(config_path))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_silo(self.service, listen=listen), self.loop
        )
        self.running: RunningSilo = future.result(timeout=60)
        self.target = f"127.0.0.1:{self.running.port}"

    def handled(self, rpc: str) -> int:
        return self.running.servicer.handled[rpc]

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(0.5), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture(scope="module")
def impostor_tls(pki: Pki) -> TlsFiles:
    """A genuine consortium server certificate, for silo "mirror", valid for 127.0.0.1 too."""
    files = issue_certificate(
        pki.ca,
        pki.root / "mirror",
        role="silo",
        name="mirror",
        org="bible",
        ip_addresses=["127.0.0.1"],
    )
    return TlsFiles(cert=files.cert, key=files.key, ca=files.ca_cert)


def _client_toml(tmp_path: Path, pki: Pki, *, home_silo: str, coordinator: str) -> Path:
    return write_client_config(
        tmp_path / "client.toml",
        pki.home_client,
        coordinator=coordinator,
        home_silo=home_silo,
        timeout_seconds=10,
    )


@pytest.fixture
def impostor(impostor_tls: TlsFiles, tmp_path: Path) -> Iterator[SiloAt]:
    # It even calls itself "kjv" and lets alice's organization embed: only its certificate
    # tells it apart.
    silo = SiloAt(write_silo_config(tmp_path / "impostor", impostor_tls, model="static-64"))
    yield silo
    silo.stop()


@pytest.mark.integration
def test_an_impostor_at_the_home_silo_address_never_receives_the_query_text(
    pki: Pki, impostor: SiloAt, tmp_path: Path
) -> None:
    config = load_client_config(
        _client_toml(tmp_path, pki, home_silo=impostor.target, coordinator="127.0.0.1:1")
    )

    async def run() -> None:
        async with FederatedClient(config) as client:
            await client.query("the secret the query text must not leak", silos=["kjv"])

    with pytest.raises(Unavailable, match=rf"the server at {impostor.target} is not {KJV}"):
        asyncio.run(run())
    assert impostor.handled("Embed") == 0
    assert impostor.handled("Describe") == 0


@pytest.mark.integration
def test_a_client_refuses_a_silo_answering_at_the_coordinator_address(
    pki: Pki, impostor: SiloAt, tmp_path: Path
) -> None:
    config = load_client_config(
        _client_toml(tmp_path, pki, home_silo="127.0.0.1:1", coordinator=impostor.target)
    )

    async def run() -> None:
        async with FederatedClient(config) as client:
            await client.search_vector(np.ones(64, np.float32), "static-64@x", silos=["kjv"])

    with pytest.raises(Unavailable, match=rf"the server at {impostor.target} is not {HUB}"):
        asyncio.run(run())


@pytest.mark.integration
def test_the_coordinator_never_sends_a_query_to_a_silo_holding_another_certificate(
    pki: Pki, impostor_tls: TlsFiles, tmp_path: Path
) -> None:
    genuine_config = write_silo_config(tmp_path / "kjv", pki.silo, model="static-64")
    ingest_kjv(genuine_config, 20)
    coordinator = CoordinatorThread(
        write_coordinator_config(
            tmp_path / "coordinator",
            pki.coordinator,
            f"""
[policy]
register = ["{SPIFFE}/silo/*"]
list = ["{SPIFFE}/client/*"]
[policy.query]
"*" = ["{SPIFFE}/client/*"]
""",
        )
    )
    genuine = SiloAt(genuine_config)
    impostor: SiloAt | None = None
    try:

        async def register(endpoint: str) -> str:
            async with CoordinatorClient(coordinator.target, pki.silo, expect=HUB) as hub:
                _name, space = await hub.register_silo(endpoint, timeout=60)
                return space.space_id

        space_id = asyncio.run(register(genuine.target))
        # The genuine silo goes away and another consortium member's server takes its port.
        port = genuine.running.port
        genuine.stop()
        impostor = SiloAt(
            write_silo_config(tmp_path / "impostor", impostor_tls, model="static-64"),
            listen=f"127.0.0.1:{port}",
        )

        # Registering kjv at the impostor's address is refused too: the call-back expects kjv.
        with pytest.raises(FailedPrecondition, match=rf"is not {KJV}"):
            asyncio.run(register(impostor.target))

        config = load_client_config(
            _client_toml(tmp_path, pki, home_silo="127.0.0.1:1", coordinator=coordinator.target)
        )

        async def search() -> list[tuple[str, SiloOutcome, str]]:
            async with FederatedClient(config) as client:
                vector = np.random.default_rng(0).normal(size=64).astype(np.float32)
                answer = await client.search_vector(vector, space_id, k=3, silos=["kjv"])
            return [(s.silo, s.state, s.message) for s in answer.statuses]

        [(silo, outcome, message)] = asyncio.run(search())
        assert (silo, outcome) == ("kjv", SiloOutcome.UNAVAILABLE), message
        assert f"is not {KJV}" in message
        assert impostor.handled("Search") == 0
        assert impostor.handled("Describe") == 0
    finally:
        if impostor is not None:
            impostor.stop()
        coordinator.stop()


# --- the CA assigns the name a channel checks -----------------------------------------------


def _dns_names(cert_pem: bytes) -> list[str]:
    certificate = x509.load_pem_x509_certificate(cert_pem)
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def test_server_certificates_carry_the_ca_assigned_name_and_no_loopback_default(
    pki: Pki, tmp_path: Path
) -> None:
    files = issue_certificate(pki.ca, tmp_path, role="silo", name="psalms", org="bible")
    certificate = x509.load_pem_x509_certificate(files.cert.read_bytes())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [server_dns_name(f"{SPIFFE}/silo/psalms")]
    assert san.get_values_for_type(x509.IPAddress) == []


def test_a_request_cannot_ask_for_another_servers_assigned_name(pki: Pki, tmp_path: Path) -> None:
    stolen = server_dns_name(KJV)
    with pytest.raises(InvalidArgument, match="assigned by the CA"):
        request_certificate(
            tmp_path / "a",
            consortium=CONSORTIUM,
            role="silo",
            name="mirror2",
            org="bible",
            dns_names=[stolen],
        )
    # A hand-made CSR asking for it is refused at approval as well.
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject_name("mirror2", "bible"))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.UniformResourceIdentifier(f"{SPIFFE}/silo/mirror2"),
                    x509.DNSName(stolen.upper()),
                ]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    with pytest.raises(PermissionDenied, match="only the CA assigns"):
        approve_request(pki.ca, csr.public_bytes(serialization.Encoding.PEM))


def test_distinct_identities_get_distinct_names() -> None:
    names = {
        server_dns_name(f"{SPIFFE}/{role}/{name}")
        for role in ("silo", "coordinator")
        for name in ("a.b", "a_b", "a-b", "ab", "kjv")
    }
    assert len(names) == 10
    assert all(len(label) <= 63 for name in names for label in name.split("."))


def test_client_toml_must_name_the_home_silo(pki: Pki, tmp_path: Path) -> None:
    path = _client_toml(tmp_path, pki, home_silo="127.0.0.1:1", coordinator="127.0.0.1:2")
    good = path.read_text()
    path.write_text(good.replace('home_silo_name = "kjv"\n', ""))
    with pytest.raises(ConfigError, match=r"\[client\] home_silo_name is required"):
        load_client_config(path)
    path.write_text(good)
    path.write_text(
        path.read_text().replace('coordinator_name = "hub"', 'coordinator_name = "Hub!"')
    )
    with pytest.raises(ConfigError, match="invalid coordinator_name 'Hub!'"):
        load_client_config(path)


def test_silo_toml_names_its_coordinator(pki: Pki, tmp_path: Path) -> None:
    from silobridge.silo_agent.config import load_silo_config

    extra = '[coordinator]\nendpoint = "127.0.0.1:7"\n'
    config = load_silo_config(write_silo_config(tmp_path / "a", pki.silo, extra=extra))
    assert config.coordinator is not None and config.coordinator.name == "hub"
    named = load_silo_config(
        write_silo_config(tmp_path / "b", pki.silo, extra=extra + 'name = "central"\n')
    )
    assert named.coordinator is not None and named.coordinator.name == "central"
    with pytest.raises(ConfigError, match=r"\[coordinator\] name"):
        load_silo_config(
            write_silo_config(tmp_path / "c", pki.silo, extra=extra + 'name = "a/b"\n')
        )
