"""The coordinator's domain service: policy per silo, routing, staleness, merging, deadlines.

Silos are reached through a recording test double of the gateway (the real gRPC path is covered
by tests/test_consortium_e2e.py); state, anchors, training and signing are the real ones.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from silobridge.coordinator.anchors.catalogue import AnchorCatalogue
from silobridge.coordinator.anchors.synthetic import random_word_strings
from silobridge.coordinator.config import load_coordinator_config
from silobridge.coordinator.server import open_coordinator
from silobridge.coordinator.service import CoordinatorService
from silobridge.coordinator.state.records import SiloRecord
from silobridge.core.errors import (
    DeadlineExceeded,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    SiloBridgeError,
    Unavailable,
)
from silobridge.core.federation import FederatedAnswer, SiloOutcome, merge_mode
from silobridge.core.hits import Hit
from silobridge.core.listings import AnchorSetRef, PreferenceRequest, SiloDescription
from silobridge.core.queries import FederatedBatch, FederatedQuery, SiloBatch, SiloQuery
from silobridge.core.spaces import FloatMatrix
from silobridge.core.vectors import WireVector
from silobridge.embedding.embedders import Embedder, load_embedder
from silobridge.security.identity import PeerIdentity

ADMIN = PeerIdentity("spiffe://t/client/admin", "t", "client", "admin", "hub")
ALICE = PeerIdentity("spiffe://t/client/alice", "t", "client", "alice", "pyorg")
MALLORY = PeerIdentity("spiffe://t/client/mallory", "t", "client", "mallory", "elsewhere")


class FakeGateway:
    """Answers for silos from real embedders; ``slow`` silos never answer."""

    def __init__(self, embedders: dict[str, Embedder], names: dict[str, str]) -> None:
        self.embedders = embedders  # endpoint -> embedder
        self.names = names  # endpoint -> silo name
        self.slow: set[str] = set()
        self.broken: set[str] = set()  # these answer with a NaN score
        self.failing: dict[str, SiloBridgeError] = {}  # these refuse or fail, as SiloClient raises
        self.searched: list[tuple[str, int]] = []
        self.catalogue: AnchorCatalogue | None = None  # the coordinator's, where silos fetch

    async def describe(self, endpoint: str, *, expect: str = "", timeout: float) -> SiloDescription:
        embedder = self.embedders[endpoint]
        return SiloDescription(self.names[endpoint], embedder.space, 100, 50)

    async def search(
        self, endpoint: str, query: SiloQuery, *, expect: str = "", timeout: float
    ) -> list[Hit]:
        self.searched.append((endpoint, query.vector.dim))
        if endpoint in self.slow:
            await asyncio.sleep(3600)
        if endpoint in self.failing:
            raise self.failing[endpoint]
        name = self.names[endpoint]
        hits = [Hit(f"{name}-{i}", 0.5 - i / 100) for i in range(query.k)]
        if endpoint in self.broken:
            hits[-1] = Hit("bad", float("nan"))
        return hits

    async def search_batch(
        self, endpoint: str, batch: SiloBatch, *, expect: str = "", timeout: float
    ) -> list[list[Hit]]:
        # One call for the batch, answered as its queries would be one by one.
        return [
            await self.search(endpoint, SiloQuery(vector, batch.k), expect=expect, timeout=timeout)
            for vector in batch.vectors
        ]

    async def search_many(
        self, endpoint: str, queries: list[SiloQuery], *, expect: str = "", timeout: float
    ) -> list[list[Hit] | SiloBridgeError]:
        outcomes: list[list[Hit] | SiloBridgeError] = []
        for query in queries:
            try:
                outcomes.append(await self.search(endpoint, query, timeout=timeout))
            except SiloBridgeError as error:
                outcomes.append(error)
        return outcomes

    async def embed_anchors(
        self,
        endpoint: str,
        anchors: AnchorSetRef,
        *,
        expect: str = "",
        timeout: float | None,
    ) -> FloatMatrix:
        # As a real silo does: the texts come from the coordinator's catalogue, checked by hash.
        assert self.catalogue is not None
        stored = self.catalogue.get(anchors.name, anchors.version)
        assert stored.info.sha256 == anchors.sha256
        return self.embedders[endpoint].embed(list(stored.texts))

    async def prefer_anchors(
        self,
        endpoint: str,
        request: PreferenceRequest,
        *,
        expect: str = "",
        timeout: float | None,
    ) -> list[int]:
        raise AssertionError("not asked for anchor preferences here")

    async def close(self) -> None:
        return None


CONFIG = """
[coordinator]
state_dir = "state"
[server]
insecure = true
silo_timeout_seconds = 0.5
[training]
kind = "procrustes"
[policy]
require_signed_queries = false   # insecure here: nothing to verify signatures against
register = ["spiffe://t/silo/*"]
list = ["spiffe://t/client/*"]
anchors = ["spiffe://t/silo/*"]
train = ["spiffe://t/client/admin"]
[policy.query]
"*" = ["org:pyorg/client"]
web = ["org:bible/client"]
"""


@pytest.fixture(scope="module")
def embedders() -> dict[str, Embedder]:
    return {
        "pydocs:1": load_embedder("static-64"),
        "kjv:1": load_embedder("minilm-l3-onnx"),
        "web:1": load_embedder("static-64"),
    }


@pytest.fixture
def service(tmp_path: Path, embedders: dict[str, Embedder]) -> Iterator[CoordinatorService]:
    (tmp_path / "coordinator.toml").write_text(CONFIG)
    config = load_coordinator_config(tmp_path / "coordinator.toml")
    gateway = FakeGateway(embedders, {e: e.split(":")[0] for e in embedders})
    service = open_coordinator(config, gateway=gateway)
    gateway.catalogue = AnchorCatalogue(config.state_dir / "anchors")
    gateway.catalogue.build("public", random_word_strings(300, 0), source="synthetic:300:seed=0")

    async def setup() -> None:
        for endpoint in embedders:
            name = endpoint.split(":")[0]
            silo = PeerIdentity(f"spiffe://t/silo/{name}", "t", "silo", name, name)
            await service.register_silo(silo, endpoint)
        source = embedders["pydocs:1"].space.space_id
        target = embedders["kjv:1"].space.space_id
        async for _event in service.train_adapter(
            ADMIN, source_space=source, target_space=target, anchor_set="public"
        ):
            pass

    asyncio.run(setup())
    yield service
    asyncio.run(service.close())


def search(
    service: CoordinatorService,
    caller: PeerIdentity,
    *,
    silos: Sequence[str] = (),
    merge: str = "calibrated",
) -> FederatedAnswer:
    space = service.state.silo("pydocs").space
    vector = WireVector.of(np.ones(space.dimension, dtype=np.float32))
    query = FederatedQuery(vector, space.space_id, 5, tuple(silos), merge_mode(merge))
    return asyncio.run(service.federated_search(caller, query))


def states(answer: FederatedAnswer) -> dict[str, str]:
    return {s.silo: s.state.value for s in answer.statuses}


def test_each_silo_is_translated_into_its_own_space_and_denied_where_policy_says(
    service: CoordinatorService,
) -> None:
    answer = search(service, ALICE)
    # pydocs: same space (no adapter); kjv: the trained adapter; web: not allowed for pyorg.
    assert states(answer) == {"kjv": "ok", "pydocs": "ok", "web": "denied"}
    statuses = {s.silo: s for s in answer.statuses}
    assert statuses["pydocs"].adapter_id == "" and statuses["kjv"].adapter_id
    dims = dict(service.gateway.searched)  # type: ignore[attr-defined]
    assert dims == {"pydocs:1": 64, "kjv:1": 384}
    assert len(answer.hits) == 5
    assert [h.merged_score for h in answer.hits] == sorted(
        (h.merged_score for h in answer.hits), reverse=True
    )


def test_a_caller_allowed_no_target_is_refused_outright(service: CoordinatorService) -> None:
    with pytest.raises(PermissionDenied, match="mallory"):
        search(service, MALLORY)
    with pytest.raises(PermissionDenied, match="train"):

        async def train() -> None:
            async for _ in service.train_adapter(
                ALICE, source_space="a", target_space="b", anchor_set="public"
            ):
                pass

        asyncio.run(train())


def test_a_silo_without_an_adapter_reports_an_error_naming_what_to_do(
    service: CoordinatorService,
) -> None:
    answer = search(service, ALICE, silos=["kjv", "pydocs"])
    assert states(answer) == {"kjv": "ok", "pydocs": "ok"}
    kjv_space = service.state.silo("kjv").space
    vector = WireVector.of(np.ones(kjv_space.dimension, dtype=np.float32))
    answer = asyncio.run(
        service.federated_search(ALICE, FederatedQuery(vector, kjv_space.space_id, 3))
    )
    pydocs = next(s for s in answer.statuses if s.silo == "pydocs")
    assert pydocs.state is SiloOutcome.ERROR
    assert "no adapter" in pydocs.message and "silobridge train" in pydocs.message


def test_an_adapter_whose_target_fingerprint_changed_is_refused_naming_both(
    service: CoordinatorService,
) -> None:
    kjv = service.state.silo("kjv")
    trained = kjv.space.fingerprint
    # The kjv silo re-registers after its model changed behaviour under the same model id.
    changed = dataclasses.replace(kjv.space, fingerprint="0123456789abcdef", space_id="x@01234567")
    service.state.upsert_silo(dataclasses.replace(kjv, space=changed))
    answer = search(service, ALICE, silos=["kjv"])
    status = answer.statuses[0]
    assert status.state is SiloOutcome.ERROR
    assert trained in status.message and "0123456789abcdef" in status.message
    assert "retrain" in status.message
    listings = asyncio.run(service.list_adapters(ADMIN))
    assert listings[0].stale and trained in listings[0].stale_reason


def test_a_slow_silo_times_out_within_the_deadline(service: CoordinatorService) -> None:
    service.gateway.slow.add("kjv:1")  # type: ignore[attr-defined]
    answer, elapsed = asyncio.run(_timed(service))
    assert states(answer) == {"kjv": "timeout", "pydocs": "ok", "web": "denied"}
    assert elapsed < 1.5  # silo_timeout_seconds = 0.5 (+ the 0.5 s transport guard)


async def _timed(service: CoordinatorService) -> tuple[FederatedAnswer, float]:
    space = service.state.silo("pydocs").space
    started = asyncio.get_running_loop().time()
    query = FederatedQuery(WireVector.of(np.ones(space.dimension, np.float32)), space.space_id, 5)
    answer = await service.federated_search(ALICE, query, time_remaining=5.0)
    return answer, asyncio.get_running_loop().time() - started


def test_rrf_merging_and_bad_requests(service: CoordinatorService) -> None:
    answer = search(service, ALICE, merge="rrf")
    assert answer.hits[0].merged_score == pytest.approx(1 / 61)
    with pytest.raises(InvalidArgument, match="merge"):
        search(service, ALICE, merge="best")
    # Only the silos ALICE may query are named: web is none of her business.
    with pytest.raises(NotFound, match=r"silos you may query: kjv, pydocs$"):
        search(service, ALICE, silos=["nope"])
    with pytest.raises(NotFound, match="unknown source space"):
        query = FederatedQuery(WireVector.of(np.ones(4, np.float32)), "other@1", 3)
        asyncio.run(service.federated_search(ALICE, query))


def test_registration_takes_the_name_from_the_certificate(service: CoordinatorService) -> None:
    impostor = PeerIdentity("spiffe://t/silo/web", "t", "silo", "web", "openbible")
    with pytest.raises(PermissionDenied, match="says it is 'kjv'"):
        asyncio.run(service.register_silo(impostor, "kjv:1"))
    with pytest.raises(PermissionDenied):
        asyncio.run(service.register_silo(ALICE, "kjv:1"))
    records: list[SiloRecord] = service.state.silos()
    assert {r.name: r.endpoint for r in records}["web"] == "web:1"


def test_a_silo_answering_nonsense_scores_is_dropped_not_merged(
    service: CoordinatorService,
) -> None:
    service.gateway.broken.add("kjv:1")  # type: ignore[attr-defined]
    answer = search(service, ALICE)
    assert states(answer) == {"kjv": "error", "pydocs": "ok", "web": "denied"}
    assert "non-finite" in answer.statuses[0].message
    assert answer.hits and {h.silo for h in answer.hits} == {"pydocs"}


@pytest.mark.parametrize(
    ("error", "status_name", "state"),
    [
        (PermissionDenied, "PERMISSION_DENIED", "denied"),
        (PermissionDenied, "UNAUTHENTICATED", "denied"),
        (Unavailable, "UNAVAILABLE", "unavailable"),
        (DeadlineExceeded, "DEADLINE_EXCEEDED", "timeout"),
        (SiloBridgeError, "INTERNAL", "error"),
    ],
)
def test_a_failing_silo_shows_its_outcome_and_the_peers_status_in_its_status(
    service: CoordinatorService, error: type[SiloBridgeError], status_name: str, state: str
) -> None:
    # As the typed client raises it: the message names the silo's address, the details are its own.
    refusal = error("silo kjv:1 failed: silo kjv says why")
    refusal.status_name = status_name
    refusal.peer_details = "silo kjv says why"
    service.gateway.failing["kjv:1"] = refusal  # type: ignore[attr-defined]
    answer = search(service, ALICE)
    assert states(answer) == {"kjv": state, "pydocs": "ok", "web": "denied"}
    kjv = next(s for s in answer.statuses if s.silo == "kjv")
    # The asker learns the silo's status and words, not its address.
    assert kjv.message == f"{status_name}: silo kjv says why"
    assert answer.hits and {h.silo for h in answer.hits} == {"pydocs"}


def test_an_unsigned_batch_is_translated_per_silo_and_answers_as_single_queries(
    service: CoordinatorService,
) -> None:
    space = service.state.silo("pydocs").space
    rng = np.random.default_rng(3)
    wires = tuple(WireVector.of(rng.normal(size=space.dimension)) for _ in range(4))
    service.gateway.searched.clear()  # type: ignore[attr-defined]
    batch = FederatedBatch(wires, space.space_id, 5)
    answer = asyncio.run(service.federated_search_batch(ALICE, batch))
    assert {s.silo: s.state.value for s in answer.statuses} == {
        "kjv": "ok",
        "pydocs": "ok",
        "web": "denied",
    }
    # kjv received the coordinator's translations into its own space, pydocs the vectors as is.
    assert sorted(set(service.gateway.searched)) == [("kjv:1", 384), ("pydocs:1", 64)]  # type: ignore[attr-defined]
    singles = [
        asyncio.run(service.federated_search(ALICE, FederatedQuery(wire, space.space_id, 5)))
        for wire in wires
    ]
    assert [[(h.silo, h.doc_id) for h in hits] for hits in answer.answers] == [
        [(h.silo, h.doc_id) for h in single.hits] for single in singles
    ]


def test_a_slow_silo_times_out_for_the_whole_batch(service: CoordinatorService) -> None:
    service.gateway.slow.add("kjv:1")  # type: ignore[attr-defined]
    space = service.state.silo("pydocs").space
    wires = tuple(WireVector.of(np.ones(space.dimension, np.float32) + i) for i in range(3))
    answer = asyncio.run(
        service.federated_search_batch(
            ALICE, FederatedBatch(wires, space.space_id, 5), time_remaining=5.0
        )
    )
    assert {s.silo: s.state.value for s in answer.statuses} == {
        "kjv": "timeout",
        "pydocs": "ok",
        "web": "denied",
    }
    assert len(answer.answers) == 3
    assert all({h.silo for h in hits} == {"pydocs"} for hits in answer.answers)


def test_a_batch_over_max_batch_or_empty_is_refused(service: CoordinatorService) -> None:
    space = service.state.silo("pydocs").space
    wire = WireVector.of(np.ones(space.dimension, np.float32))
    limit = service.config.server.max_batch
    with pytest.raises(ResourceExhausted, match="max_batch"):
        asyncio.run(
            service.federated_search_batch(
                ALICE, FederatedBatch((wire,) * (limit + 1), space.space_id, 5)
            )
        )
    with pytest.raises(InvalidArgument, match="at least one"):
        asyncio.run(service.federated_search_batch(ALICE, FederatedBatch((), space.space_id, 5)))
