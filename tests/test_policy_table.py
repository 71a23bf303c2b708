"""Every RPC of both services against identities: who is allowed, who is refused.

The table below must hold an allowed and a denied row for every RPC the service descriptors
declare, so a new RPC without rows fails the first test. Each row is a real call over mutual TLS
to a real silo and a real coordinator; "allowed" means the call got past authorization (it may
still fail for other reasons, e.g. NOT_FOUND), "denied" means PERMISSION_DENIED.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from silobridge.core.config import TlsFiles
from silobridge.core.documents import Document
from silobridge.core.queries import FederatedBatch, FederatedQuery, SiloQuery
from silobridge.core.vectors import WireVector
from silobridge.rpc import convert
from silobridge.rpc.transport import open_channel
from silobridge.security.pki.ca import issue_certificate
from silobridge.security.signed_query.signing import QuerySigner, sign_query
from silobridge.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    silo_pb2,
    silo_pb2_grpc,
)

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

ALLOWED, DENIED = "allowed", "denied"


@dataclass
class Net:
    pki: Pki
    silo: ServerThread
    coordinator: CoordinatorThread
    admin: TlsFiles
    space: silo_pb2.DescribeResponse


@pytest.fixture(scope="module")
def net(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("policy")
    admin_files = issue_certificate(pki.ca, root / "admin", role="client", name="admin", org="hub")
    admin = TlsFiles(cert=admin_files.cert, key=admin_files.key, ca=admin_files.ca_cert)
    silo_config = write_silo_config(
        root / "silo", pki.silo, model="static-64", extra='admin = ["org:bible/client"]'
    )
    ingest_kjv(silo_config, 60)
    spiffe = f"spiffe://{CONSORTIUM}"
    coordinator_toml = write_coordinator_config(
        root / "coordinator",
        pki.coordinator,
        f"""
[policy]
register = ["{spiffe}/silo/*"]
anchors = ["{spiffe}/silo/*"]
adapters = ["{spiffe}/silo/*"]
list = ["org:bible/client", "{spiffe}/client/admin"]
train = ["{spiffe}/client/admin"]
manage = ["{spiffe}/client/admin"]
[policy.query]
"*" = ["org:bible/client"]
""",
    )
    silo = ServerThread(silo_config)
    coordinator = CoordinatorThread(coordinator_toml)

    async def describe() -> silo_pb2.DescribeResponse:
        channel = open_channel(silo.target, pki.coordinator)
        try:
            stub = silo_pb2_grpc.SiloServiceStub(channel)
            return await stub.Describe(silo_pb2.DescribeRequest(), timeout=10)
        finally:
            await channel.close()

    space = asyncio.run(describe())
    try:
        yield Net(pki, silo, coordinator, admin, space)
    finally:
        coordinator.stop()
        silo.stop()


Call = Callable[[Net, grpc.aio.Channel, TlsFiles], Awaitable[object]]


def _silo(channel: grpc.aio.Channel) -> silo_pb2_grpc.SiloServiceAsyncStub:
    return silo_pb2_grpc.SiloServiceStub(channel)


def _coord(channel: grpc.aio.Channel) -> coordinator_pb2_grpc.CoordinatorServiceAsyncStub:
    return coordinator_pb2_grpc.CoordinatorServiceStub(channel)


def _vector(net: Net) -> WireVector:
    rng = np.random.default_rng(0)
    return WireVector.of(rng.normal(size=net.space.space.dimension).astype(np.float32))


async def describe(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    return await _silo(ch).Describe(silo_pb2.DescribeRequest(), timeout=10)


async def embed(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    return await _silo(ch).Embed(silo_pb2.EmbedRequest(texts=["hello"]), timeout=10)


async def embed_anchors(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    # A named set the silo would fetch from its coordinator: admitted callers get past
    # authorization (this silo has no [coordinator], so it then refuses to fetch).
    request = silo_pb2.EmbedAnchorsRequest(anchor_set="public", version="v1", sha256="0" * 64)
    return [reply async for reply in _silo(ch).EmbedAnchors(request, timeout=10)]


async def prefer_anchors(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    # Admitted callers get past authorization; this silo's policy then refuses (it does not
    # set [receiving] anchor_preferences).
    request = silo_pb2.PreferAnchorsRequest(
        anchor_set="public", version="v1", sha256="0" * 64, count=10
    )
    return await _silo(ch).PreferAnchors(request, timeout=10)


async def search(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    request = silo_pb2.SearchRequest(vector=convert.wire_vector_to_proto(_vector(net)), k=3)
    return await _silo(ch).Search(request, timeout=10)


async def register(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    request = coordinator_pb2.RegisterSiloRequest(endpoint=net.silo.target)
    return await _coord(ch).RegisterSilo(request, timeout=10)


async def list_silos(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    return await _coord(ch).ListSilos(coordinator_pb2.ListSilosRequest(), timeout=10)


async def get_anchor_set(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    request = coordinator_pb2.GetAnchorSetRequest(name="public")
    return [reply async for reply in _coord(ch).GetAnchorSet(request, timeout=10)]


async def submit_anchors(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    # An empty stream: authorization comes before reading it. (A refusal while the client is
    # still writing can surface as INTERNAL from gRPC core instead of the status sent.)
    async def requests() -> AsyncIterator[coordinator_pb2.SubmitAnchorEmbeddingsRequest]:
        for _ in ():
            yield coordinator_pb2.SubmitAnchorEmbeddingsRequest()

    return await _coord(ch).SubmitAnchorEmbeddings(requests(), timeout=10)


async def train(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    request = coordinator_pb2.TrainAdapterRequest(
        source_space="a@1", target_space="b@2", anchor_set="public"
    )
    return [reply async for reply in _coord(ch).TrainAdapter(request, timeout=10)]


async def list_adapters(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    return await _coord(ch).ListAdapters(coordinator_pb2.ListAdaptersRequest(), timeout=10)


async def search_batch(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    request = silo_pb2.SearchBatchRequest(vectors=[convert.wire_vector_to_proto(_vector(net))], k=3)
    return await _silo(ch).SearchBatch(request, timeout=10)


async def search_many(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    query = SiloQuery(_vector(net), 3)
    request = convert.silo_queries_to_proto([query, query])
    return await _silo(ch).SearchMany(request, timeout=10)


async def federated_search_batch(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    wires = (_vector(net), _vector(net))
    space = net.space.space.space_id
    cert, key, _ca = tls.read()
    silos = (net.space.silo,)
    signed = QuerySigner.from_pem(key, cert).sign_batch(
        vectors=wires,
        source_space=space,
        silos=silos,
        k=3,
        audience=f"spiffe://{CONSORTIUM}/coordinator/hub",
    )
    batch = FederatedBatch(vectors=wires, source_space=space, k=3, silos=silos, signed=signed)
    request = convert.federated_batch_to_proto(batch)
    return await _coord(ch).FederatedSearchBatch(request, timeout=10)


async def federated_search(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    wire = _vector(net)
    space = net.space.space.space_id
    cert, key, _ca = tls.read()
    silos = [net.space.silo]
    signed = sign_query(
        vector=wire,
        source_space=space,
        silos=silos,
        k=3,
        key_pem=key,
        certificate_pem=cert,
        audience=f"spiffe://{CONSORTIUM}/coordinator/hub",
    )
    request = convert.federated_query_to_proto(
        FederatedQuery(vector=wire, source_space=space, k=3, silos=tuple(silos), signed=signed)
    )
    return await _coord(ch).FederatedSearch(request, timeout=10)


async def get_adapter(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    request = coordinator_pb2.GetAdapterRequest(adapter_id="none-such")
    return await _coord(ch).GetAdapter(request, timeout=10)


async def write_documents(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    # An empty stream, for the reason given at submit_anchors: the refusal comes before any
    # document is read, and a client still writing may see gRPC core's INTERNAL instead.
    async def requests() -> AsyncIterator[silo_pb2.WriteDocumentsRequest]:
        for _ in ():
            yield convert.documents_to_proto([Document("policy-row", "never sent")])

    return [reply async for reply in _admin(ch).WriteDocuments(requests(), timeout=30)]


async def delete_documents(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    request = silo_pb2.DeleteDocumentsRequest(doc_ids=["no-such-document"])
    return await _admin(ch).DeleteDocuments(request, timeout=10)


async def plan_migration(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    # The silo's own model: refused as nothing to migrate, but only once the caller is admitted.
    request = silo_pb2.PlanMigrationRequest(to_model="static-64", sample_size=4)
    return await _admin(ch).PlanMigration(request, timeout=60)


async def control_migration(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    # A status read: it changes nothing, but only an admitted admin may read it.
    request = silo_pb2.ControlMigrationRequest(command=silo_pb2.ControlMigrationRequest.STATUS)
    return await _admin(ch).ControlMigration(request, timeout=30)


async def manage_silo(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    # No such silo: an admitted admin gets NOT_FOUND, and the fixture's silo stays untouched.
    request = coordinator_pb2.ManageSiloRequest(
        silo="none-such", action=coordinator_pb2.ManageSiloRequest.ACTION_DISABLE
    )
    return await _coord(ch).ManageSilo(request, timeout=10)


async def record_audit_head(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    # A malformed head: an admitted silo gets INVALID_ARGUMENT (or FAILED_PRECONDITION before it
    # registered), and nothing is recorded.
    request = coordinator_pb2.RecordAuditHeadRequest(head=coordinator_pb2.AuditHead(covers=1))
    return await _coord(ch).RecordAuditHead(request, timeout=10)


async def list_audit_heads(net: Net, ch: grpc.aio.Channel, tls: TlsFiles) -> object:
    request = coordinator_pb2.ListAuditHeadsRequest(silo="kjv")
    return await _coord(ch).ListAuditHeads(request, timeout=10)


def _admin(ch: grpc.aio.Channel) -> silo_pb2_grpc.SiloAdminServiceAsyncStub:
    return silo_pb2_grpc.SiloAdminServiceStub(ch)


# (service, rpc) -> [(who, expectation, call)]; who names a certificate of the fixture.
TABLE: dict[tuple[str, str], list[tuple[str, str, Call]]] = {
    ("SiloService", "Describe"): [
        ("coordinator", ALLOWED, describe),
        ("home_client", ALLOWED, describe),
        ("other_client", DENIED, describe),
    ],
    ("SiloService", "Embed"): [
        ("home_client", ALLOWED, embed),
        ("coordinator", DENIED, embed),
        ("other_client", DENIED, embed),
    ],
    ("SiloService", "EmbedAnchors"): [
        ("coordinator", ALLOWED, embed_anchors),
        ("home_client", DENIED, embed_anchors),
    ],
    ("SiloService", "PreferAnchors"): [
        ("coordinator", ALLOWED, prefer_anchors),
        ("home_client", DENIED, prefer_anchors),
    ],
    ("SiloService", "Search"): [
        ("home_client", ALLOWED, search),
        ("other_client", DENIED, search),
        # A coordinator forwarding a query nobody signed: the silo's site policy refuses it.
        ("coordinator", DENIED, search),
    ],
    ("SiloService", "SearchBatch"): [
        ("home_client", ALLOWED, search_batch),
        ("other_client", DENIED, search_batch),
        ("coordinator", DENIED, search_batch),
    ],
    # Refused once for the whole call; a caller who may search gets each query's own outcome.
    ("SiloService", "SearchMany"): [
        ("home_client", ALLOWED, search_many),
        ("other_client", DENIED, search_many),
    ],
    ("SiloAdminService", "WriteDocuments"): [
        ("home_client", ALLOWED, write_documents),
        ("other_client", DENIED, write_documents),
        ("coordinator", DENIED, write_documents),
    ],
    ("SiloAdminService", "DeleteDocuments"): [
        ("home_client", ALLOWED, delete_documents),
        ("other_client", DENIED, delete_documents),
        ("coordinator", DENIED, delete_documents),
    ],
    ("SiloAdminService", "PlanMigration"): [
        ("home_client", ALLOWED, plan_migration),
        ("other_client", DENIED, plan_migration),
        ("coordinator", DENIED, plan_migration),
    ],
    ("SiloAdminService", "ControlMigration"): [
        ("home_client", ALLOWED, control_migration),
        ("other_client", DENIED, control_migration),
        ("coordinator", DENIED, control_migration),
    ],
    ("CoordinatorService", "RegisterSilo"): [
        ("silo", ALLOWED, register),
        ("home_client", DENIED, register),
    ],
    ("CoordinatorService", "ListSilos"): [
        ("home_client", ALLOWED, list_silos),
        ("other_client", DENIED, list_silos),
    ],
    ("CoordinatorService", "GetAnchorSet"): [
        ("silo", ALLOWED, get_anchor_set),
        ("home_client", DENIED, get_anchor_set),
    ],
    ("CoordinatorService", "SubmitAnchorEmbeddings"): [
        ("silo", ALLOWED, submit_anchors),
        ("home_client", DENIED, submit_anchors),
    ],
    ("CoordinatorService", "TrainAdapter"): [
        ("admin", ALLOWED, train),
        ("home_client", DENIED, train),
    ],
    ("CoordinatorService", "ListAdapters"): [
        ("admin", ALLOWED, list_adapters),
        ("other_client", DENIED, list_adapters),
    ],
    ("CoordinatorService", "FederatedSearch"): [
        ("home_client", ALLOWED, federated_search),
        ("other_client", DENIED, federated_search),
    ],
    ("CoordinatorService", "FederatedSearchBatch"): [
        ("home_client", ALLOWED, federated_search_batch),
        ("other_client", DENIED, federated_search_batch),
    ],
    ("CoordinatorService", "ManageSilo"): [
        ("admin", ALLOWED, manage_silo),
        ("home_client", DENIED, manage_silo),
        ("silo", DENIED, manage_silo),
    ],
    ("CoordinatorService", "GetAdapter"): [
        ("silo", ALLOWED, get_adapter),
        ("home_client", DENIED, get_adapter),
    ],
    ("CoordinatorService", "RecordAuditHead"): [
        ("silo", ALLOWED, record_audit_head),
        ("home_client", DENIED, record_audit_head),
    ],
    ("CoordinatorService", "ListAuditHeads"): [
        ("home_client", ALLOWED, list_audit_heads),
        ("other_client", DENIED, list_audit_heads),
    ],
}


def declared_rpcs() -> set[tuple[str, str]]:
    return {
        (service.name, method.name)
        for module in (silo_pb2, coordinator_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    }


def test_every_rpc_has_allowed_and_denied_rows() -> None:
    missing = []
    for rpc in sorted(declared_rpcs()):
        expectations = {expect for _who, expect, _call in TABLE.get(rpc, [])}
        if expectations != {ALLOWED, DENIED}:
            missing.append(f"{rpc[0]}.{rpc[1]}: has {sorted(expectations) or 'no rows'}")
    assert not missing, "RPCs without allowed and denied rows in TABLE:\n" + "\n".join(missing)
    assert set(TABLE) <= declared_rpcs(), "TABLE names RPCs the services do not declare"


ROWS = [
    pytest.param(rpc, who, expect, call, id=f"{rpc[1]}-{who}-{expect}")
    for rpc, rows in TABLE.items()
    for who, expect, call in rows
]


def _tls(net: Net, who: str) -> TlsFiles:
    if who == "admin":
        return net.admin
    files: TlsFiles = getattr(net.pki, who)
    return files


@pytest.mark.parametrize(("rpc", "who", "expect", "call"), ROWS)
def test_policy_row(net: Net, rpc: tuple[str, str], who: str, expect: str, call: Call) -> None:
    target = net.silo.target if rpc[0].startswith("Silo") else net.coordinator.target
    tls = _tls(net, who)

    async def run() -> grpc.StatusCode:
        channel = open_channel(target, tls)
        try:
            await call(net, channel, tls)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            return error.code()
        finally:
            await channel.close()

    code = asyncio.run(run())
    if expect == DENIED:
        assert code is grpc.StatusCode.PERMISSION_DENIED
    else:
        assert code is not grpc.StatusCode.PERMISSION_DENIED, f"{who} was refused {rpc[1]}"
        assert code is not grpc.StatusCode.UNAVAILABLE
