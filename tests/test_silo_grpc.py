"""The silo over real gRPC, real mTLS and a real model: retrieval, access, validation, health."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2
from typer.testing import CliRunner

from silobridge.cli import app
from silobridge.core.config import TlsFiles
from silobridge.evaluation.corpus import load_records
from silobridge.rpc.convert import vector_to_proto
from silobridge.v1 import common_pb2, silo_pb2, silo_pb2_grpc

from .conftest import INDEX_BACKENDS, Pki, ServerThread, index_table, write_silo_config

pytestmark = pytest.mark.integration

CORPUS_STRIDE = 15  # every 15th verse of the Bible: ~2,070 verses from every book
QUERY_COUNT = 200


def sync_channel(target: str, tls: TlsFiles | None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=tls.ca.read_bytes(),
        private_key=tls.key.read_bytes(),
        certificate_chain=tls.cert.read_bytes(),
    )
    return grpc.secure_channel(target, creds)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A JSONL file of ~2,070 KJV verses, and the ids of the 200 used as WEB queries."""
    kjv = load_records("kjv")[::CORPUS_STRIDE]
    path = tmp_path_factory.mktemp("corpus") / "kjv.jsonl"
    with path.open("w") as handle:
        for record in kjv:
            handle.write(
                json.dumps({"id": record.id, "text": record.text, "metadata": record.metadata})
            )
            handle.write("\n")
    query_ids = [record.id for record in kjv[:: max(1, len(kjv) // QUERY_COUNT)]][:QUERY_COUNT]
    return path, query_ids


@pytest.fixture(scope="module", params=INDEX_BACKENDS)
def silo(
    pki: Pki,
    corpus: tuple[Path, list[str]],
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[ServerThread]:
    """The silo, ingested by the CLI, once with each index backend."""
    config = write_silo_config(
        tmp_path_factory.mktemp("silo"),
        pki.silo,
        disclose=("book",),
        extra=index_table(request.param),
    )
    result = CliRunner().invoke(app, ["silo", "ingest", "--config", str(config), str(corpus[0])])
    assert result.exit_code == 0, result.output
    server = ServerThread(config)
    manifest = server.service.data.manifest  # the index the CLI built is what is served
    assert manifest is not None and manifest.factory.startswith(f"{request.param}:") == (
        request.param == "milvus"
    )
    yield server
    server.stop()


def stub(silo: ServerThread, tls: TlsFiles | None) -> silo_pb2_grpc.SiloServiceStub:
    return silo_pb2_grpc.SiloServiceStub(sync_channel(silo.target, tls))


def test_modern_english_verse_finds_its_kjv_verse(
    silo: ServerThread, pki: Pki, corpus: tuple[Path, list[str]]
) -> None:
    _, query_ids = corpus
    assert len(query_ids) == QUERY_COUNT
    web = {record.id: record.text for record in load_records("web")}
    client = stub(silo, pki.home_client)
    found = 0
    for start in range(0, len(query_ids), 50):
        ids = query_ids[start : start + 50]
        embedded = client.Embed(silo_pb2.EmbedRequest(texts=[web[i] for i in ids]), timeout=60)
        assert len(embedded.vectors) == len(ids)
        for doc_id, vector in zip(ids, embedded.vectors, strict=True):
            reply = client.Search(silo_pb2.SearchRequest(vector=vector, k=10), timeout=30)
            assert len(reply.hits) == 10
            found += doc_id in [hit.doc_id for hit in reply.hits]
    recall = found / len(query_ids)
    print(f"\nWEB→KJV top-10 recall over {len(query_ids)} queries (minilm-l3-onnx): {recall:.3f}")
    assert recall >= 0.95


def test_hits_disclose_only_configured_fields(silo: ServerThread, pki: Pki) -> None:
    client = stub(silo, pki.home_client)
    vector = client.Embed(silo_pb2.EmbedRequest(texts=["the Lord is my shepherd"])).vectors[0]
    reply = client.Search(silo_pb2.SearchRequest(vector=vector, k=5))
    assert reply.hits
    for hit in reply.hits:
        assert set(hit.fields) == {"book"}  # the metadata also has chapter, verse, translation
    assert reply.space.dimension == 384


def test_health_reports_serving(silo: ServerThread, pki: Pki) -> None:
    # The typeshed stub of HealthStub declares no methods, so call the method by its path.
    check = sync_channel(silo.target, pki.coordinator).unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=health_pb2.HealthCheckRequest.SerializeToString,
        response_deserializer=health_pb2.HealthCheckResponse.FromString,
    )
    for service in ("", "silobridge.v1.SiloService"):
        reply = check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_describe_names_the_space(silo: ServerThread, pki: Pki) -> None:
    reply = stub(silo, pki.coordinator).Describe(silo_pb2.DescribeRequest(), timeout=10)
    assert reply.silo == "kjv"
    assert reply.space.model_id == "minilm-l3-onnx"
    assert len(reply.space.fingerprint) == 16
    assert reply.document_count > 2000


def test_anchor_embedding_needs_a_named_set_and_a_coordinator(silo: ServerThread, pki: Pki) -> None:
    # The silo embeds only anchor sets it fetches itself (tests/test_abuse_limits.py has the
    # whole exchange); this one has no [coordinator] to fetch from.
    coordinator = stub(silo, pki.coordinator)
    bad_hash = silo_pb2.EmbedAnchorsRequest(anchor_set="pydoc", version="v1", sha256="beef")
    with pytest.raises(grpc.RpcError) as caught:
        list(coordinator.EmbedAnchors(bad_hash, timeout=10))
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    named = silo_pb2.EmbedAnchorsRequest(anchor_set="pydoc", version="v1", sha256="0" * 64)
    with pytest.raises(grpc.RpcError) as caught:
        list(coordinator.EmbedAnchors(named, timeout=10))
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "[coordinator]" in (caught.value.details() or "")


# --- mutual TLS: every refused handshake is UNAVAILABLE and reaches no handler ---------------


@pytest.mark.parametrize("who", ["no_client_cert", "foreign_ca", "expired", "plaintext"])
def test_handshake_refused_before_any_handler(silo: ServerThread, pki: Pki, who: str) -> None:
    before = sum(silo.running.servicer.handled.values())
    if who == "no_client_cert":
        channel = grpc.secure_channel(
            silo.target, grpc.ssl_channel_credentials(root_certificates=pki.silo.ca.read_bytes())
        )
    elif who == "foreign_ca":
        channel = sync_channel(silo.target, pki.foreign_ca_client)
    elif who == "expired":
        channel = sync_channel(silo.target, pki.expired_client)
    else:
        channel = sync_channel(silo.target, None)
    with pytest.raises(grpc.RpcError) as caught:
        silo_pb2_grpc.SiloServiceStub(channel).Describe(silo_pb2.DescribeRequest(), timeout=10)
    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert sum(silo.running.servicer.handled.values()) == before


@pytest.mark.parametrize(
    ("who", "rpc"),
    [
        ("other_client", "Search"),  # a valid cert of an org the silo does not serve
        ("other_client", "Embed"),
        ("coordinator", "Embed"),  # the coordinator may search but never embed query text
        ("home_client", "EmbedAnchors"),
    ],
)
def test_valid_identity_not_allowed_is_permission_denied(
    silo: ServerThread, pki: Pki, who: str, rpc: str
) -> None:
    client = stub(silo, getattr(pki, who))
    vector = vector_to_proto(np.ones(384, np.float32))
    with pytest.raises(grpc.RpcError) as caught:
        if rpc == "Search":
            client.Search(silo_pb2.SearchRequest(vector=vector, k=5), timeout=10)
        elif rpc == "Embed":
            client.Embed(silo_pb2.EmbedRequest(texts=["hello"]), timeout=10)
        else:
            named = silo_pb2.EmbedAnchorsRequest(anchor_set="x", version="v1", sha256="0" * 64)
            list(client.EmbedAnchors(named, timeout=10))
    assert caught.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "does not allow" in (caught.value.details() or "")


# --- validation: each bad input is refused with a message a user can act on ------------------


def _raw_vector(values: np.ndarray) -> common_pb2.Vector:
    return vector_to_proto(values)


BAD_SEARCHES = {
    "wrong_dimension": (
        silo_pb2.SearchRequest(vector=_raw_vector(np.ones(64)), k=5),
        "dimension 64",
    ),
    "nan": (
        silo_pb2.SearchRequest(vector=_raw_vector(np.r_[np.ones(383), np.nan]), k=5),
        "non-finite",
    ),
    "infinity": (
        silo_pb2.SearchRequest(vector=_raw_vector(np.r_[np.ones(383), np.inf]), k=5),
        "non-finite",
    ),
    "zero_norm": (silo_pb2.SearchRequest(vector=_raw_vector(np.zeros(384)), k=5), "zero vector"),
    "k_zero": (silo_pb2.SearchRequest(vector=_raw_vector(np.ones(384)), k=0), "outside"),
    "k_too_large": (silo_pb2.SearchRequest(vector=_raw_vector(np.ones(384)), k=51), "outside"),
    "bytes_do_not_match_dim": (
        silo_pb2.SearchRequest(
            vector=common_pb2.Vector(dtype=common_pb2.DTYPE_FLOAT32, dim=384, data=b"\0" * 12), k=5
        ),
        "bytes",
    ),
    "dtype_unspecified": (
        silo_pb2.SearchRequest(vector=common_pb2.Vector(dim=384, data=b"\0" * 1536), k=5),
        "dtype",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SEARCHES))
def test_bad_search_is_invalid_argument_and_server_keeps_serving(
    silo: ServerThread, pki: Pki, case: str
) -> None:
    request, fragment = BAD_SEARCHES[case]
    client = stub(silo, pki.home_client)
    with pytest.raises(grpc.RpcError) as caught:
        client.Search(request, timeout=10)
    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert fragment in (caught.value.details() or "")
    _assert_good_search_still_works(client)


@pytest.mark.parametrize(
    ("case", "texts", "code"),
    [
        ("too_many_texts", ["verse"] * 65, grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("text_too_long", ["word " * 500], grpc.StatusCode.RESOURCE_EXHAUSTED),
        ("no_texts", [], grpc.StatusCode.INVALID_ARGUMENT),
        ("empty_text", ["  "], grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_bad_embed_is_refused_and_server_keeps_serving(
    silo: ServerThread, pki: Pki, case: str, texts: list[str], code: grpc.StatusCode
) -> None:
    client = stub(silo, pki.home_client)
    with pytest.raises(grpc.RpcError) as caught:
        client.Embed(silo_pb2.EmbedRequest(texts=texts), timeout=10)
    assert caught.value.code() is code, case
    _assert_good_search_still_works(client)


def test_oversized_message_is_resource_exhausted(silo: ServerThread, pki: Pki) -> None:
    client = stub(silo, pki.home_client)
    huge = common_pb2.Vector(dtype=common_pb2.DTYPE_FLOAT32, dim=3_000_000, data=b"\0" * 12_000_000)
    with pytest.raises(grpc.RpcError) as caught:
        client.Search(silo_pb2.SearchRequest(vector=huge, k=5), timeout=10)
    assert caught.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
    _assert_good_search_still_works(client)


def _assert_good_search_still_works(client: silo_pb2_grpc.SiloServiceStub) -> None:
    vector = client.Embed(silo_pb2.EmbedRequest(texts=["In the beginning"]), timeout=30).vectors[0]
    reply = client.Search(silo_pb2.SearchRequest(vector=vector, k=3), timeout=10)
    assert len(reply.hits) == 3
