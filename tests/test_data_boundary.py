"""The data boundary: every message a server sends is recorded, and none carries a silo's
document text, document vectors or fields outside its disclosure policy.

Three parts: the wire recorder on a real mTLS server (all four RPC shapes), the pure checker on
real protobuf messages, and a three-silo consortium of real processes whose recorded traffic is
checked against each silo's own docstore, then made to fail by widening a silo's policy.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import stat
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt
import pytest
import typer
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from localnet import ClientSpec, LocalConsortium, SiloSpec
from typer.testing import CliRunner

from silobridge.audit.boundary_check import check_boundary
from silobridge.audit.boundary_report import boundary_report, report_to_dict
from silobridge.audit.cli import boundary_command
from silobridge.audit.wire import ENV_VAR, recording_interceptors
from silobridge.client.api import FederatedClient
from silobridge.client.config import load_client_config
from silobridge.core.disclosure import DisclosurePolicy
from silobridge.core.federation import FederatedAnswer
from silobridge.core.listings import SiloListing
from silobridge.evaluation.corpus import load_records
from silobridge.rpc import transport
from silobridge.rpc.convert import vector_to_proto
from silobridge.silo_agent.store.docstore import DocStore
from silobridge.v1 import (
    common_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    silo_pb2,
    silo_pb2_grpc,
)

from .conftest import Pki

pytestmark = pytest.mark.integration

Context = grpc.aio.ServicerContext[Any, Any]
FloatMatrix = npt.NDArray[np.float32]


def read_records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --- the recorder on a real mTLS server -------------------------------------------------------


class _Hub(coordinator_pb2_grpc.CoordinatorServiceServicer):
    """Answers in each of the shapes grpc.aio allows; what it sends is what must be recorded."""

    async def ListSilos(
        self, request: coordinator_pb2.ListSilosRequest, context: Context
    ) -> coordinator_pb2.ListSilosResponse:
        policy = common_pb2.DisclosurePolicy(disclose_fields=["book"], max_k=50)
        return coordinator_pb2.ListSilosResponse(
            silos=[coordinator_pb2.SiloInfo(silo="kjv", policy=policy)]
        )

    async def GetAnchorSet(
        self, request: coordinator_pb2.GetAnchorSetRequest, context: Context
    ) -> AsyncIterator[coordinator_pb2.GetAnchorSetResponse]:
        for offset in range(3):
            yield coordinator_pb2.GetAnchorSetResponse(
                name=request.name, texts=[f"anchor {offset}"], offset=offset, total=3
            )

    # The reader/writer style (``context.write``) instead of a generator: the stub's signature
    # only knows generators.
    async def TrainAdapter(  # type: ignore[override]
        self, request: coordinator_pb2.TrainAdapterRequest, context: Context
    ) -> None:
        await context.write(coordinator_pb2.TrainAdapterResponse(stage="fit"))
        adapter = coordinator_pb2.AdapterInfo(adapter_id="a1", kind=request.kind)
        await context.write(coordinator_pb2.TrainAdapterResponse(stage="done", adapter=adapter))

    async def ListAdapters(
        self, request: coordinator_pb2.ListAdaptersRequest, context: Context
    ) -> coordinator_pb2.ListAdaptersResponse:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "not for you")

    async def RegisterSilo(
        self, request: coordinator_pb2.RegisterSiloRequest, context: Context
    ) -> coordinator_pb2.RegisterSiloResponse:
        raise RuntimeError(f"crashed near {request.endpoint}")

    async def SubmitAnchorEmbeddings(
        self,
        request_iterator: AsyncIterator[coordinator_pb2.SubmitAnchorEmbeddingsRequest],
        context: Context,
    ) -> coordinator_pb2.SubmitAnchorEmbeddingsResponse:
        stored = 0
        async for chunk in request_iterator:
            stored += len(chunk.vectors)
        return coordinator_pb2.SubmitAnchorEmbeddingsResponse(stored=stored)


class _Silo(silo_pb2_grpc.SiloServiceServicer):
    async def EmbedAnchors(
        self, request: silo_pb2.EmbedAnchorsRequest, context: Context
    ) -> AsyncIterator[silo_pb2.EmbedAnchorsResponse]:
        # The named set's three texts, in two replies, as a silo streams them back.
        for offset, lengths in ((0, (1, 2)), (2, (3,))):
            vectors = [vector_to_proto(np.full(4, n, np.float32)) for n in lengths]
            yield silo_pb2.EmbedAnchorsResponse(vectors=vectors, offset=offset, total=3)


async def _exchange(pki: Pki, name: str) -> list[Message]:
    """Serve with ``recording_interceptors(name)``; make one call of each shape as alice."""
    server = transport.create_server(interceptors=recording_interceptors(name))
    # Only the methods a test calls are implemented (the stubs declare every one abstract).
    coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(_Hub(), server)  # type: ignore[abstract]
    silo_pb2_grpc.add_SiloServiceServicer_to_server(_Silo(), server)  # type: ignore[abstract]
    port = transport.bind_server(server, "127.0.0.1:0", pki.coordinator)
    await server.start()
    channel = transport.open_channel(f"127.0.0.1:{port}", pki.home_client)
    try:
        hub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
        silo = silo_pb2_grpc.SiloServiceStub(channel)
        received: list[Message] = [await hub.ListSilos(coordinator_pb2.ListSilosRequest())]
        received += [
            m async for m in hub.GetAnchorSet(coordinator_pb2.GetAnchorSetRequest(name="p"))
        ]
        train = coordinator_pb2.TrainAdapterRequest(kind="affine")
        received += [m async for m in hub.TrainAdapter(train)]

        async def chunks() -> AsyncIterator[coordinator_pb2.SubmitAnchorEmbeddingsRequest]:
            for _ in range(2):
                yield coordinator_pb2.SubmitAnchorEmbeddingsRequest(
                    vectors=[vector_to_proto(np.ones(4, np.float32))]
                )

        received.append(await hub.SubmitAnchorEmbeddings(chunks()))

        anchors = silo_pb2.EmbedAnchorsRequest(anchor_set="p", version="v1", sha256="0" * 64)
        received += [m async for m in silo.EmbedAnchors(anchors)]
        # Failed calls send a status instead of a message; its details are recorded.
        with pytest.raises(grpc.aio.AioRpcError):
            await hub.ListAdapters(coordinator_pb2.ListAdaptersRequest())
        with pytest.raises(grpc.aio.AioRpcError):
            await hub.RegisterSilo(coordinator_pb2.RegisterSiloRequest(endpoint="h:1"))
        # A service the server does not have is refused before any handler runs: no record.
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            # The typeshed stub of HealthStub declares no methods: call the method by its path.
            await channel.unary_unary(
                "/grpc.health.v1.Health/Check",
                request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
                response_deserializer=health_pb2.HealthCheckResponse.FromString,
            )(health_pb2.HealthCheckRequest())
        assert missing.value.code() is grpc.StatusCode.UNIMPLEMENTED
    finally:
        await channel.close()
        await server.stop(None)
    return received


def test_recorder_writes_every_sent_message_of_every_rpc_shape(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "wire"))
    with caplog.at_level(logging.WARNING, logger="silobridge.audit.wire"):
        received = asyncio.run(_exchange(pki, "hub"))
    assert "WIRE RECORDING IS ON" in caplog.text
    path = tmp_path / "wire" / "hub.jsonl"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    records = read_records(path)
    methods = [record["rpc"].rsplit("/", 1)[1] for record in records]
    assert methods == ["ListSilos", *["GetAnchorSet"] * 3, *["TrainAdapter"] * 2,
                       "SubmitAnchorEmbeddings", *["EmbedAnchors"] * 2, "ListAdapters",
                       "RegisterSilo"]  # fmt: skip
    assert {record["server"] for record in records} == {"hub"}
    assert {record["peer"] for record in records} == {"spiffe://testnet/client/alice"}
    # Each line is the message the client received, field for field (bytes as base64).
    for line, message in zip(records, received, strict=False):
        assert json_format.ParseDict(line["message"], type(message)()) == message
    assert [line["status"] for line in records[len(received) :]] == [
        {"code": "PERMISSION_DENIED", "details": "not for you"},
        {"code": "UNKNOWN", "details": "Unexpected <class 'RuntimeError'>: crashed near h:1"},
    ]
    anchors = records[len(received) - 2]["message"]["vectors"]
    assert np.frombuffer(base64.b64decode(anchors[1]["data"]), "<f4").tolist() == [2.0] * 4

    # A restarted server appends to the same file.
    asyncio.run(_exchange(pki, "hub"))
    assert len(read_records(path)) == 2 * len(records)


def test_recorder_is_off_without_the_variable_and_refuses_unsafe_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert recording_interceptors("hub") == []
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    from silobridge.core.errors import ConfigError

    with pytest.raises(ConfigError, match="file name"):
        recording_interceptors("../hub")
    assert list(tmp_path.iterdir()) == []


# --- the checker on real messages --------------------------------------------------------------

TEXTS = {
    "Gen.1.1": "In the beginning God created the heaven and the earth.",
    "John.11.35": "Jesus wept.",
    "Gen.1.3": "And God said, Let there be light: and there was light.",
}
METADATA_KEYS = {"book", "chapter", "verse"}


def _unit_rows(count: int, dim: int, seed: int) -> FloatMatrix:
    rows = np.random.default_rng(seed).normal(size=(count, dim)).astype(np.float32)
    return np.asarray(rows / np.linalg.norm(rows, axis=1, keepdims=True), dtype=np.float32)


DOC_VECTORS = _unit_rows(len(TEXTS), 16, seed=1)


def record(message: Message, rpc: str, server: str = "silo-kjv") -> dict[str, Any]:
    """A line exactly as the wire recorder writes it."""
    return {
        "server": server,
        "rpc": rpc,
        "peer": "spiffe://testnet/coordinator/hub",
        "message": json_format.MessageToDict(message, preserving_proto_field_name=True),
    }


def search_reply(fields: Mapping[str, str], doc_id: str = "Gen.1.1") -> dict[str, Any]:
    hit = common_pb2.Hit(doc_id=doc_id, score=0.9, fields=dict(fields))
    return record(silo_pb2.SearchResponse(hits=[hit]), "/silobridge.v1.SiloService/Search")


def embed_reply(vectors: FloatMatrix) -> dict[str, Any]:
    message = silo_pb2.EmbedResponse(vectors=[vector_to_proto(v) for v in vectors])
    return record(message, "/silobridge.v1.SiloService/Embed")


def check(records: list[dict[str, Any]], disclosed: tuple[str, ...] = ("book",)) -> list[str]:
    return check_boundary(
        records,
        silo="kjv",
        corpus_texts=TEXTS,
        corpus_vectors=DOC_VECTORS,
        disclosed=disclosed,
        all_metadata_keys=METADATA_KEYS,
    )


def test_allowed_traffic_passes() -> None:
    anchors = silo_pb2.EmbedAnchorsResponse(
        vectors=[vector_to_proto(v) for v in _unit_rows(20, 16, seed=2)]
    )
    describe = silo_pb2.DescribeResponse(
        silo="kjv", policy=common_pb2.DisclosurePolicy(disclose_fields=["book"], max_k=50)
    )
    records = [
        search_reply({"book": "Gen"}),
        embed_reply(_unit_rows(2, 16, seed=3)),  # a caller's own query vectors
        record(anchors, "/silobridge.v1.SiloService/EmbedAnchors"),
        record(describe, "/silobridge.v1.SiloService/Describe"),
    ]
    assert check(records) == []


def test_document_text_is_reported_whole_inside_or_as_a_fragment() -> None:
    genesis = TEXTS["Gen.1.1"]
    assert "Gen.1.1" in check([search_reply({"book": genesis})])[0]
    assert check([search_reply({"book": f"see: {genesis} (KJV)"})])
    assert "John.11.35" in check([search_reply({"book": "Jesus wept."})])[0]
    snippet = genesis[:45]
    undisclosed = check([search_reply({"verse": snippet}, doc_id="x")])
    assert any("fragment" in violation for violation in undisclosed)
    # A disclosed field may quote a fragment (the policy says so), never a whole text.
    assert check([search_reply({"book": snippet})]) == []


def test_document_vectors_are_reported_even_with_float_noise() -> None:
    noisy = DOC_VECTORS[2] + np.float32(1e-3) * _unit_rows(1, 16, seed=4)[0]
    violations = check([embed_reply(np.stack([_unit_rows(1, 16, seed=5)[0], noisy]))])
    assert len(violations) == 1 and "document vector 2" in violations[0]
    # Another space's dimension cannot be compared, and is not reported.
    assert check([embed_reply(_unit_rows(2, 8, seed=6))]) == []


def test_undisclosed_fields_are_reported_for_the_silos_own_hits_only() -> None:
    # Protobuf maps have no order: sort, so 'chapter' comes before 'extra'.
    violations = sorted(check([search_reply({"book": "Gen", "chapter": "1", "extra": "x"})]))
    assert len(violations) == 2
    assert "metadata field 'chapter'" in violations[0]
    assert "field (not metadata) 'extra'" in violations[1]
    # The coordinator relays merged hits: this silo's are held to its policy, others' are not.
    merged = coordinator_pb2.FederatedSearchResponse(
        hits=[
            coordinator_pb2.FederatedHit(silo="kjv", hit=common_pb2.Hit(fields={"verse": "1"})),
            coordinator_pb2.FederatedHit(silo="web", hit=common_pb2.Hit(fields={"verse": "2"})),
        ]
    )
    relayed = record(merged, "/silobridge.v1.CoordinatorService/FederatedSearch", "coordinator-hub")
    (violation,) = check([relayed])
    assert "hits[0]" in violation and "'verse'" in violation


def test_a_failed_calls_details_are_checked_too() -> None:
    status = {"code": "UNKNOWN", "details": f"Unexpected error near '{TEXTS['Gen.1.3']}'"}
    failed = {"server": "silo-kjv", "rpc": "/silobridge.v1.SiloService/Search", "status": status}
    (violation,) = check([failed])
    assert "status.details" in violation and "Gen.1.3" in violation
    assert check([dict(failed, status={"code": "NOT_FOUND", "details": "no such doc"})]) == []


def test_unreadable_vectors_and_unrecorded_messages_are_reported() -> None:
    bad = embed_reply(DOC_VECTORS[:1])
    bad["message"]["vectors"][0]["dim"] = 15
    odd = dict(bad, message=None)
    violations = check([bad, odd])
    assert "cannot read" in violations[0] and "not recorded" in violations[1]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    message=st.dictionaries(
        st.sampled_from(["data", "dim", "dtype", "doc_id", "fields", "hit", "silo", "x"]),
        json_values,
    ),
    server=st.sampled_from(["silo-kjv", "kjv", "coordinator-hub", ""]),
)
def test_any_recorded_line_is_checked_without_crashing(
    message: dict[str, Any], server: str
) -> None:
    assert isinstance(check([{"server": server, "rpc": "/x", "message": message}]), list)


@settings(max_examples=100, deadline=None)
@given(
    doc=st.sampled_from(sorted(TEXTS)),
    prefix=st.text(max_size=20),
    suffix=st.text(max_size=20),
    field=st.sampled_from(["book", "chapter", "note"]),
)
def test_a_document_text_anywhere_in_a_hit_is_always_reported(
    doc: str, prefix: str, suffix: str, field: str
) -> None:
    text = TEXTS[doc]
    value = f"{prefix}{text}{suffix}" if len(text) >= 20 else text
    violations = check([search_reply({field: value})], disclosed=("book", "chapter", "note"))
    assert any(doc in violation for violation in violations)


def test_report_fills_the_design_table_and_flags_surprising_policies() -> None:
    def view(silo: str, endpoint: str, policy: DisclosurePolicy | None) -> SiloListing:
        return SiloListing(
            silo, endpoint, f"org-{silo}", None, policy is not None, 0, "", 0, policy=policy
        )

    quiet = DisclosurePolicy((), False, ("*",), 50)
    loud = DisclosurePolicy(("book",), True, (), 20)
    report = boundary_report(
        [view("pydocs", "h:1", quiet), view("kjv", "h:2", loud), view("web", "h:3", None)],
        client="spiffe://demo/client/alice (org pyorg)",
        home_endpoint="h:1",
        coordinator="h:9",
    )
    data = report_to_dict(report)
    flows = {row["flow"]: row for row in data["flows"]}
    assert [row["flow"] for row in data["flows"]] == [
        "anchor texts", "anchor embeddings", "query embedding", "query vector", "hits",
        "adapter artifacts", "anchor preferences", "translated queries kept by a silo",
    ]  # fmt: skip
    assert "pydocs" in flows["query embedding"]["path"]
    assert not flows["query embedding"]["surprising"]
    assert "kjv" in flows["query vector"]["never"] and flows["query vector"]["surprising"]
    assert "kjv: book" in flows["hits"]["content"] and flows["hits"]["surprising"]
    surprising = {row["party"].split()[2]: row["surprising"] for row in data["parties"][3:]}
    assert surprising == {"pydocs": False, "kjv": True, "web": True}
    quiet_only = boundary_report(
        [view("pydocs", "h:1", quiet)], client="c", home_endpoint="h:1", coordinator="h:9"
    )
    assert not any(row.surprising for row in [*quiet_only.flows, *quiet_only.parties])


# --- a whole consortium, recorded -----------------------------------------------------------

ANCHORS = 1000


@dataclass
class Net:
    consortium: LocalConsortium
    specs: dict[str, SiloSpec]
    wire: Path
    queries: list[str]  # WEB verses whose KJV translations the kjv silo holds


def _write_jsonl(path: Path, records: list[tuple[str, str, dict[str, str]]]) -> Path:
    with path.open("w") as handle:
        for doc_id, text, metadata in records:
            handle.write(json.dumps({"id": doc_id, "text": text, "metadata": metadata}) + "\n")
    return path


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("boundary")
    corpora = root / "corpora"
    corpora.mkdir()
    kjv, web = load_records("kjv"), load_records("web")
    kept = list(range(0, len(kjv), 31))[:1000]
    kjv_file = _write_jsonl(
        corpora / "kjv.jsonl", [(kjv[i].id, kjv[i].text, kjv[i].metadata) for i in kept]
    )
    # The web silo holds other verses (offset 5) than the queries'.
    web_kept = [web[i + 5] for i in kept]
    web_file = _write_jsonl(corpora / "web.jsonl", [(w.id, w.text, w.metadata) for w in web_kept])
    docs = load_records("pydoc_anchors", limit=200)
    docs_file = _write_jsonl(corpora / "pydocs.jsonl", [(d.id, d.text, d.metadata) for d in docs])
    # Queries are never a stored text: an Embed reply for one would rightly be a document vector.
    stored = {kjv[i].text for i in kept} | {w.text for w in web_kept}
    queries = [web[i].text for i in kept[::50] if web[i].text not in stored][:6]
    specs = {
        "kjv": SiloSpec("kjv", "bible", "minilm-l3-onnx", kjv_file, ("book",), True),
        "pydocs": SiloSpec("pydocs", "pyorg", "minilm-l6", docs_file, ("source",)),
        "web": SiloSpec("web", "openbible", "static-64", web_file, ("book",)),
    }
    clients = [ClientSpec("alice", "pyorg", "pydocs"), ClientSpec("bob", "bible", "kjv")]
    lines: list[str] = []
    consortium = LocalConsortium(root, list(specs.values()), clients, say=lines.append)
    wire = root / "wire"
    consortium.env[ENV_VAR] = str(wire)
    with consortium:
        consortium.provision()
        for spec in specs.values():
            consortium.ingest(spec)
        consortium.start_coordinator()
        for spec in specs.values():
            consortium.start_silo(spec)
        consortium.write_client_configs()
        admin = str(consortium.client_config("admin"))
        consortium.run("anchors", "build", "--config", str(consortium.coordinator_config),
                       "--name", "public", "--synthetic", str(ANCHORS), capture=True)  # fmt: skip
        silos = json.loads(consortium.run("silos", "--config", admin, "--json", capture=True))
        space = {s["silo"]: s["space"]["space_id"] for s in silos}
        for source, target, kind in (("pydocs", "kjv", "procrustes"), ("kjv", "web", "affine")):
            consortium.run("train", "--config", admin, "--source", space[source], "--target",
                           space[target], "--anchor-set", "public", "--kind", kind,
                           capture=True)  # fmt: skip
        yield Net(consortium, specs, wire, queries)
        print("\n".join(lines[-40:]))


def _client(net: Net, name: str) -> FederatedClient:
    return FederatedClient(load_client_config(net.consortium.client_config(name)))


def _states(result: FederatedAnswer) -> dict[str, str]:
    return {status.silo: status.state for status in result.statuses}


async def _federated_queries(net: Net, alice_silos: list[str]) -> list[FederatedAnswer]:
    async with _client(net, "alice") as alice, _client(net, "bob") as bob:
        results = [await alice.query(text, k=10, silos=alice_silos) for text in net.queries]
        results += [await bob.query(text, k=5, silos=["kjv", "web"]) for text in net.queries[:2]]
        # Two-stage: the text goes to kjv (its policy accepts it), never to pydocs.
        results.append(await alice.query(net.queries[0], k=5, silos=["kjv", "pydocs"], rerank=True))
        return results


@dataclass(frozen=True)
class Corpus:
    texts: dict[str, str]
    vectors: FloatMatrix
    metadata_keys: set[str]


def read_corpus(net: Net, silo: str) -> Corpus:
    """The silo's documents as it stores them: texts, metadata keys and the vectors it indexed."""
    store = DocStore(net.consortium.silo_config(silo).parent / "data" / "docstore.sqlite")
    try:
        keys, vectors = store.all_vectors()
        docs = store.fetch(keys.tolist())
    finally:
        store.close()
    keys_seen = {key for doc in docs.values() for key in doc.metadata}
    return Corpus({doc.doc_id: doc.text for doc in docs.values()}, vectors, keys_seen)


def violations_of(net: Net, silo: str, disclosed: tuple[str, ...]) -> list[str]:
    corpus = read_corpus(net, silo)
    own = net.wire / f"silo-{silo}.jsonl"
    relayed = net.wire / "coordinator-hub.jsonl"
    assert own.exists() and relayed.exists(), (
        f"no wire records in {net.wire}: are the servers created with recording_interceptors?"
    )
    # The coordinator relays this silo's hits as merged hits naming it by its silo name.
    records = [*read_records(own), *read_records(relayed)]
    return check_boundary(
        records,
        silo=silo,
        corpus_texts=corpus.texts,
        corpus_vectors=corpus.vectors,
        disclosed=disclosed,
        all_metadata_keys=corpus.metadata_keys,
    )


def test_nothing_leaves_a_silo_beyond_its_policy(net: Net) -> None:
    results = asyncio.run(_federated_queries(net, []))
    assert all(_states(r)["kjv"] == "ok" for r in results)
    assert _states(results[-1]) == {"kjv": "ok", "pydocs": "denied"}
    assert all(_states(r)["web"] == "ok" for r in results[-3:-1])
    kinds = {r["rpc"].rsplit("/", 1)[1] for r in read_records(net.wire / "silo-kjv.jsonl")}
    assert {"Search", "Embed", "EmbedAnchors", "Describe"} <= kinds
    for silo, spec in net.specs.items():
        records = read_records(net.wire / f"silo-{silo}.jsonl")
        assert any((r.get("message") or {}).get("hits") for r in records), f"{silo} sent no hits"
        assert violations_of(net, silo, spec.disclose) == [], silo


def test_boundary_command_shows_the_live_policies(net: Net) -> None:
    app = typer.Typer()
    app.command()(boundary_command)
    config = str(net.consortium.client_config("alice"))
    result = CliRunner().invoke(app, ["--config", config, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    policies = {silo["silo"]: silo["policy"] for silo in report["silos"]}
    assert policies["kjv"]["disclose_fields"] == ["book"]
    assert policies["kjv"]["accept_query_text"] is True
    assert policies["pydocs"]["disclose_fields"] == ["source"]
    assert policies["pydocs"]["accept_query_text"] is False
    flows = {flow["flow"]: flow for flow in report["flows"]}
    assert "pydocs" in flows["query embedding"]["path"]  # alice's home silo, by its endpoint
    assert "kjv" in flows["query vector"]["never"] and flows["query vector"]["surprising"]
    tables = CliRunner().invoke(app, ["--config", config])
    assert tables.exit_code == 0 and "What crosses a boundary" in tables.stdout


def test_a_silo_disclosing_more_than_expected_is_caught(net: Net) -> None:
    consortium = net.consortium
    consortium.procs["kjv"].stop()
    wider = replace(net.specs["kjv"], disclose=("book", "chapter"))
    consortium.start_silo(wider)
    consortium.write_client_configs()  # bob's home silo moved to a new port
    results = asyncio.run(_federated_queries(net, ["kjv"]))
    assert any(hit.fields.get("chapter") for r in results for hit in r.hits if hit.silo == "kjv")
    violations = violations_of(net, "kjv", net.specs["kjv"].disclose)
    assert violations and all("metadata field 'chapter'" in v for v in violations)
    # Both the silo's own replies and the coordinator's merged answers are caught.
    assert any("silo-kjv" in v for v in violations) and any(
        "coordinator-hub" in v for v in violations
    )
