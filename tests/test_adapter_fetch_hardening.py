"""Issue 11, finding 11: what makes a silo fetch an adapter from its coordinator. Only a query the
coordinator forwarded, signed and admitted, with a well-formed id; a coordinator's NOT_FOUND
reaches the asker as NOT_FOUND (no traceback in the silo's log) and is remembered for a while,
and concurrent queries for one id fetch it once. A real silo and coordinator over real mTLS.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from silobridge.core.config import TlsFiles
from silobridge.core.queries import SiloQuery
from silobridge.core.vectors import WireVector
from silobridge.rpc import convert
from silobridge.rpc.transport import open_channel
from silobridge.security.signed_query.signing import sign_query
from silobridge.v1 import silo_pb2, silo_pb2_grpc

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
SILO_ID = f"spiffe://{CONSORTIUM}/silo/kjv"
FOREIGN_SPACE = "foreign@0011223344556677"
DIM = 16


@dataclass
class Net:
    pki: Pki
    silo: ServerThread
    coordinator: CoordinatorThread
    fetched: list[str]  # the adapter ids the coordinator was asked for


@pytest.fixture
def net(pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Net]:
    spiffe = f"spiffe://{CONSORTIUM}"
    coordinator = CoordinatorThread(
        write_coordinator_config(
            tmp_path / "coordinator",
            pki.coordinator,
            f"""
[policy]
register = ["{spiffe}/silo/*"]
adapters = ["{spiffe}/silo/*"]
[policy.query]
"*" = ["{spiffe}/client/*"]
""",
        )
    )
    fetched: list[str] = []
    registry = coordinator.service.registry
    original: Callable[[str], Awaitable[object]] = registry.adapter_files

    async def counting(adapter_id: str) -> object:
        fetched.append(adapter_id)
        return await original(adapter_id)

    monkeypatch.setattr(registry, "adapter_files", counting)
    key = tmp_path / "coordinator" / "state" / "adapter-signing.key.pub"
    config = write_silo_config(
        tmp_path / "silo",
        pki.silo,
        model="static-64",
        extra=f"""accept_spaces = ["*"]
[coordinator]
endpoint = "{coordinator.target}"
adapter_key = "{key}"
""",
    )
    ingest_kjv(config, 20)
    silo = ServerThread(config)
    try:
        yield Net(pki, silo, coordinator, fetched)
    finally:
        silo.stop()
        coordinator.stop()


def _query(net: Net, adapter_id: str, *, seed: int = 0, signed_by: TlsFiles | None) -> SiloQuery:
    wire = WireVector.of(np.random.default_rng(seed).normal(size=DIM).astype(np.float32))
    signed = None
    if signed_by is not None:
        cert, key, _ca = signed_by.read()
        signed = sign_query(
            vector=wire,
            source_space=FOREIGN_SPACE,
            silos=["kjv"],
            k=3,
            key_pem=key,
            certificate_pem=cert,
            audience="spiffe://testnet/coordinator/hub",
        )
    return SiloQuery(wire, 3, signed=signed, source_space=FOREIGN_SPACE, adapter_id=adapter_id)


def _search(net: Net, tls: TlsFiles, *queries: SiloQuery) -> list[tuple[grpc.StatusCode, str]]:
    """Send ``queries`` concurrently as ``tls``; each one's status and details."""

    async def one(channel: grpc.aio.Channel, query: SiloQuery) -> tuple[grpc.StatusCode, str]:
        request: silo_pb2.SearchRequest = convert.silo_query_to_proto(query)
        try:
            await silo_pb2_grpc.SiloServiceStub(channel).Search(request, timeout=15)
            return grpc.StatusCode.OK, ""
        except grpc.aio.AioRpcError as error:
            return error.code(), error.details() or ""

    async def run() -> list[tuple[grpc.StatusCode, str]]:
        channel = open_channel(net.silo.target, tls, expect=SILO_ID)
        try:
            return list(await asyncio.gather(*(one(channel, query) for query in queries)))
        finally:
            await channel.close()

    return asyncio.run(run())


def test_an_adapter_the_coordinator_does_not_have_is_not_found_without_a_traceback(
    net: Net, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    [(code, details)] = _search(
        net, net.pki.coordinator, _query(net, "none-such", signed_by=net.pki.home_client)
    )
    assert code is grpc.StatusCode.NOT_FOUND, details
    assert "none-such" in details
    silo_tracebacks = [
        r for r in caplog.records if r.exc_info and r.name.startswith("silobridge.rpc.status")
    ]
    assert not silo_tracebacks, [r.getMessage() for r in silo_tracebacks]


def test_a_missing_adapter_is_remembered_and_concurrent_asks_fetch_once(net: Net) -> None:
    queries = [
        _query(net, "none-such", seed=seed, signed_by=net.pki.home_client) for seed in range(4)
    ]
    answers = _search(net, net.pki.coordinator, *queries)
    assert [code for code, _ in answers] == [grpc.StatusCode.NOT_FOUND] * 4
    # Four concurrent queries for one id: one fetch; asking again soon: none.
    assert net.fetched == ["none-such"]
    [(code, _)] = _search(
        net, net.pki.coordinator, _query(net, "none-such", seed=9, signed_by=net.pki.home_client)
    )
    assert code is grpc.StatusCode.NOT_FOUND
    assert net.fetched == ["none-such"]


@pytest.mark.parametrize("signed", [False, True])
def test_a_direct_caller_cannot_make_the_silo_fetch_an_adapter(net: Net, signed: bool) -> None:
    # Alice may search this silo directly, in its own space; she cannot name adapters for it.
    signer = net.pki.home_client if signed else None
    [(code, details)] = _search(
        net, net.pki.home_client, _query(net, "anything-she-likes", signed_by=signer)
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED, details
    assert "forwarded by a coordinator" in details
    assert net.fetched == []


def test_an_adapter_id_with_a_trailing_newline_is_refused_before_any_fetch(net: Net) -> None:
    [(code, details)] = _search(
        net, net.pki.coordinator, _query(net, "none-such\n", signed_by=net.pki.home_client)
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT, details
    assert "not a valid adapter id" in details
    assert net.fetched == []
