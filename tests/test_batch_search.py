"""Batches of federated queries (issue 13, item 3) over real gRPC with mutual TLS: a real
coordinator and four real silos (static-64) in-process, queried through the SDK. One signature
per batch, one call per silo, one merge per query; refusals of replays across single and batch.
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
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from silobridge.client.api import FederatedClient
from silobridge.client.cli import query_command, silos_command
from silobridge.client.config import load_client_config
from silobridge.core.config import TlsFiles
from silobridge.core.errors import ResourceExhausted
from silobridge.core.federation import FederatedBatchAnswer, SiloOutcome
from silobridge.core.queries import FederatedQuery, SignedQuery, SiloBatch, SiloQuery
from silobridge.core.vectors import WireVector, batch_sha256
from silobridge.rpc import convert
from silobridge.rpc.transport import open_channel
from silobridge.security.pki.ca import issue_certificate
from silobridge.security.signed_query.signing import QuerySigner
from silobridge.v1 import coordinator_pb2_grpc, silo_pb2_grpc

from .conftest import (
    CONSORTIUM,
    CoordinatorThread,
    Pki,
    ServerThread,
    ingest_kjv,
    register_silo,
    write_client_config,
    write_coordinator_config,
    write_silo_config,
)

pytestmark = pytest.mark.integration

AUDIENCE = f"spiffe://{CONSORTIUM}/coordinator/hub"
COORDINATOR_MAX_BATCH = 32
SILO_MAX_BATCH = 40
# Tokens of the coordinator's per-asker bucket; it barely refills during the tests.
COORDINATOR_BURST = 80


@dataclass
class Net:
    pki: Pki
    root: Path
    silos: dict[str, ServerThread]
    coordinator: CoordinatorThread
    space: str
    dim: int
    client_toml: Path


def _issue(pki: Pki, root: Path, role: str, name: str, org: str) -> TlsFiles:
    server = role != "client"
    files = issue_certificate(
        pki.ca,
        root / "certs" / name,
        role=role,
        name=name,
        org=org,
        dns_names=["localhost"] if server else [],
        ip_addresses=["127.0.0.1"] if server else [],
    )
    return TlsFiles(cert=files.cert, key=files.key, ca=files.ca_cert)


@pytest.fixture(scope="module")
def net(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("batch")
    silos: dict[str, ServerThread] = {}
    certificates = {name: _issue(pki, root, "silo", name, "bible") for name in "abcd"}
    # "c" serves no client of org bible (its own policy has the last word): DENIED.
    for name, count, asking in (("a", 60, "bible"), ("b", 80, "bible"), ("c", 40, "elsewhere")):
        config = write_silo_config(root / name, certificates[name], model="static-64", name=name)
        text = config.read_text()
        text = text.replace('query = ["org:bible"]', f'query = ["org:{asking}"]')
        limits = f"max_embed_texts = 64\nmax_batch = {SILO_MAX_BATCH}"
        text = text.replace("max_embed_texts = 64", limits)
        config.write_text(text)
        ingest_kjv(config, count)
        silos[name] = ServerThread(config)
    # "d" answers until a test stops it.
    config = write_silo_config(root / "d", certificates["d"], model="static-64", name="d")
    ingest_kjv(config, 50)
    silos["d"] = ServerThread(config)
    spiffe = f"spiffe://{CONSORTIUM}"
    coordinator_toml = write_coordinator_config(
        root / "coordinator",
        pki.coordinator,
        f"""
[server]
max_batch = {COORDINATOR_MAX_BATCH}
[policy]
register = ["{spiffe}/silo/*"]
list = ["{spiffe}/client/*"]
rate_per_second = 0.001
burst = {COORDINATOR_BURST}
[policy.query]
"*" = ["{spiffe}/client/*"]
""",
    )
    coordinator = CoordinatorThread(coordinator_toml)

    registered = None
    for name, silo in silos.items():
        registered = register_silo(coordinator.target, silo.target, certificates[name])
    assert registered is not None
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
            if silo.loop.is_running():
                silo.stop()


def _vectors(net: Net, count: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(count, net.dim)).astype(np.float32)


def _signer(tls: TlsFiles) -> QuerySigner:
    cert, key, _ca = tls.read()
    return QuerySigner.from_pem(key, cert)


def _client(net: Net, tls: TlsFiles | None = None) -> FederatedClient:
    toml = net.client_toml
    if tls is not None:
        toml = write_client_config(
            net.root / f"client-{tls.cert.stem}.toml",
            tls,
            coordinator=net.coordinator.target,
            home_silo=net.silos["a"].target,
            home_silo_name="a",
        )
    return FederatedClient(load_client_config(toml))


def test_a_batch_answers_as_its_single_queries_do(net: Net) -> None:
    rows = _vectors(net, 20, seed=1)
    silos = ("a", "b", "d")

    async def run() -> tuple[list[list[tuple[str, str]]], list[list[tuple[str, str]]]]:
        async with _client(net) as client:
            batch = await client.search_vectors(rows, net.space, k=7, silos=silos)
            # Split by the SDK into batches of 5 (the last of 2): the same answers, in order.
            chunked = await client.search_vectors(
                rows[:12], net.space, k=7, silos=silos, max_batch=5
            )
            assert [[(h.silo, h.doc_id) for h in hits] for hits in chunked.answers] == [
                [(h.silo, h.doc_id) for h in hits] for hits in batch.answers[:12]
            ]
            assert chunked.statuses[0].hit_count == 12 * 7
            singles = [await client.search_vector(row, net.space, k=7, silos=silos) for row in rows]
        assert [(s.silo, s.state) for s in batch.statuses] == [
            (name, SiloOutcome.OK) for name in silos
        ]
        return (
            [[(h.silo, h.doc_id) for h in hits] for hits in batch.answers],
            [[(h.silo, h.doc_id) for h in single.hits] for single in singles],
        )

    batched, single = asyncio.run(run())
    assert len(batched) == 20
    assert all(len(hits) == 7 for hits in batched)
    assert batched == single
    # Not twenty copies of one answer.
    assert len({tuple(hits) for hits in batched}) > 1
    # One audit line at each silo per batch: the batch of 20, then the three chunks.
    log = net.root / "a" / "audit" / "audit.log"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    batch_lines = [line for line in lines if line.get("rpc") == "SearchBatch"]
    assert [line.get("batch") for line in batch_lines] == [20, 5, 5, 2]
    # And one at the coordinator per batch, counting every merged hit of it.
    log = net.root / "coordinator" / "state" / "audit" / "audit.log"
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    batch_lines = [line for line in lines if line.get("rpc") == "FederatedSearchBatch"]
    assert [(line.get("batch"), line.get("results")) for line in batch_lines[:4]] == [
        (20, 20 * 7),
        (5, 5 * 7),
        (5, 5 * 7),
        (2, 2 * 7),
    ]


def test_a_batch_reports_a_denying_silo_and_still_answers(net: Net) -> None:
    rows = _vectors(net, 5, seed=2)

    async def run() -> FederatedBatchAnswer:
        async with _client(net) as client:
            return await client.search_vectors(rows, net.space, k=3, silos=("a", "c"))

    answer = asyncio.run(run())
    states = {s.silo: s.state for s in answer.statuses}
    assert states == {"a": SiloOutcome.OK, "c": SiloOutcome.DENIED}
    answers = answer.answers
    assert len(answers) == 5
    assert all(len(hits) == 3 and {h.silo for h in hits} == {"a"} for hits in answers)


def _silo_call(net: Net, silo: str, method: str, request: object) -> grpc.StatusCode:
    async def run() -> grpc.StatusCode:
        channel = open_channel(net.silos[silo].target, net.pki.coordinator)
        try:
            stub = silo_pb2_grpc.SiloServiceStub(channel)
            await getattr(stub, method)(request, timeout=10)
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            return error.code()
        finally:
            await channel.close()

    return asyncio.run(run())


def _signed_batch(
    net: Net, wires: tuple[WireVector, ...], silos: tuple[str, ...] = ("b",)
) -> SignedQuery:
    return _signer(net.pki.home_client).sign_batch(
        vectors=wires, source_space=net.space, silos=silos, k=5, audience=AUDIENCE
    )


def _batch_request(net: Net, wires: tuple[WireVector, ...], signed: SignedQuery) -> object:
    return convert.silo_batch_to_proto(SiloBatch(wires, 5, signed=signed, source_space=net.space))


def test_a_batch_signature_never_passes_as_a_single_query_nor_the_reverse(net: Net) -> None:
    wire = WireVector.of(_vectors(net, 1, seed=3)[0])
    batch_signed = _signed_batch(net, (wire,))
    single = convert.silo_query_to_proto(
        SiloQuery(wire, 5, signed=batch_signed, source_space=net.space)
    )
    assert _silo_call(net, "b", "Search", single) is grpc.StatusCode.PERMISSION_DENIED
    single_signed = _signer(net.pki.home_client)(
        vector=wire, source_space=net.space, silos=("b",), k=5, audience=AUDIENCE
    )
    as_batch = _batch_request(net, (wire,), single_signed)
    assert _silo_call(net, "b", "SearchBatch", as_batch) is grpc.StatusCode.PERMISSION_DENIED
    # Neither refusal burnt a nonce: each goes through as what it was signed for.
    assert _silo_call(net, "b", "SearchBatch", _batch_request(net, (wire,), batch_signed)) is (
        grpc.StatusCode.OK
    )
    genuine = convert.silo_query_to_proto(
        SiloQuery(wire, 5, signed=single_signed, source_space=net.space)
    )
    assert _silo_call(net, "b", "Search", genuine) is grpc.StatusCode.OK

    # And through the coordinator: a batch signature sent as a FederatedSearch is refused.
    async def forwarded() -> grpc.StatusCode:
        fresh = _signed_batch(net, (wire,))
        channel = open_channel(net.coordinator.target, net.pki.home_client)
        try:
            request = convert.federated_query_to_proto(
                FederatedQuery(wire, net.space, 5, silos=("b",), signed=fresh)
            )
            await coordinator_pb2_grpc.CoordinatorServiceStub(channel).FederatedSearch(
                request, timeout=10
            )
            return grpc.StatusCode.OK
        except grpc.aio.AioRpcError as error:
            return error.code()
        finally:
            await channel.close()

    assert asyncio.run(forwarded()) is grpc.StatusCode.PERMISSION_DENIED


def test_an_altered_reordered_or_replayed_batch_is_refused(net: Net) -> None:
    wires = tuple(WireVector.of(row) for row in _vectors(net, 4, seed=4))
    signed = _signed_batch(net, wires)
    other = WireVector.of(_vectors(net, 1, seed=5)[0])
    altered = (wires[0], other, wires[2], wires[3])
    reordered = (wires[1], wires[0], wires[2], wires[3])
    for vectors in (altered, reordered, wires[:3]):
        request = _batch_request(net, vectors, signed)
        assert _silo_call(net, "b", "SearchBatch", request) is grpc.StatusCode.PERMISSION_DENIED
    request = _batch_request(net, wires, signed)
    assert _silo_call(net, "b", "SearchBatch", request) is grpc.StatusCode.OK
    # One nonce for the whole batch: sent again, it is a replay.
    assert _silo_call(net, "b", "SearchBatch", request) is grpc.StatusCode.PERMISSION_DENIED


def test_a_batch_over_the_limit_is_refused_with_resource_exhausted(net: Net) -> None:
    async def run() -> None:
        async with _client(net) as client:
            rows = _vectors(net, COORDINATOR_MAX_BATCH + 1, seed=6)
            with pytest.raises(ResourceExhausted, match="max_batch"):
                await client.search_vectors(
                    rows, net.space, silos=("a",), max_batch=COORDINATOR_MAX_BATCH + 1
                )

    asyncio.run(run())
    # The silo enforces its own limit too.
    wires = tuple(WireVector.of(row) for row in _vectors(net, SILO_MAX_BATCH + 1, seed=7))
    request = _batch_request(net, wires, _signed_batch(net, wires))
    assert _silo_call(net, "b", "SearchBatch", request) is grpc.StatusCode.RESOURCE_EXHAUSTED


def test_the_rate_limit_counts_every_query_of_a_batch(net: Net) -> None:
    carol = _issue(net.pki, net.root, "client", "carol", "bible")

    async def run() -> None:
        async with _client(net, carol) as client:
            for count, seed in ((30, 8), (30, 9), (15, 10)):
                answered = await client.search_vectors(
                    _vectors(net, count, seed=seed), net.space, k=2, silos=("a",)
                )
                assert len(answered.answers) == count
            # 75 of 80 tokens spent: a batch of 10 is more than is left, a batch of 5 is not.
            with pytest.raises(ResourceExhausted, match="rate limit"):
                await client.search_vectors(_vectors(net, 10, seed=13), net.space, silos=("a",))
            last = await client.search_vectors(
                _vectors(net, 5, seed=11), net.space, k=2, silos=("a",)
            )
            assert len(last.answers) == 5

    asyncio.run(run())


def test_the_query_command_runs_a_file_of_queries(net: Net) -> None:
    queries = net.root / "queries.jsonl"
    queries.write_text(
        json.dumps({"id": "q1", "text": "In the beginning God created the heaven"})
        + "\n\n"
        + json.dumps({"text": "the Lord is my shepherd"})
        + "\n"
    )
    app = typer.Typer()
    app.command("query")(query_command)
    app.command("silos")(silos_command)  # two commands: "query" is then a sub-command
    args = ["query", "--config", str(net.client_toml), "--file", str(queries), "-k", "3"]
    shown = CliRunner().invoke(app, [*args, "--silos", "a,b"])
    assert shown.exit_code == 0, shown.output
    assert "q1: 'In the beginning" in shown.output
    printed = CliRunner().invoke(app, [*args, "--silos", "a", "--json"])
    assert printed.exit_code == 0, printed.output
    lines = [json.loads(line) for line in printed.stdout.splitlines() if line.strip()]
    # One object a line, in file order; a line without an id is named by its line number.
    assert [line["id"] for line in lines] == ["q1", "3"]
    assert all(len(line["hits"]) == 3 for line in lines)
    assert lines[0]["statuses"][0]["state"] == "ok"
    bad = net.root / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    refused = CliRunner().invoke(
        app, ["query", "--config", str(net.client_toml), "--file", str(bad)]
    )
    assert refused.exit_code != 0
    assert "bad.jsonl:1" in refused.output


def test_a_stopped_silo_shows_unavailable_and_the_others_answer(net: Net) -> None:
    net.silos["d"].stop()
    rows = _vectors(net, 6, seed=12)

    async def run() -> FederatedBatchAnswer:
        async with _client(net) as client:
            return await client.search_vectors(rows, net.space, k=4, silos=("a", "c", "d"))

    answer = asyncio.run(run())
    states = {s.silo: s.state for s in answer.statuses}
    assert states == {
        "a": SiloOutcome.OK,
        "c": SiloOutcome.DENIED,
        "d": SiloOutcome.UNAVAILABLE,
    }
    assert all(len(hits) == 4 for hits in answer.answers)


_wire_vectors = st.lists(
    st.builds(
        WireVector.of,
        st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=5,
)


@given(_wire_vectors, st.data())
def test_the_batch_digest_is_order_and_content_sensitive(
    vectors: list[WireVector], data: st.DataObject
) -> None:
    digest = batch_sha256(vectors)
    assert digest == batch_sha256(list(vectors))
    # Never a single vector's digest, not even for a batch of one.
    assert all(digest != vector.sha256() for vector in vectors)
    permuted = data.draw(st.permutations(vectors))
    assert (batch_sha256(permuted) == digest) == (permuted == vectors)
    position = data.draw(st.integers(0, len(vectors) - 1))
    changed = list(vectors)
    original = changed[position]
    flipped = bytes([original.data[0] ^ 0x01]) + original.data[1:]
    changed[position] = WireVector(original.dtype, original.dim, flipped)
    assert batch_sha256(changed) != digest
    assert batch_sha256(vectors[:-1]) != digest if len(vectors) > 1 else True
