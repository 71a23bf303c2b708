"""Revocation reaches outgoing traffic (issue 11, finding 3), and unknown-silo errors name only
silos the caller may query (finding 12): a real coordinator and two real silos over mutual TLS.

A silo whose certificate goes on the coordinator's denylist, or that an admin disables, gets
status ``denied`` with the reason and receives nothing (its own audit log shows no Search); a
removed silo is forgotten until it registers again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from silobridge.core.config import TlsFiles
from silobridge.core.federation import FederatedAnswer, SiloOutcome
from silobridge.core.listings import SiloListing
from silobridge.core.queries import FederatedQuery
from silobridge.core.vectors import WireVector
from silobridge.rpc import convert
from silobridge.rpc.transport import open_channel
from silobridge.security.identity import identity_from_certificate_pem
from silobridge.security.pki.ca import issue_certificate
from silobridge.security.signed_query.signing import sign_query
from silobridge.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

from .conftest import (
    CONSORTIUM,
    CoordinatorThread,
    Pki,
    ServerThread,
    ingest_kjv,
    run_cli,
    write_client_config,
    write_coordinator_config,
    write_silo_config,
)

pytestmark = pytest.mark.integration
SPIFFE = f"spiffe://{CONSORTIUM}"


@dataclass
class Net:
    pki: Pki
    root: Path
    silos: dict[str, ServerThread]
    certs: dict[str, TlsFiles]
    coordinator: CoordinatorThread
    admin: TlsFiles
    space: str
    dim: int


def _files(pki: Pki, root: Path, role: str, name: str, org: str) -> TlsFiles:
    issued = issue_certificate(pki.ca, root / name, role=role, name=name, org=org)
    return TlsFiles(cert=issued.cert, key=issued.key, ca=issued.ca_cert)


@pytest.fixture(scope="module")
def net(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("revocation")
    denylist = root / "denylist.txt"
    denylist.write_text("# revoked certificates\n")
    certs = {"kjv": pki.silo, "web": _files(pki, root / "certs", "silo", "web", "bible")}
    silos = {}
    for name, tls in certs.items():
        config = write_silo_config(root / name, tls, model="static-64", name=name)
        ingest_kjv(config, 40)
        silos[name] = ServerThread(config)
    coordinator_toml = write_coordinator_config(
        root / "coordinator",
        pki.coordinator,
        f"""
[policy]
register = ["{SPIFFE}/silo/*"]
list = ["{SPIFFE}/client/*"]
manage = ["{SPIFFE}/client/admin"]
denylist = "{denylist}"
[policy.query]
"*" = ["{SPIFFE}/client/*"]
web = ["org:bible/client"]   # mallory (org elsewhere) may query kjv only
""",
    )
    coordinator = CoordinatorThread(coordinator_toml)
    net = Net(
        pki,
        root,
        silos,
        certs,
        coordinator,
        _files(pki, root / "certs", "client", "admin", "hub"),
        "",
        0,
    )
    try:
        for name in certs:
            space = _register(net, name)
        net.space, net.dim = space.space_id, space.dimension
        yield net
    finally:
        coordinator.stop()
        for server in silos.values():
            server.stop()


def _register(net: Net, name: str) -> common_pb2.SpaceDescriptor:
    async def run() -> coordinator_pb2.RegisterSiloResponse:
        channel = open_channel(net.coordinator.target, net.certs[name])
        try:
            request = coordinator_pb2.RegisterSiloRequest(endpoint=net.silos[name].target)
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            return await stub.RegisterSilo(request, timeout=10)
        finally:
            await channel.close()

    return asyncio.run(run()).space


def _query(net: Net, tls: TlsFiles, silos: Sequence[str], seed: int = 0) -> FederatedAnswer:
    wire = WireVector.of(np.random.default_rng(seed).normal(size=net.dim).astype(np.float32))
    cert, key, _ca = tls.read()
    signed = sign_query(
        vector=wire, source_space=net.space, silos=list(silos), k=3, key_pem=key,
        certificate_pem=cert, audience=f"{SPIFFE}/coordinator/hub",
    )  # fmt: skip
    query = FederatedQuery(wire, net.space, 3, silos=tuple(silos), signed=signed)

    async def run() -> coordinator_pb2.FederatedSearchResponse:
        channel = open_channel(net.coordinator.target, tls)
        try:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            return await stub.FederatedSearch(convert.federated_query_to_proto(query), timeout=10)
        finally:
            await channel.close()

    return convert.answer_from_proto(asyncio.run(run()), net.space)


def _listed(net: Net) -> dict[str, SiloListing]:
    async def run() -> coordinator_pb2.ListSilosResponse:
        channel = open_channel(net.coordinator.target, net.pki.home_client)
        try:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            return await stub.ListSilos(coordinator_pb2.ListSilosRequest(), timeout=10)
        finally:
            await channel.close()

    silos = (convert.silo_listing_from_proto(info) for info in asyncio.run(run()).silos)
    return {listing.silo: listing for listing in silos}


def _searches_seen_by(net: Net, name: str) -> int:
    """How many Search calls silo ``name`` has handled (its own audit log)."""
    log = net.root / name / "audit" / "audit.log"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return sum(1 for line in lines if line.get("rpc") == "Search")


def _states(answer: FederatedAnswer) -> dict[str, SiloOutcome]:
    return {status.silo: status.state for status in answer.statuses}


def _message(answer: FederatedAnswer, silo: str) -> str:
    return next(status.message for status in answer.statuses if status.silo == silo)


def _client_toml(net: Net, tls: TlsFiles, name: str) -> Path:
    return write_client_config(
        net.root / f"{name}-client.toml",
        tls,
        coordinator=net.coordinator.target,
        home_silo=net.silos["kjv"].target,
        timeout_seconds=20,
    )


def test_a_denylisted_silo_receives_no_query_and_shows_denied_with_the_reason(net: Net) -> None:
    assert _states(_query(net, net.pki.home_client, ["kjv", "web"])) == {
        "kjv": SiloOutcome.OK,
        "web": SiloOutcome.OK,
    }
    serial = identity_from_certificate_pem(net.certs["kjv"].cert.read_bytes()).serial
    (net.root / "denylist.txt").write_text(f"# kjv's key leaked\n{serial}\n")
    # The coordinator re-reads its denylist at most once a second: wait until its listing says so.
    deadline = time.monotonic() + 10
    while not _listed(net)["kjv"].denied_reason:
        assert time.monotonic() < deadline, "the coordinator never noticed the denylist"
        time.sleep(0.1)  # polling a condition, not guessing a duration
    listing = _listed(net)
    assert "denylist" in listing["kjv"].denied_reason
    assert serial in listing["kjv"].denied_reason
    assert listing["web"].denied_reason == ""

    seen_by_kjv, seen_by_web = _searches_seen_by(net, "kjv"), _searches_seen_by(net, "web")
    answer = _query(net, net.pki.home_client, ["kjv", "web"], seed=1)
    assert _states(answer) == {"kjv": SiloOutcome.DENIED, "web": SiloOutcome.OK}
    assert "on the coordinator's denylist" in _message(answer, "kjv")
    assert {hit.silo for hit in answer.hits} == {"web"}
    assert _searches_seen_by(net, "kjv") == seen_by_kjv  # not one vector or claim reached it
    assert _searches_seen_by(net, "web") == seen_by_web + 1

    # A new certificate for kjv passes the coordinator's door, but its endpoint still presents
    # the revoked one: the coordinator reads that certificate itself and refuses to register it.
    renewed = _files(net.pki, net.root / "renewed", "silo", "kjv", "bible")
    net.certs["kjv"] = renewed
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        _register(net, "kjv")
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert f"presents (serial {serial}) is on the coordinator's denylist" in str(
        refused.value.details()
    )


def test_an_admin_disables_enables_and_removes_a_silo_with_the_cli(net: Net) -> None:
    admin = _client_toml(net, net.admin, "admin")
    seen_by_web = _searches_seen_by(net, "web")

    disabled = run_cli("coordinator", "silo", "disable", "web", "--config", str(admin),
                       "--reason", "breach under investigation")  # fmt: skip
    assert disabled.returncode == 0, disabled.stderr
    assert "silo web is disabled: breach under investigation" in disabled.stdout
    answer = _query(net, net.pki.home_client, ["web"], seed=3)
    assert _states(answer) == {"web": SiloOutcome.DENIED}
    assert "breach under investigation" in _message(answer, "web")
    assert "breach under investigation" in _listed(net)["web"].denied_reason
    assert _searches_seen_by(net, "web") == seen_by_web
    # Registering again (a restart) does not undo the admin's decision.
    _register(net, "web")
    assert _states(_query(net, net.pki.home_client, ["web"], seed=4)) == {"web": SiloOutcome.DENIED}

    enabled = run_cli("coordinator", "silo", "enable", "web", "--config", str(admin))
    assert enabled.returncode == 0, enabled.stderr
    assert _states(_query(net, net.pki.home_client, ["web"], seed=5)) == {"web": SiloOutcome.OK}
    assert _searches_seen_by(net, "web") == seen_by_web + 1

    # Only an admin may: alice is a member, not an admin.
    alice = _client_toml(net, net.pki.home_client, "alice")
    refused = run_cli("coordinator", "silo", "remove", "web", "--config", str(alice))
    assert refused.returncode == 1
    assert "PERMISSION_DENIED" in refused.stderr
    assert "web" in _listed(net)

    removed = run_cli("coordinator", "silo", "remove", "web", "--config", str(admin))
    assert removed.returncode == 0, removed.stderr
    assert "web" not in _listed(net)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _query(net, net.pki.home_client, ["web"], seed=6)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    missing = run_cli("coordinator", "silo", "enable", "web", "--config", str(admin))
    assert missing.returncode == 1 and "no silo named 'web'" in missing.stderr

    _register(net, "web")  # a removed silo must register again, and then is served again
    assert _states(_query(net, net.pki.home_client, ["web"], seed=7)) == {"web": SiloOutcome.OK}


def test_an_unknown_silo_error_names_only_silos_the_caller_may_query(net: Net) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        _query(net, net.pki.other_client, ["no-such-silo"], seed=8)
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    details = caught.value.details() or ""
    assert "no-such-silo" in details
    assert "kjv" in details  # mallory may query kjv ...
    assert "web" not in details  # ... but must not learn that web exists
