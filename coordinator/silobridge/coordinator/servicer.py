"""The coordinator's gRPC face: unpack the message, call the domain service, pack the reply."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import numpy as np

from silobridge.coordinator.search.outcomes import SiloOutcome
from silobridge.coordinator.service import (
    AdapterView,
    CoordinatorService,
    SiloView,
    SubmittedChunk,
)
from silobridge.coordinator.state.records import AdapterRecord
from silobridge.core.errors import InvalidArgument
from silobridge.core.spaces import FloatMatrix
from silobridge.rpc.convert import space_from_proto, space_to_proto, vector_from_proto
from silobridge.rpc.status import stream_boundary, unary_boundary
from silobridge.rpc.transport import peer_identity
from silobridge.security.gatekeeper import Gatekeeper
from silobridge.security.identity import PeerIdentity
from silobridge.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]

STATE_FOR_OUTCOME = {
    SiloOutcome.OK: common_pb2.SILO_STATE_OK,
    SiloOutcome.TIMEOUT: common_pb2.SILO_STATE_TIMEOUT,
    SiloOutcome.UNAVAILABLE: common_pb2.SILO_STATE_UNAVAILABLE,
    SiloOutcome.DENIED: common_pb2.SILO_STATE_DENIED,
    SiloOutcome.ERROR: common_pb2.SILO_STATE_ERROR,
}
MERGE_FOR_MODE = {
    coordinator_pb2.MERGE_MODE_UNSPECIFIED: "calibrated",
    coordinator_pb2.MERGE_MODE_CALIBRATED: "calibrated",
    coordinator_pb2.MERGE_MODE_RRF: "rrf",
}


def adapter_info(record: AdapterRecord, stale_reason: str = "") -> coordinator_pb2.AdapterInfo:
    return coordinator_pb2.AdapterInfo(
        adapter_id=record.adapter_id,
        kind=record.kind,
        source=space_to_proto(record.source),
        target=space_to_proto(record.target),
        anchor_set_sha256=record.anchor_set_sha256,
        metrics=record.metrics,
        created_unix=int(record.created_at),
        anchor_set=record.anchor_set,
        anchor_set_version=record.anchor_set_version,
        stale=bool(stale_reason),
        stale_reason=stale_reason,
    )


def silo_info(view: SiloView) -> coordinator_pb2.SiloInfo:
    record = view.record
    return coordinator_pb2.SiloInfo(
        silo=record.name,
        endpoint=record.endpoint,
        space=space_to_proto(record.space),
        healthy=view.healthy,
        document_count=view.document_count,
        org=record.org,
        registered_unix=int(record.registered_at),
        message=view.message,
        policy=view.policy,
    )


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    """Thin adapter from ``CoordinatorService`` to ``silobridge.v1.CoordinatorService``."""

    def __init__(self, service: CoordinatorService, gatekeeper: Gatekeeper) -> None:
        self.service = service
        # Denylist, rate limits and the audit log; the error boundary audits every refusal.
        self.gatekeeper = gatekeeper

    def _caller(self, context: Context) -> PeerIdentity:
        return self.gatekeeper.admit(peer_identity(context))

    @unary_boundary
    async def RegisterSilo(
        self, request: coordinator_pb2.RegisterSiloRequest, context: Context
    ) -> coordinator_pb2.RegisterSiloResponse:
        caller = self._caller(context)
        record = await self.service.register(caller, request.endpoint)
        self.gatekeeper.record(caller, "RegisterSilo", allowed=True, silos=[record.name])
        return coordinator_pb2.RegisterSiloResponse(
            silo=record.name, space=space_to_proto(record.space)
        )

    @unary_boundary
    async def ListSilos(
        self, request: coordinator_pb2.ListSilosRequest, context: Context
    ) -> coordinator_pb2.ListSilosResponse:
        caller = self._caller(context)
        views = await self.service.list_silos(caller)
        self.gatekeeper.record(caller, "ListSilos", allowed=True, results=len(views))
        return coordinator_pb2.ListSilosResponse(silos=[silo_info(v) for v in views])

    @stream_boundary
    async def GetAnchorSet(
        self, request: coordinator_pb2.GetAnchorSetRequest, context: Context
    ) -> AsyncIterator[coordinator_pb2.GetAnchorSetResponse]:
        caller = self._caller(context)
        chunks = self.service.anchor_chunks(caller, request.name, request.version)
        sent = 0
        async for chunk in chunks:
            sent += len(chunk.texts)
            yield coordinator_pb2.GetAnchorSetResponse(
                name=chunk.info.name,
                version=chunk.info.version,
                sha256=chunk.info.sha256,
                texts=list(chunk.texts),
                offset=chunk.offset,
                total=chunk.info.count,
            )
        self.gatekeeper.record(
            caller, "GetAnchorSet", allowed=True, results=sent, anchor_set=request.name
        )

    @unary_boundary
    async def SubmitAnchorEmbeddings(
        self,
        request_iterator: AsyncIterator[coordinator_pb2.SubmitAnchorEmbeddingsRequest],
        context: Context,
    ) -> coordinator_pb2.SubmitAnchorEmbeddingsResponse:
        async def chunks() -> AsyncIterator[SubmittedChunk]:
            async for message in request_iterator:
                yield SubmittedChunk(
                    anchor_set=message.anchor_set,
                    version=message.version,
                    space=space_from_proto(message.space),
                    offset=message.offset,
                    vectors=_matrix(message),
                )

        caller = self._caller(context)
        stored = await self.service.submit_anchor_embeddings(caller, chunks())
        self.gatekeeper.record(caller, "SubmitAnchorEmbeddings", allowed=True, results=stored)
        return coordinator_pb2.SubmitAnchorEmbeddingsResponse(stored=stored)

    @stream_boundary
    async def TrainAdapter(
        self, request: coordinator_pb2.TrainAdapterRequest, context: Context
    ) -> AsyncIterator[coordinator_pb2.TrainAdapterResponse]:
        caller = self._caller(context)
        events = self.service.train(
            caller,
            source_space=request.source_space,
            target_space=request.target_space,
            anchor_set=request.anchor_set,
            version=request.anchor_set_version,
            kind=request.kind,
        )
        async for event in events:
            message = coordinator_pb2.TrainAdapterResponse(stage=event.stage, message=event.message)
            if event.adapter is not None:
                message.adapter.CopyFrom(adapter_info(event.adapter))
                self.gatekeeper.record(
                    caller, "TrainAdapter", allowed=True, adapter_id=event.adapter.adapter_id
                )
            yield message

    @unary_boundary
    async def ListAdapters(
        self, request: coordinator_pb2.ListAdaptersRequest, context: Context
    ) -> coordinator_pb2.ListAdaptersResponse:
        caller = self._caller(context)
        views: list[AdapterView] = await self.service.list_adapters(caller)
        self.gatekeeper.record(caller, "ListAdapters", allowed=True, results=len(views))
        return coordinator_pb2.ListAdaptersResponse(
            adapters=[adapter_info(v.record, v.stale_reason) for v in views]
        )

    @unary_boundary
    async def FederatedSearch(
        self, request: coordinator_pb2.FederatedSearchRequest, context: Context
    ) -> coordinator_pb2.FederatedSearchResponse:
        caller = self._caller(context)
        self.gatekeeper.limit(caller)
        answer = await self.service.federated_search(
            caller,
            vector=vector_from_proto(request.vector),
            source_space=request.source_space,
            k=request.k,
            silos=list(request.silos),
            merge=MERGE_FOR_MODE.get(request.merge, "unknown"),
            rerank_text=request.rerank_text,
            rerank_depth=request.rerank_depth,
            time_remaining=context.time_remaining(),
            signed=request.signed if request.HasField("signed") else None,
            wire_vector=request.vector,
        )
        self.gatekeeper.record(
            caller,
            "FederatedSearch",
            allowed=True,
            silos=[r.silo for r in answer.reports],
            results=len(answer.hits),
            signed=request.HasField("signed"),
            outcomes=",".join(f"{r.silo}:{r.outcome.value}" for r in answer.reports),
        )
        return coordinator_pb2.FederatedSearchResponse(
            hits=[
                coordinator_pb2.FederatedHit(
                    silo=h.silo,
                    hit=common_pb2.Hit(doc_id=h.doc_id, score=h.score, fields=dict(h.fields)),
                    merged_score=h.merged_score,
                )
                for h in answer.hits
            ],
            statuses=[
                common_pb2.SiloStatus(
                    silo=r.silo,
                    state=STATE_FOR_OUTCOME[r.outcome],
                    message=r.message,
                    adapter_id=r.adapter_id,
                    hit_count=r.hit_count,
                    elapsed_ms=r.elapsed_ms,
                )
                for r in answer.reports
            ],
        )

    @unary_boundary
    async def GetAdapter(
        self, request: coordinator_pb2.GetAdapterRequest, context: Context
    ) -> coordinator_pb2.GetAdapterResponse:
        caller = self._caller(context)
        files = await self.service.get_adapter(caller, request.adapter_id)
        self.gatekeeper.record(caller, "GetAdapter", allowed=True, adapter_id=request.adapter_id)
        return coordinator_pb2.GetAdapterResponse(
            manifest=files.manifest, weights=files.weights, signature=files.signature
        )


def _matrix(message: coordinator_pb2.SubmitAnchorEmbeddingsRequest) -> FloatMatrix:
    rows = [vector_from_proto(v) for v in message.vectors]
    if any(row.shape != rows[0].shape for row in rows):
        raise InvalidArgument("vectors of one chunk must share one dimension")
    return np.stack(rows) if rows else np.zeros((0, message.space.dimension), np.float32)
