"""Coalesced silo calls over real gRPC with mutual TLS: a coordinator that lets one Search call
run per silo at a time sends the queries waiting behind it in one ``SearchMany``; every query is
still verified, admitted and audited on its own at the silo, and a refusal ends only its query.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest

from silobridge.client.api import FederatedClient
from silobridge.client.config import load_client_config
from silobridge.core.config import TlsFiles
from silobridge.core.federation import FederatedAnswer, SiloOutcome
from silobridge.core.queries import SiloQuery
from silobridge.core.vectors import WireVector
from silobridge.rpc import convert
from silobridge.rpc.transport import open_channel
from silobridge.security.signed_query.signing import QuerySigner
from silobridge.v1 import silo_pb2, silo_pb2_grpc

from .conftest import (
    CONSORTIUM,
    CoordinatorThread,
    Pki,
    ServerThread,
    _issue,
    ingest_kjv,
    register_silo,
    write_client_config,
    write_coordinator_config,
    write_silo_config,
)

pytestmark = pytest.mark.integration

AUDIENCE = f"spiffe://{CONSORTIUM}/coordinator/hub"
CONCURRENT = 48


@dataclass
class Net:
    pki: Pki
    root: Path
    silos: dict[str, ServerThread]
    coordinator: CoordinatorThread
    space: str
    dim: int
    client_toml: Path


@pytest.fixture(scope="module")
def net(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("coalesced")
    certificates = {name: _issue(pki.ca, root / "certs", "silo", name, "bible") for name in "ac"}
    silos: dict[str, ServerThread] = {}
    # "c" serves no client of org bible: each of its queries is refused (DENIED), one by one.
    for name, asking in (("a", "bible"), ("c", "elsewhere")):
        config = write_silo_config(root / name, certificates[name], model="static-64", name=name)
        config.write_text(
            config.read_text().replace('query = ["org:bible"]', f'query = ["org:{asking}"]')
        )
        ingest_kjv(config, 60)
        silos[name] = ServerThread(config)
    spiffe = f"spiffe://{CONSORTIUM}"
    coordinator_toml = write_coordinator_config(
        root / "coordinator",
        pki.coordinator,
        f"""
[server]
silo_calls_in_flight = 1
[policy]
register = ["{spiffe}/silo/*"]
list = ["{spiffe}/client/*"]
[policy.query]
"*" = ["{spiffe}/client/*"]
""",
    )
    coordinator = CoordinatorThread(coordinator_toml)

    registered = [
        register_silo(coordinator.target, s.target, certificates[n]) for n, s in silos.items()
    ][-1]
    client_toml = write_client_config(
        root / "client.toml",
        pki.home_client,
        coordinator=coordinator.target,
        home_silo=silos["a"].target,
        home_silo_name="a",
    )
    try:
        yield Net(
            pki,
            root,
            silos,
            coordinator,
            registered.space.space_id,
            registered.space.dimension,
            client_toml,
        )
    finally:
        coordinator.stop()
        for silo in silos.values():
            silo.stop()


def _audit(net: Net, silo: str) -> list[dict[str, object]]:
    log = net.root / silo / "audit" / "audit.log"
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]


def _vectors(net: Net, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, net.dim)).astype(np.float32)


def test_concurrent_federated_queries_share_silo_calls_and_keep_their_own_answers(
    net: Net,
) -> None:
    rows = _vectors(net, CONCURRENT, seed=11)
    searched_before = len([line for line in _audit(net, "a") if line.get("rpc") == "Search"])

    async def run() -> tuple[list[FederatedAnswer], list[FederatedAnswer]]:
        async with FederatedClient(load_client_config(net.client_toml)) as client:
            together = await asyncio.gather(
                *(client.search_vector(row, net.space, k=5, silos=("a", "c")) for row in rows)
            )
            # The same queries one at a time: nothing waits, every one is its own call.
            alone = [
                await client.search_vector(row, net.space, k=5, silos=("a", "c"))
                for row in rows[:8]
            ]
        return list(together), alone

    together, alone = asyncio.run(run())
    for answer in together:
        states = {status.silo: status.state for status in answer.statuses}
        assert states == {"a": SiloOutcome.OK, "c": SiloOutcome.DENIED}
        assert len(answer.hits) == 5 and {hit.silo for hit in answer.hits} == {"a"}
    # Coalescing changed no answer: each query's hits are those it gets when sent alone.
    assert [[h.doc_id for h in a.hits] for a in together[:8]] == [
        [h.doc_id for h in a.hits] for a in alone
    ]
    assert len({tuple(h.doc_id for h in a.hits) for a in together}) > 1
    assert net.coordinator.service.search.silo_calls.coalesced_calls > 0
    assert net.silos["a"].running.servicer.handled["SearchMany"] > 0
    assert net.silos["c"].running.servicer.handled["SearchMany"] > 0
    # One audit line per query at the answering silo, coalesced or not, under its signer.
    searched = [line for line in _audit(net, "a") if line.get("rpc") == "Search"]
    assert len(searched) - searched_before == CONCURRENT + 8
    fresh = searched[searched_before:]
    assert all(line["who"] == f"spiffe://{CONSORTIUM}/client/alice" for line in fresh)
    assert all(line["via"] == AUDIENCE and line["allowed"] for line in fresh)
    # The silo that denies them refused each under the signer (repeats folded into one line).
    refused = [line for line in _audit(net, "c") if line.get("rpc") == "Search"]
    assert refused and not any(line["allowed"] for line in refused)
    assert {line["who"] for line in refused} == {f"spiffe://{CONSORTIUM}/client/alice"}


def _signed(net: Net, wire: WireVector, silos: tuple[str, ...] = ("a",)) -> SiloQuery:
    cert, key, _ca = net.pki.home_client.read()
    signed = QuerySigner.from_pem(key, cert)(
        vector=wire, source_space=net.space, silos=silos, k=5, audience=AUDIENCE
    )
    return SiloQuery(wire, 5, signed=signed, source_space=net.space)


def _search_many(
    net: Net, tls: TlsFiles, queries: list[SiloQuery]
) -> silo_pb2.SearchManyResponse | grpc.StatusCode:
    async def run() -> silo_pb2.SearchManyResponse | grpc.StatusCode:
        channel = open_channel(net.silos["a"].target, tls)
        try:
            stub = silo_pb2_grpc.SiloServiceStub(channel)
            response: silo_pb2.SearchManyResponse = await stub.SearchMany(
                convert.silo_queries_to_proto(queries), timeout=10
            )
            return response
        except grpc.aio.AioRpcError as error:
            return error.code()
        finally:
            await channel.close()

    return asyncio.run(run())


def test_a_forged_or_replayed_query_is_refused_alone_inside_a_shared_call(net: Net) -> None:
    wires = [WireVector.of(row) for row in _vectors(net, 3, seed=12)]
    genuine, other = _signed(net, wires[0]), _signed(net, wires[1])
    # The signature of one vector over another: the silo's own check refuses it.
    forged = SiloQuery(wires[2], 5, signed=other.signed, source_space=net.space)
    response = _search_many(net, net.pki.coordinator, [genuine, forged, other, genuine])
    assert isinstance(response, silo_pb2.SearchManyResponse)
    outcomes = convert.search_outcomes_from_proto(response)
    assert isinstance(outcomes[0], list) and len(outcomes[0]) == 5
    assert isinstance(outcomes[1], tuple) and outcomes[1][0] == "PERMISSION_DENIED"
    assert isinstance(outcomes[2], list)
    # Its nonce was spent by the first: sent again in the same call, it is a replay.
    assert isinstance(outcomes[3], tuple) and outcomes[3][0] == "PERMISSION_DENIED"
    assert "replay" in outcomes[3][1] or "nonce" in outcomes[3][1]


def test_a_peer_that_may_not_search_is_refused_once_for_the_whole_call(net: Net) -> None:
    before = len(_audit(net, "a"))
    wire = WireVector.of(_vectors(net, 1, seed=13)[0])
    queries = [SiloQuery(wire, 5, source_space=net.space)] * 5
    assert _search_many(net, net.pki.other_client, queries) is grpc.StatusCode.PERMISSION_DENIED
    assert len(_audit(net, "a")) - before == 1
