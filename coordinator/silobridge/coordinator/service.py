"""The coordinator's domain operations: registry, anchor brokering, training and federated search.

No gRPC here: the servicer unpacks messages and calls these; silos are reached through a
``SiloGateway``. Every operation first checks the caller against the consortium policy; a silo's
own policy is checked again by the silo, which has the last word.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from silobridge.adapters import KINDS, FitConfig
from silobridge.adapters.artifact import MANIFEST_FILE, SIGNATURE_FILE, WEIGHTS_FILE
from silobridge.coordinator.anchors.catalogue import AnchorCatalogue, AnchorSet
from silobridge.coordinator.anchors.manifest import AnchorSetInfo
from silobridge.coordinator.config import CoordinatorConfig
from silobridge.coordinator.search.merge import ScoredHit, SiloResult, merge_calibrated, merge_rrf
from silobridge.coordinator.search.outcomes import (
    FederatedAnswer,
    Forwarded,
    SiloGateway,
    SiloOutcome,
    SiloReport,
)
from silobridge.coordinator.search.translation import Route, Translator, staleness
from silobridge.coordinator.state.records import AdapterRecord, SiloRecord
from silobridge.coordinator.state.store import CoordinatorState
from silobridge.coordinator.training import train_adapter
from silobridge.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    SiloBridgeError,
)
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor
from silobridge.core.vectors import FloatVector, validate_k, validate_query_vector
from silobridge.security.identity import PeerIdentity, Role
from silobridge.security.signed_query import verify_signed_query
from silobridge.v1 import common_pb2

log = logging.getLogger(__name__)
T = TypeVar("T")

_ENDPOINT = re.compile(r"^[A-Za-z0-9.\-]{1,253}:[0-9]{1,5}$|^\[[0-9A-Fa-f:.]{2,45}\]:[0-9]{1,5}$")
# Time kept back from the caller's deadline for translating, merging and replying.
REPLY_MARGIN_S = 0.05
DESCRIBE_TIMEOUT_S = 5.0
ANCHOR_CHUNK = 1_000
MERGE_MODES = ("calibrated", "rrf")


@dataclass(frozen=True)
class SiloView:
    """A registered silo as ListSilos shows it, probed just now."""

    record: SiloRecord
    healthy: bool
    document_count: int
    message: str
    policy: common_pb2.DisclosurePolicy | None = None


@dataclass(frozen=True)
class AdapterView:
    record: AdapterRecord
    stale_reason: str


@dataclass(frozen=True)
class TrainEvent:
    """One progress step of a training run; ``adapter`` is set on the last one only."""

    stage: str
    message: str
    adapter: AdapterRecord | None = None


@dataclass(frozen=True)
class AnchorChunk:
    info: AnchorSetInfo
    texts: Sequence[str]
    offset: int


@dataclass(frozen=True)
class SubmittedChunk:
    anchor_set: str
    version: str
    space: SpaceDescriptor
    offset: int
    vectors: FloatMatrix


@dataclass(frozen=True)
class AdapterFiles:
    manifest: bytes
    weights: bytes
    signature: bytes


def read_artifact_files(directory: Path) -> AdapterFiles:
    try:
        return AdapterFiles(
            manifest=(directory / MANIFEST_FILE).read_bytes(),
            weights=(directory / WEIGHTS_FILE).read_bytes(),
            signature=(directory / SIGNATURE_FILE).read_bytes(),
        )
    except OSError as error:
        raise FailedPrecondition(f"adapter artifact {directory} is unreadable: {error}") from None


@dataclass(frozen=True)
class _Plan:
    source: SpaceDescriptor
    targets: list[SiloRecord]
    routes: list[Route | SiloReport]
    denied: list[SiloReport]


def validate_endpoint(endpoint: str) -> str:
    if not _ENDPOINT.match(endpoint):
        raise InvalidArgument(f"endpoint {endpoint!r} is not host:port")
    port = int(endpoint.rsplit(":", 1)[1])
    if not 1 <= port <= 65535:
        raise InvalidArgument(f"endpoint {endpoint!r} has port {port}, outside 1..65535")
    return endpoint


class CoordinatorService:
    """Everything the coordinator does, independent of how it is called."""

    def __init__(
        self,
        config: CoordinatorConfig,
        state: CoordinatorState,
        catalogue: AnchorCatalogue,
        gateway: SiloGateway,
        signing_key: Ed25519PrivateKey,
        executor: Executor,
        train_executor: Executor,
    ) -> None:
        self.config = config
        self.state = state
        self.catalogue = catalogue
        self.gateway = gateway
        self.signing_key = signing_key
        self.translator = Translator(state, signing_key.public_key())
        self.executor = executor
        self.train_executor = train_executor
        self._ca_pem: bytes | None = None

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    def authorize(self, action: str, caller: PeerIdentity) -> None:
        if not self.config.policy.allows(action, caller):
            who = caller.spiffe_id or "an unauthenticated caller"
            raise PermissionDenied(f"the consortium policy does not allow {who} to {action}")

    # --- registry -------------------------------------------------------------------------

    async def register(self, caller: PeerIdentity, endpoint: str) -> SiloRecord:
        """Record a silo at ``endpoint``; its name comes from its certificate, its space from it."""
        self.authorize("register", caller)
        if caller.role != Role.SILO:
            raise PermissionDenied(
                f"only silo certificates may register; {caller.spiffe_id} is not"
            )
        validate_endpoint(endpoint)
        try:
            info = await self.gateway.describe(endpoint, timeout=DESCRIBE_TIMEOUT_S)
        except Exception as error:
            _state, why = self.gateway.outcome(error)
            raise FailedPrecondition(
                f"the coordinator could not call Describe on {endpoint}: {why}; check that the "
                "silo listens there and allows the coordinator to describe it"
            ) from None
        if info.name != caller.name:
            raise PermissionDenied(
                f"certificate {caller.spiffe_id} may register silo {caller.name!r} only, but the "
                f"silo at {endpoint} says it is {info.name!r}"
            )
        record = SiloRecord(
            name=info.name,
            endpoint=endpoint,
            spiffe_id=caller.spiffe_id,
            org=caller.org,
            space=info.space,
            document_count=info.document_count,
            registered_at=time.time(),
        )
        await self._run(lambda: self.state.upsert_silo(record))
        log.info("registered silo %s at %s (space %s)", info.name, endpoint, info.space.space_id)
        return record

    async def list_silos(self, caller: PeerIdentity) -> list[SiloView]:
        self.authorize("list", caller)
        records = await self._run(self.state.silos)
        return list(await asyncio.gather(*(self._probe(r) for r in records)))

    async def _probe(self, record: SiloRecord) -> SiloView:
        try:
            info = await self.gateway.describe(record.endpoint, timeout=DESCRIBE_TIMEOUT_S)
        except Exception as error:
            state, why = self.gateway.outcome(error)
            return SiloView(record, False, record.document_count, f"{state.value}: {why}")
        message = ""
        if info.space.fingerprint != record.space.fingerprint:
            message = (
                f"space changed since registration: fingerprint {record.space.fingerprint} "
                f"registered, {info.space.fingerprint} now; the silo must re-register"
            )
        return SiloView(record, True, info.document_count, message, info.policy)

    async def list_adapters(self, caller: PeerIdentity) -> list[AdapterView]:
        self.authorize("list", caller)
        records, silos = await self._run(lambda: (self.state.adapters(), self.state.silos()))
        return [AdapterView(r, staleness(r, silos)) for r in records]

    # --- anchors --------------------------------------------------------------------------

    async def anchor_chunks(
        self, caller: PeerIdentity, name: str, version: str
    ) -> AsyncIterator[AnchorChunk]:
        self.authorize("anchors", caller)
        anchors = await self._run(lambda: self.catalogue.get(name, version))
        for offset in range(0, len(anchors.texts), ANCHOR_CHUNK):
            yield AnchorChunk(anchors.info, anchors.texts[offset : offset + ANCHOR_CHUNK], offset)

    async def submit_anchor_embeddings(
        self, caller: PeerIdentity, chunks: AsyncIterator[SubmittedChunk]
    ) -> int:
        """Store a silo's vectors of a whole anchor set, sent in order; returns how many."""
        self.authorize("anchors", caller)
        silo = await self._run(lambda: self._registered(caller))
        parts: list[FloatMatrix] = []
        expected = 0
        first: SubmittedChunk | None = None
        async for chunk in chunks:
            if first is None:
                first = chunk
                info = await self._run(
                    functools.partial(self.catalogue.info, chunk.anchor_set, chunk.version)
                )
                if chunk.space.fingerprint != silo.space.fingerprint:
                    raise FailedPrecondition(
                        f"vectors are in space {chunk.space.space_id} (fingerprint "
                        f"{chunk.space.fingerprint}) but silo {silo.name} is registered with "
                        f"fingerprint {silo.space.fingerprint}; re-register first"
                    )
            elif (chunk.anchor_set, chunk.version) != (first.anchor_set, first.version):
                raise InvalidArgument("one submission must carry one anchor set version")
            if chunk.offset != expected:
                raise InvalidArgument(f"chunk offset {chunk.offset}, expected {expected}")
            if chunk.vectors.shape[0] and chunk.vectors.shape[1] != silo.space.dimension:
                raise InvalidArgument(
                    f"vectors have dimension {chunk.vectors.shape[1]}, the silo's space "
                    f"{silo.space.dimension}"
                )
            parts.append(chunk.vectors)
            expected += chunk.vectors.shape[0]
            if expected > info.count:
                raise InvalidArgument(f"more vectors than the {info.count} anchors of the set")
        if first is None:
            raise InvalidArgument("no vectors submitted")
        if expected != info.count:
            raise InvalidArgument(f"{expected} vectors submitted for {info.count} anchors")
        matrix = np.concatenate(parts).astype(np.float32)
        if not np.isfinite(matrix).all():
            raise InvalidArgument("submitted vectors contain NaN or infinity")
        await self._run(
            lambda: self.state.store_anchor_embeddings(
                silo.name, info.name, info.version, silo.space, matrix
            )
        )
        log.info(
            "stored %d anchor vectors of %s %s from %s",
            expected,
            info.name,
            info.version,
            silo.name,
        )
        return expected

    def _registered(self, caller: PeerIdentity) -> SiloRecord:
        if caller.role != Role.SILO:
            raise PermissionDenied(
                f"only silos submit anchor embeddings; {caller.spiffe_id} is not"
            )
        try:
            return self.state.silo(caller.name)
        except NotFound:
            raise FailedPrecondition(
                f"silo {caller.name!r} is not registered; register before submitting"
            ) from None

    # --- training -------------------------------------------------------------------------

    def _silo_in_space(self, space_id: str) -> SiloRecord:
        silos = self.state.silos()
        for silo in silos:
            if silo.space.space_id == space_id:
                return silo
        known = ", ".join(sorted({s.space.space_id for s in silos})) or "none"
        raise NotFound(f"no registered silo has space {space_id!r}; registered spaces: {known}")

    async def train(
        self,
        caller: PeerIdentity,
        *,
        source_space: str,
        target_space: str,
        anchor_set: str,
        version: str = "",
        kind: str = "",
    ) -> AsyncIterator[TrainEvent]:
        """Fit, calibrate, sign and store an adapter; yields progress, the record last."""
        self.authorize("train", caller)
        kind = kind or self.config.training.kind
        if kind not in KINDS:
            raise InvalidArgument(f"unknown adapter kind {kind!r}; choose one of {KINDS}")
        if source_space == target_space:
            raise InvalidArgument("source and target are the same space: no adapter is needed")
        source, target = await self._run(
            lambda: (self._silo_in_space(source_space), self._silo_in_space(target_space))
        )
        anchors = await self._run(lambda: self.catalogue.get(anchor_set, version))
        matrices = []
        for silo in (source, target):
            vectors = await self._run(
                lambda s=silo: self.state.anchor_embeddings(  # type: ignore[misc]
                    anchors.info.name, anchors.info.version, s.space.fingerprint
                )
            )
            if vectors is None:
                yield TrainEvent(
                    "collect anchors",
                    f"asking silo {silo.name} to embed {anchors.info.count} anchors of "
                    f"{anchors.info.name} {anchors.info.version}",
                )
                vectors = await self._collect(silo, anchors)
            else:
                yield TrainEvent(
                    "collect anchors", f"using stored vectors from {silo.space.space_id}"
                )
            matrices.append(vectors)
        fit_config = FitConfig(
            kind=kind, seed=self.config.training.seed, mlp_epochs=self.config.training.mlp_epochs
        )
        async for event in self._fit(source.space, target.space, matrices, anchors, fit_config):
            yield event

    async def _collect(self, silo: SiloRecord, anchors: AnchorSet) -> FloatMatrix:
        try:
            vectors = await self.gateway.embed_anchors(
                silo.endpoint, anchors.info.name, anchors.texts, timeout=None
            )
        except Exception as error:
            state, why = self.gateway.outcome(error)
            raise FailedPrecondition(
                f"silo {silo.name} did not embed the anchors ({state.value}: {why})"
            ) from None
        if vectors.shape != (anchors.info.count, silo.space.dimension):
            raise FailedPrecondition(
                f"silo {silo.name} returned {vectors.shape} for {anchors.info.count} anchors"
            )
        await self._run(
            lambda: self.state.store_anchor_embeddings(
                silo.name, anchors.info.name, anchors.info.version, silo.space, vectors
            )
        )
        return vectors

    async def _fit(
        self,
        source: SpaceDescriptor,
        target: SpaceDescriptor,
        matrices: list[FloatMatrix],
        anchors: AnchorSet,
        fit_config: FitConfig,
    ) -> AsyncIterator[TrainEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TrainEvent] = asyncio.Queue()

        def progress(stage: str, message: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, TrainEvent(stage, message))

        def work() -> AdapterRecord:
            return train_adapter(
                self.state,
                source=source,
                target=target,
                source_vectors=matrices[0],
                target_vectors=matrices[1],
                anchor_set=anchors.info,
                fit_config=fit_config,
                signing_key=self.signing_key,
                progress=progress,
            )

        # Fitting runs in its own pool, off the event loop: queries keep flowing meanwhile.
        future: asyncio.Future[AdapterRecord] = loop.run_in_executor(self.train_executor, work)
        while not future.done() or not queue.empty():
            getter: asyncio.Future[TrainEvent] = asyncio.ensure_future(queue.get())
            waiting: set[asyncio.Future[Any]] = {getter, future}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
        record = future.result()
        log.info("trained adapter %s (%s)", record.adapter_id, record.kind)
        yield TrainEvent("done", f"adapter {record.adapter_id} ({record.kind})", record)

    # --- federated search -----------------------------------------------------------------

    def _source_space(self, space_id: str) -> SpaceDescriptor:
        spaces = {s.space.space_id: s.space for s in self.state.silos()}
        for record in self.state.adapters():
            spaces.setdefault(record.source.space_id, record.source)
        if space_id not in spaces:
            known = ", ".join(sorted(spaces)) or "none"
            raise NotFound(f"unknown source space {space_id!r}; known spaces: {known}")
        return spaces[space_id]

    async def federated_search(
        self,
        caller: PeerIdentity,
        *,
        vector: FloatVector,
        source_space: str,
        k: int,
        silos: Sequence[str] = (),
        merge: str = "calibrated",
        rerank_text: str = "",
        rerank_depth: int = 0,
        time_remaining: float | None = None,
        signed: common_pb2.SignedQuery | None = None,
        wire_vector: common_pb2.Vector | None = None,
    ) -> FederatedAnswer:
        """Check, route, fan out concurrently under the caller's deadline, merge; never hang.

        A signed query is forwarded as signed, with the client's own vector: each silo verifies
        the signature and translates the vector itself with the adapter named here. An unsigned
        one (only where the policy allows it) is translated here.
        """
        started = time.monotonic()
        validate_k(k, self.config.server.max_k)
        if merge not in MERGE_MODES:
            raise InvalidArgument(f"unknown merge mode {merge!r}; choose one of {MERGE_MODES}")
        if signed is not None:
            self._check_signature(caller, signed, wire_vector, source_space, k, silos, rerank_text)
        elif self.config.policy.require_signed:
            raise PermissionDenied(
                "this coordinator forwards only queries the client signed; sign the query with "
                "the key of your certificate (the silobridge client does this)"
            )
        # One worker-thread hop for everything that reads state or loads adapters.
        plan = await self._run(
            lambda: self._plan(caller, source_space, silos, reranked=bool(rerank_text))
        )
        query = validate_query_vector(vector, plan.source.dimension)
        targets, routes, reports = plan.targets, plan.routes, list(plan.denied)
        budget = self.config.server.silo_timeout_seconds
        if time_remaining is not None:
            budget = min(budget, time_remaining - (time.monotonic() - started) - REPLY_MARGIN_S)
        calls = [
            self._search_one(
                route,
                # A signed query goes on byte for byte as the client sent (and signed) it.
                vector if signed is not None else query,
                k,
                budget,
                rerank_text,
                rerank_depth,
                signed,
                source_space,
            )
            for route in routes
        ]
        results = await asyncio.gather(*calls)
        merged_inputs = [result for result, _report in results if result is not None]
        reports.extend(report for _result, report in results)
        merger = merge_calibrated if merge == "calibrated" else merge_rrf
        hits = merger(merged_inputs, k) if merged_inputs else []
        order = {s.name: i for i, s in enumerate(targets)}
        reports.sort(key=lambda r: order.get(r.silo, len(order)))
        return FederatedAnswer(hits=hits, reports=reports)

    def _check_signature(
        self,
        caller: PeerIdentity,
        signed: common_pb2.SignedQuery,
        wire_vector: common_pb2.Vector | None,
        source_space: str,
        k: int,
        silos: Sequence[str],
        rerank_text: str,
    ) -> None:
        """The caller signed this very query (the silos check it again, and for replays)."""
        if self.config.tls is None or wire_vector is None:
            raise PermissionDenied("this coordinator cannot verify signed queries without TLS")
        if self._ca_pem is None:
            self._ca_pem = self.config.tls.read()[2]
        verified = verify_signed_query(
            signed,
            ca_certificate_pem=self._ca_pem,
            vector=wire_vector,
            source_space=source_space,
            silo=None,
            replay=None,
            rerank_text=rerank_text,
        )
        if verified.signer.spiffe_id != caller.spiffe_id:
            raise PermissionDenied(
                f"the query is signed by {verified.signer.spiffe_id} but sent by "
                f"{caller.spiffe_id}; a client sends only its own signed queries"
            )
        if k > verified.claims.k:
            raise PermissionDenied(f"k={k} exceeds the k={verified.claims.k} the client signed")
        addressed = set(verified.claims.silos)
        if addressed and not set(silos) <= addressed:
            raise PermissionDenied("the request names silos the client's signature does not")

    async def get_adapter(self, caller: PeerIdentity, adapter_id: str) -> AdapterFiles:
        """The signed artifact of ``adapter_id``, byte for byte, for a silo to verify and use."""
        self.authorize("adapters", caller)
        records = {r.adapter_id: r for r in await self._run(self.state.adapters)}
        record = records.get(adapter_id)
        if record is None:
            raise NotFound(f"no adapter {adapter_id!r} at this coordinator")
        return await self._run(lambda: read_artifact_files(record.path))

    def _plan(
        self, caller: PeerIdentity, source_space: str, silos: Sequence[str], *, reranked: bool
    ) -> _Plan:
        """Which silos to ask, and how: policy per silo, then a route (adapter) for each."""
        source = self._source_space(source_space)
        registered = self.state.silos()
        by_name = {s.name: s for s in registered}
        unknown = [name for name in silos if name not in by_name]
        if unknown:
            raise NotFound(
                f"unknown silo(s) {', '.join(unknown)}; registered: {', '.join(sorted(by_name))}"
            )
        targets = [by_name[n] for n in dict.fromkeys(silos)] if silos else registered
        allowed = [s for s in targets if self.config.policy.may_query(caller, s.name)]
        if not allowed:
            raise PermissionDenied(
                f"the consortium policy does not allow {caller.spiffe_id or 'this caller'} to "
                f"query any of: {', '.join(s.name for s in targets) or 'no silos registered'}"
            )
        denied = [
            SiloReport(s.name, SiloOutcome.DENIED, "the consortium policy denies this caller")
            for s in targets
            if s not in allowed
        ]
        routes = [self._route(source, s, reranked=reranked) for s in allowed]
        return _Plan(source, targets, routes, denied)

    def _route(
        self, source: SpaceDescriptor, silo: SiloRecord, *, reranked: bool
    ) -> Route | SiloReport:
        try:
            route = self.translator.route(source, silo)
        except SiloBridgeError as error:
            return SiloReport(silo.name, SiloOutcome.ERROR, error.message)
        if reranked and route.adapter is not None:
            # A re-ranking silo returns native scores of its own space, not adapter scores.
            calibration = self.translator.identity_calibration(silo.space)
            route = Route(route.silo, route.adapter, route.adapter_id, calibration)
        return route

    async def _search_one(
        self,
        route: Route | SiloReport,
        query: FloatVector,
        k: int,
        budget: float,
        rerank_text: str,
        rerank_depth: int,
        signed: common_pb2.SignedQuery | None,
        source_space: str,
    ) -> tuple[SiloResult | None, SiloReport]:
        if isinstance(route, SiloReport):
            return None, route
        name = route.silo.name
        if budget <= 0:
            return None, SiloReport(name, SiloOutcome.TIMEOUT, "no time left in the deadline")
        started = time.monotonic()
        forward = None
        if signed is not None:
            # The silo verifies the signature over this very vector and translates it itself.
            vector = query
            forward = Forwarded(signed, source_space, route.adapter_id)
        else:
            vector = query if route.adapter is None else route.adapter.apply_one(query)
        try:
            # The gRPC deadline ends the call; wait_for guards against a transport that hangs.
            hits = await asyncio.wait_for(
                self.gateway.search(
                    route.silo.endpoint,
                    vector,
                    k,
                    timeout=budget,
                    rerank_text=rerank_text,
                    rerank_depth=rerank_depth,
                    forward=forward,
                ),
                timeout=budget + 0.5,
            )
        except Exception as error:
            outcome, why = self.gateway.outcome(error)
            elapsed = (time.monotonic() - started) * 1000
            return None, SiloReport(name, outcome, why, route.adapter_id, 0, elapsed)
        elapsed = (time.monotonic() - started) * 1000
        if not all(math.isfinite(h.score) for h in hits):
            # One misbehaving silo must not break the merge of everyone else's hits.
            message = "the silo returned a non-finite score; its hits were dropped"
            return None, SiloReport(name, SiloOutcome.ERROR, message, route.adapter_id, 0, elapsed)
        scored = [ScoredHit(h.doc_id, h.score, h.fields) for h in hits]
        report = SiloReport(name, SiloOutcome.OK, "", route.adapter_id, len(scored), elapsed)
        return SiloResult(name, scored, route.calibration), report
