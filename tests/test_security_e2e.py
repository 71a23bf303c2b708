"""Signed queries, the silo's final say, rate limits, the denylist and the audit trail, over real
gRPC with mutual TLS: a real silo (static-64) and a real coordinator, in-process.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509

from silobridge.audit.verify import verify_log
from silobridge.core.config import TlsFiles
from silobridge.core.federation import SiloOutcome
from silobridge.core.queries import FederatedQuery, SignedQuery, SiloQuery
from silobridge.core.vectors import WireVector
from silobridge.rpc import convert
from silobridge.rpc.transport import open_channel
from silobridge.security.pki.ca import issue_certificate
from silobridge.security.signed_query.signing import sign_query
from silobridge.v1 import coordinator_pb2, coordinator_pb2_grpc, silo_pb2, silo_pb2_grpc

from .conftest import (
    CONSORTIUM,
    CoordinatorThread,
    Pki,
    ServerThread,
    ingest_kjv,
    write_coordinator_config,
    write_silo_config,
)

pytestmark = pytest.mark.integration


@dataclass
class Net:
    pki: Pki
    silo: ServerThread
    coordinator: CoordinatorThread
    root: Path
    space: str
    dim: int


@pytest.fixture(scope="module")
def net(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("security")
    denylist = root / "denylist.txt"
    denylist.write_text("# certificates refused outright\n")
    config = write_silo_config(
        root / "silo", pki.silo, model="static-64", extra=f'denylist = "{denylist}"'
    )
    # A tight rate limit, so the test can exceed it.
    text = config.read_text()
    text = text.replace("rate_per_second = 10000.0", "rate_per_second = 0.5")
    text = text.replace("burst = 10000", "burst = 4")
    config.write_text(text)
    ingest_kjv(config, 80)
    spiffe = f"spiffe://{CONSORTIUM}"
    coordinator_toml = write_coordinator_config(
        root / "coordinator",
        pki.coordinator,
        f"""
[policy]
register = ["{spiffe}/silo/*"]
list = ["{spiffe}/client/*"]
[policy.query]
"*" = ["{spiffe}/client/*"]   # the coordinator lets every client query every silo
""",
    )
    silo = ServerThread(config)
    coordinator = CoordinatorThread(coordinator_toml)

    async def register() -> coordinator_pb2.RegisterSiloResponse:
        channel = open_channel(coordinator.target, pki.silo)
        try:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            request = coordinator_pb2.RegisterSiloRequest(endpoint=silo.target)
            return await stub.RegisterSilo(request, timeout=10)
        finally:
            await channel.close()

    registered = asyncio.run(register())
    try:
        yield Net(
            pki, silo, coordinator, root, registered.space.space_id, registered.space.dimension
        )
    finally:
        coordinator.stop()
        silo.stop()


def _wire(net: Net, seed: int = 0) -> WireVector:
    rng = np.random.default_rng(seed)
    return WireVector.of(rng.normal(size=net.dim).astype(np.float32))


def _signed(net: Net, signer: TlsFiles, wire: WireVector) -> SignedQuery:
    cert, key, _ca = signer.read()
    return sign_query(
        vector=wire,
        source_space=net.space,
        silos=["kjv"],
        k=5,
        key_pem=key,
        certificate_pem=cert,
        audience=f"spiffe://{CONSORTIUM}/coordinator/hub",
    )


def _search_as(net: Net, tls: TlsFiles, request: silo_pb2.SearchRequest) -> grpc.StatusCode:
    async def run() -> grpc.StatusCode:
        channel = open_channel(net.silo.target, tls)
        try:
            await silo_pb2_grpc.SiloServiceStub(channel).Search(request, timeout=10)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            return error.code()
        finally:
            await channel.close()

    return asyncio.run(run())


def _forwarded(net: Net, wire: WireVector, signed: SignedQuery) -> silo_pb2.SearchRequest:
    return convert.silo_query_to_proto(SiloQuery(wire, 5, signed=signed, source_space=net.space))


def test_a_replayed_query_is_refused_by_the_silo(net: Net) -> None:
    wire = _wire(net, 1)
    request = _forwarded(net, wire, _signed(net, net.pki.home_client, wire))
    assert _search_as(net, net.pki.coordinator, request) is grpc.StatusCode.OK
    # The coordinator (or anyone who saw it) sends the very same signed query again.
    assert _search_as(net, net.pki.coordinator, request) is grpc.StatusCode.PERMISSION_DENIED


def test_a_query_signed_with_another_organizations_key_is_refused(net: Net) -> None:
    wire = _wire(net, 2)
    forged = _signed(net, net.pki.other_client, wire)  # mallory's key and certificate ...
    forged = replace(forged, certificate=net.pki.home_client.cert.read_bytes())  # ... as alice's
    request = _forwarded(net, wire, forged)
    assert _search_as(net, net.pki.coordinator, request) is grpc.StatusCode.PERMISSION_DENIED


def test_a_vector_altered_after_signing_is_refused(net: Net) -> None:
    wire = _wire(net, 3)
    signed = _signed(net, net.pki.home_client, wire)
    altered = _wire(net, 4)  # what a tampering forwarder would send instead
    request = _forwarded(net, altered, signed)
    assert _search_as(net, net.pki.coordinator, request) is grpc.StatusCode.PERMISSION_DENIED
    # The untouched query still goes through: it was the alteration that was refused.
    assert _search_as(net, net.pki.coordinator, _forwarded(net, wire, signed)) is grpc.StatusCode.OK


def test_an_unsigned_forwarded_query_is_refused(net: Net) -> None:
    request = convert.silo_query_to_proto(SiloQuery(_wire(net, 5), 5))
    assert _search_as(net, net.pki.coordinator, request) is grpc.StatusCode.PERMISSION_DENIED


def test_the_silo_refuses_what_the_coordinator_allows(net: Net) -> None:
    async def ask(tls: TlsFiles) -> coordinator_pb2.FederatedSearchResponse:
        wire = _wire(net, 6)
        channel = open_channel(net.coordinator.target, tls)
        try:
            query = FederatedQuery(wire, net.space, 5, signed=_signed(net, tls, wire))
            return await coordinator_pb2_grpc.CoordinatorServiceStub(channel).FederatedSearch(
                convert.federated_query_to_proto(query), timeout=10
            )
        finally:
            await channel.close()

    # The coordinator's policy lets every client query; the silo serves org bible only.
    refused = convert.answer_from_proto(asyncio.run(ask(net.pki.other_client)), net.space)
    assert [(s.silo, s.state) for s in refused.statuses] == [("kjv", SiloOutcome.DENIED)]
    assert (
        "does not serve queries from spiffe://testnet/client/mallory" in refused.statuses[0].message
    )
    assert not refused.hits
    served = convert.answer_from_proto(asyncio.run(ask(net.pki.home_client)), net.space)
    assert [(s.silo, s.state) for s in served.statuses] == [("kjv", SiloOutcome.OK)]
    assert len(served.hits) == 5


def _audit_lines(net: Net) -> list[dict[str, object]]:
    log = net.root / "silo" / "audit" / "audit.log"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def test_exceeding_the_rate_limit_is_refused_and_audited(net: Net) -> None:
    # A caller of its own: alice's budget is spent by the tests above (a replay costs a token
    # too, since the nonce is checked last).
    files = issue_certificate(
        net.pki.ca, net.root / "carol", role="client", name="carol", org="bible"
    )
    carol = TlsFiles(cert=files.cert, key=files.key, ca=files.ca_cert)
    codes = [
        _search_as(net, carol, convert.silo_query_to_proto(SiloQuery(_wire(net, 7), 3)))
        for _ in range(8)
    ]
    assert codes[0] is grpc.StatusCode.OK
    assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes
    refusals = [
        line
        for line in _audit_lines(net)
        if line.get("rpc") == "Search" and "RESOURCE_EXHAUSTED" in str(line.get("reason"))
    ]
    assert refusals and refusals[-1]["who"] == "spiffe://testnet/client/carol"
    assert refusals[-1]["allowed"] is False


def test_a_denylisted_certificate_is_refused_and_audited(net: Net) -> None:
    serial = format(
        x509.load_pem_x509_certificate(net.pki.other_client.cert.read_bytes()).serial_number, "x"
    )
    describe = silo_pb2.DescribeRequest()

    async def call() -> grpc.StatusCode:
        channel = open_channel(net.silo.target, net.pki.coordinator)
        other = open_channel(net.silo.target, net.pki.other_client)
        try:
            await silo_pb2_grpc.SiloServiceStub(channel).Describe(describe, timeout=10)
            try:
                await silo_pb2_grpc.SiloServiceStub(other).Describe(describe, timeout=10)
            except grpc.aio.AioRpcError as error:
                return error.code()
            return grpc.StatusCode.OK
        finally:
            await channel.close()
            await other.close()

    (net.root / "denylist.txt").write_text(f"# compromised laptop\n{serial}\n")
    import time

    time.sleep(1.1)  # the denylist is re-read at most once a second
    assert asyncio.run(call()) is grpc.StatusCode.PERMISSION_DENIED
    denied = [line for line in _audit_lines(net) if "denylist" in str(line.get("reason"))]
    assert denied and denied[-1]["who"] == "spiffe://testnet/client/mallory"


def test_the_audit_log_verifies_and_holds_no_vectors_or_text(net: Net) -> None:
    log = net.root / "silo" / "audit" / "audit.log"
    key = net.root / "silo" / "keys" / "audit.key.pub"
    # The silo still runs: its newest lines are not signed yet, so the tail is accepted here.
    report = verify_log(log, None, max_tail=None)
    assert report.ok, report.reason
    assert report.lines > 10
    from silobridge.adapters.signing import load_verify_key

    assert verify_log(log, load_verify_key(key), max_tail=None).ok
    text = log.read_text()
    assert '"data"' not in text and 'vector"' not in text
