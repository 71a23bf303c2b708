"""Abuse limits (issue 11, finding 8), over real gRPC with mutual TLS: per-peer budgets on every
RPC before authorization, summarised refusal lines, cached health probes, and bounded anchor
submissions with a stream deadline."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from silobridge.audit.verify import verify_log
from silobridge.core.config import TlsFiles
from silobridge.rpc import convert
from silobridge.rpc.transport import open_channel
from silobridge.security.pki.ca import issue_certificate
from silobridge.v1 import coordinator_pb2, coordinator_pb2_grpc, silo_pb2, silo_pb2_grpc

from . import test_policy_table as policy_table
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

SPIFFE = f"spiffe://{CONSORTIUM}"
PEER_BURST = 5
SILO_ID = f"{SPIFFE}/silo/kjv"
COORDINATOR_ID = f"{SPIFFE}/coordinator/hub"
ANCHOR_TEXTS = [f"public anchor text number {i} about rivers and code" for i in range(120)]


def _with_limits(config: Path, limits: str) -> Path:
    """``config`` with extra ``[limits]`` keys (write_silo_config writes the table itself)."""
    text = config.read_text().replace("[limits]\n", f"[limits]\n{limits}\n", 1)
    config.write_text(text)
    return config


# --- per-peer budgets on every RPC, before authorization ----------------------------------------


@pytest.fixture(scope="module")
def tight(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[policy_table.Net]:
    """A silo and a coordinator allowing each peer PEER_BURST calls, refilled very slowly."""
    root = tmp_path_factory.mktemp("tight")
    admin_files = issue_certificate(pki.ca, root / "admin", role="client", name="admin", org="hub")
    admin = TlsFiles(cert=admin_files.cert, key=admin_files.key, ca=admin_files.ca_cert)
    silo_config = _with_limits(
        write_silo_config(root / "silo", pki.silo, model="static-64"),
        f"peer_rate_per_second = 0.001\npeer_burst = {PEER_BURST}",
    )
    ingest_kjv(silo_config, 20)
    coordinator_toml = write_coordinator_config(
        root / "coordinator",
        pki.coordinator,
        f"""
[policy]
register = ["{SPIFFE}/silo/*"]
anchors = ["{SPIFFE}/silo/*"]
list = ["org:bible/client"]
peer_rate_per_second = 0.001
peer_burst = {PEER_BURST}
[policy.query]
"*" = ["org:bible/client"]
""",
    )
    silo = ServerThread(silo_config)
    coordinator = CoordinatorThread(coordinator_toml)
    space = silo_pb2.DescribeResponse(space=convert.space_to_proto(silo.service.space), silo="kjv")
    try:
        yield policy_table.Net(pki, silo, coordinator, admin, space)
    finally:
        coordinator.stop()
        silo.stop()


FLOODED = sorted(policy_table.TABLE)


@pytest.mark.parametrize("rpc", FLOODED, ids=[f"{service}.{name}" for service, name in FLOODED])
def test_an_unauthorized_peer_flooding_any_rpc_runs_out_of_budget(
    tight: policy_table.Net, rpc: tuple[str, str]
) -> None:
    service, name = rpc
    # A peer of its own per RPC, allowed nothing anywhere: its budget is untouched so far.
    who = f"flood-{name.lower()}"
    files = issue_certificate(
        tight.pki.ca, tight.pki.root / "flood" / who, role="client", name=who, org="elsewhere"
    )
    tls = TlsFiles(cert=files.cert, key=files.key, ca=files.ca_cert)
    call = policy_table.TABLE[rpc][0][2]
    silo = service.startswith("Silo")
    target = tight.silo.target if silo else tight.coordinator.target
    expect = SILO_ID if silo else COORDINATOR_ID

    async def flood() -> list[grpc.StatusCode]:
        codes = []
        channel = open_channel(target, tls, expect=expect)
        try:
            for _ in range(PEER_BURST + 3):
                try:
                    await call(tight, channel, tls)
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
        finally:
            await channel.close()
        return codes

    codes = asyncio.run(flood())
    assert grpc.StatusCode.RESOURCE_EXHAUSTED not in codes[:PEER_BURST], codes
    assert codes[PEER_BURST:] == [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3, codes


# --- refusals are summarised in the audit log -----------------------------------------------


def _audit_lines(log: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in log.read_bytes().splitlines()]


def test_a_flood_of_denied_calls_grows_the_audit_log_by_a_bounded_amount(
    pki: Pki, tmp_path: Path
) -> None:
    config = write_silo_config(tmp_path / "silo", pki.silo, model="static-64")
    ingest_kjv(config, 10)
    log = tmp_path / "silo" / "audit" / "audit.log"
    silo = ServerThread(config)
    floods = 1_000

    async def flood() -> list[grpc.StatusCode]:
        # mallory may not Describe this silo
        channel = open_channel(silo.target, pki.other_client, expect=SILO_ID)
        stub = silo_pb2_grpc.SiloServiceStub(channel)
        codes = []
        try:
            for _ in range(floods):
                try:
                    await stub.Describe(silo_pb2.DescribeRequest(), timeout=10)
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
        finally:
            await channel.close()
        return codes

    try:
        before = len(log.read_bytes().splitlines()) if log.exists() else 0
        codes = asyncio.run(flood())
    finally:
        silo.stop()  # closing writes the pending summaries
    assert set(codes) == {grpc.StatusCode.PERMISSION_DENIED}
    lines = _audit_lines(log)
    added = lines[before:]
    refusals = [line for line in added if line.get("rpc") == "Describe"]
    # Every refusal is accounted for: the first written at once, the rest as a count.
    assert sum(int(str(line.get("repeated", 1))) for line in refusals) == floods
    assert len(refusals) <= 5, f"{len(refusals)} refusal lines for {floods} refusals"
    assert len(added) <= 10, f"{len(added)} audit lines for {floods} refused calls"
    report = verify_log(log, None, max_tail=None)
    assert report.ok, report


# --- health probes are cached -----------------------------------------------------------------


@dataclass
class Consortium:
    pki: Pki
    silo: ServerThread
    coordinator: CoordinatorThread
    dim: int
    anchor_set: str
    version: str
    sha256: str
    count: int


@pytest.fixture(scope="module")
def consortium(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Consortium]:
    root = tmp_path_factory.mktemp("consortium")
    coordinator_toml = write_coordinator_config(
        root / "coordinator",
        pki.coordinator,
        f"""
[server]
probe_cache_seconds = 60.0
anchor_stream_seconds = 2.0
[policy]
register = ["{SPIFFE}/silo/*"]
anchors = ["{SPIFFE}/silo/*"]
list = ["org:bible/client"]
[policy.query]
"*" = ["org:bible/client"]
""",
    )
    coordinator = CoordinatorThread(coordinator_toml)
    info, _created = coordinator.service.anchors.catalogue.build(
        "public", ANCHOR_TEXTS, source="test"
    )
    config = write_silo_config(
        root / "silo",
        pki.silo,
        model="static-64",
        extra=f'\n[coordinator]\nendpoint = "{coordinator.target}"\n',
    )
    ingest_kjv(config, 20)
    silo = ServerThread(config)

    async def register() -> coordinator_pb2.RegisterSiloResponse:
        channel = open_channel(coordinator.target, pki.silo, expect=COORDINATOR_ID)
        try:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            request = coordinator_pb2.RegisterSiloRequest(endpoint=silo.target)
            return await stub.RegisterSilo(request, timeout=10)
        finally:
            await channel.close()

    registered = asyncio.run(register())
    try:
        yield Consortium(
            pki,
            silo,
            coordinator,
            registered.space.dimension,
            info.name,
            info.version,
            info.sha256,
            info.count,
        )
    finally:
        coordinator.stop()
        silo.stop()


def test_list_silos_reuses_a_recent_probe_of_each_silo(consortium: Consortium) -> None:
    handled = consortium.silo.running.servicer.handled
    before = handled["Describe"]

    async def list_many() -> None:
        channel = open_channel(
            consortium.coordinator.target, consortium.pki.home_client, expect=COORDINATOR_ID
        )
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        try:
            # Concurrent callers share one probe in flight; later ones reuse its answer.
            concurrent = await asyncio.gather(
                *(stub.ListSilos(coordinator_pb2.ListSilosRequest(), timeout=10) for _ in range(10))
            )
            for reply in concurrent:
                assert [(s.silo, s.healthy) for s in reply.silos] == [("kjv", True)]
            for _ in range(20):
                reply = await stub.ListSilos(coordinator_pb2.ListSilosRequest(), timeout=10)
                assert [(s.silo, s.healthy) for s in reply.silos] == [("kjv", True)]
        finally:
            await channel.close()

    asyncio.run(list_many())
    assert handled["Describe"] - before <= 1, f"{handled['Describe'] - before} Describes"


# --- SubmitAnchorEmbeddings: bounded chunks, a stream deadline --------------------------------


def _rows(count: int, dim: int, seed: int = 0) -> np.ndarray:
    rows = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    unit: np.ndarray = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return unit


def _chunk(
    net: Consortium, offset: int, rows: np.ndarray
) -> coordinator_pb2.SubmitAnchorEmbeddingsRequest:
    return coordinator_pb2.SubmitAnchorEmbeddingsRequest(
        anchor_set=net.anchor_set,
        version=net.version,
        space=convert.space_to_proto(net.silo.service.space),
        offset=offset,
        vectors=[convert.vector_to_proto(row) for row in rows],
    )


def _stored(net: Consortium) -> object:
    fingerprint = net.silo.service.space.fingerprint
    return net.coordinator.service.state.anchor_embeddings(
        net.anchor_set, net.version, fingerprint, silo=net.silo.service.config.name
    )


def test_a_submission_padded_with_empty_chunks_is_refused(consortium: Consortium) -> None:
    net = consortium
    empty = _chunk(net, 0, np.zeros((0, net.dim), np.float32))
    whole = _chunk(net, 0, _rows(net.count, net.dim))

    async def submit() -> tuple[grpc.StatusCode, str]:
        channel = open_channel(net.coordinator.target, net.pki.silo, expect=COORDINATOR_ID)
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        call = stub.SubmitAnchorEmbeddings(timeout=60)
        try:
            for _ in range(10_000):
                await call.write(empty)
            await call.write(whole)
            await call.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the server ended the call while we wrote: its status is below
        try:
            await call
            return grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        finally:
            await channel.close()

    code, details = asyncio.run(submit())
    assert code is grpc.StatusCode.INVALID_ARGUMENT, (code, details)
    assert "empty" in details
    assert _stored(net) is None


def test_a_stalled_submission_ends_at_the_stream_deadline(consortium: Consortium) -> None:
    net = consortium

    async def stall() -> tuple[grpc.StatusCode, str]:
        channel = open_channel(net.coordinator.target, net.pki.silo, expect=COORDINATOR_ID)
        stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        call = stub.SubmitAnchorEmbeddings()  # no client deadline: only the server's
        try:
            await call.write(_chunk(net, 0, _rows(10, net.dim)))
            # ... and then nothing more, never done writing. The configured deadline is 2 s.
            await asyncio.wait_for(call, timeout=20)
            return grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""
        finally:
            call.cancel()
            await channel.close()

    code, details = asyncio.run(stall())
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED, (code, details)
    assert "2" in details and "s" in details
    assert _stored(net) is None


# --- EmbedAnchors names an anchor set; the silo fetches and checks it --------------------------


def _embed_anchors(
    net: Consortium, name: str, version: str, sha256: str
) -> tuple[grpc.StatusCode, str, list[silo_pb2.EmbedAnchorsResponse]]:
    async def run() -> tuple[grpc.StatusCode, str, list[silo_pb2.EmbedAnchorsResponse]]:
        channel = open_channel(net.silo.target, net.pki.coordinator, expect=SILO_ID)
        stub = silo_pb2_grpc.SiloServiceStub(channel)
        request = silo_pb2.EmbedAnchorsRequest(anchor_set=name, version=version, sha256=sha256)
        replies: list[silo_pb2.EmbedAnchorsResponse] = []
        try:
            async for reply in stub.EmbedAnchors(request, timeout=60):
                replies.append(reply)
            return grpc.StatusCode.OK, "", replies
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or "", replies
        finally:
            await channel.close()

    return asyncio.run(run())


def test_embed_anchors_embeds_the_named_set_fetched_from_the_coordinator(
    consortium: Consortium,
) -> None:
    net = consortium
    code, details, replies = _embed_anchors(net, net.anchor_set, net.version, net.sha256)
    assert code is grpc.StatusCode.OK, details
    assert [reply.offset for reply in replies] == sorted({reply.offset for reply in replies})
    vectors = np.stack([convert.vector_from_proto(v) for r in replies for v in r.vectors])
    expected = net.silo.service.embedder.embed(ANCHOR_TEXTS)
    assert vectors.shape == (net.count, net.dim)
    np.testing.assert_allclose(vectors, expected, atol=1e-5)


def test_embed_anchors_refuses_an_unknown_set_and_a_wrong_hash(consortium: Consortium) -> None:
    net = consortium
    handled = net.silo.running.servicer.handled
    code, details, replies = _embed_anchors(net, "no-such-set", "v1", "0" * 64)
    assert code is grpc.StatusCode.NOT_FOUND, details
    assert not replies
    code, details, replies = _embed_anchors(net, net.anchor_set, net.version, "f" * 64)
    assert code is grpc.StatusCode.FAILED_PRECONDITION, details
    assert "sha256" in details
    assert not replies
    assert handled["EmbedAnchors"] >= 2
