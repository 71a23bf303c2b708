"""The coordinator's gRPC face: unpack with ``convert``, call one domain method, pack the reply.

Every call is admitted by the gatekeeper (denylist) and leaves an audit line: the servicer
records successes here, the error boundary records every refusal.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from silobridge.coordinator.search.batch import check_batch_size
from silobridge.coordinator.service import CoordinatorService
from silobridge.core.listings import AnchorVectors
from silobridge.core.stage_timer import TIMINGS
from silobridge.rpc import convert
from silobridge.rpc.status import stream_boundary, unary_boundary
from silobridge.rpc.transport import peer_identity
from silobridge.security.gatekeeper import Gatekeeper
from silobridge.security.identity import PeerIdentity
from silobridge.v1 import coordinator_pb2, coordinator_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServiceServicer):
    """Thin adapter from ``CoordinatorService`` to ``silobridge.v1.CoordinatorService``."""

    def __init__(self, service: CoordinatorService, gatekeeper: Gatekeeper) -> None:
        self.service = service
        # Denylist, rate limits and the audit log; the error boundary audits every refusal.
        self.gatekeeper = gatekeeper

    def _caller(self, context: Context) -> PeerIdentity:
        # Once per call, before any authorization: the peer's budget, then the denylist.
        return self.gatekeeper.admit_peer(peer_identity(context))

    @unary_boundary
    async def RegisterSilo(
        self, request: coordinator_pb2.RegisterSiloRequest, context: Context
    ) -> coordinator_pb2.RegisterSiloResponse:
        caller = self._caller(context)
        record = await self.service.register_silo(caller, request.endpoint)
        self.gatekeeper.record(caller, "RegisterSilo", allowed=True, silos=[record.name])
        return coordinator_pb2.RegisterSiloResponse(
            silo=record.name, space=convert.space_to_proto(record.space)
        )

    @unary_boundary
    async def ListSilos(
        self, request: coordinator_pb2.ListSilosRequest, context: Context
    ) -> coordinator_pb2.ListSilosResponse:
        caller = self._caller(context)
        listings = await self.service.list_silos(caller)
        self.gatekeeper.record(caller, "ListSilos", allowed=True, results=len(listings))
        return coordinator_pb2.ListSilosResponse(
            silos=[convert.silo_listing_to_proto(listing) for listing in listings]
        )

    @stream_boundary
    async def GetAnchorSet(
        self, request: coordinator_pb2.GetAnchorSetRequest, context: Context
    ) -> AsyncIterator[coordinator_pb2.GetAnchorSetResponse]:
        caller = self._caller(context)
        sent = 0
        async for chunk in self.service.anchor_set(caller, request.name, request.version):
            sent += len(chunk.texts)
            yield convert.anchor_chunk_to_proto(chunk)
        self.gatekeeper.record(
            caller, "GetAnchorSet", allowed=True, results=sent, anchor_set=request.name
        )

    @unary_boundary
    async def SubmitAnchorEmbeddings(
        self,
        request_iterator: AsyncIterator[coordinator_pb2.SubmitAnchorEmbeddingsRequest],
        context: Context,
    ) -> coordinator_pb2.SubmitAnchorEmbeddingsResponse:
        async def chunks() -> AsyncIterator[AnchorVectors]:
            async for message in request_iterator:
                yield convert.anchor_vectors_from_proto(message)

        caller = self._caller(context)
        stored = await self.service.submit_anchor_embeddings(caller, chunks())
        self.gatekeeper.record(caller, "SubmitAnchorEmbeddings", allowed=True, results=stored)
        return coordinator_pb2.SubmitAnchorEmbeddingsResponse(stored=stored)

    @stream_boundary
    async def TrainAdapter(
        self, request: coordinator_pb2.TrainAdapterRequest, context: Context
    ) -> AsyncIterator[coordinator_pb2.TrainAdapterResponse]:
        caller = self._caller(context)
        progress = self.service.train_adapter(
            caller,
            source_space=request.source_space,
            target_space=request.target_space,
            anchor_set=request.anchor_set,
            version=request.anchor_set_version,
            kind=request.kind,
            prefer=request.prefer,
        )
        async for step in progress:
            if step.adapter is not None:
                self.gatekeeper.record(
                    caller, "TrainAdapter", allowed=True, adapter_id=step.adapter.adapter_id
                )
            yield convert.progress_to_proto(step)

    @unary_boundary
    async def ListAdapters(
        self, request: coordinator_pb2.ListAdaptersRequest, context: Context
    ) -> coordinator_pb2.ListAdaptersResponse:
        caller = self._caller(context)
        listings = await self.service.list_adapters(caller)
        self.gatekeeper.record(caller, "ListAdapters", allowed=True, results=len(listings))
        return coordinator_pb2.ListAdaptersResponse(
            adapters=[convert.adapter_listing_to_proto(listing) for listing in listings]
        )

    @unary_boundary
    async def FederatedSearch(
        self, request: coordinator_pb2.FederatedSearchRequest, context: Context
    ) -> coordinator_pb2.FederatedSearchResponse:
        with TIMINGS.stage("coordinator: FederatedSearch handler, in all"):
            return await self._federated_search(request, context)

    async def _federated_search(
        self, request: coordinator_pb2.FederatedSearchRequest, context: Context
    ) -> coordinator_pb2.FederatedSearchResponse:
        with TIMINGS.stage("coordinator: admission and request decode"):
            caller = self._caller(context)
            self.gatekeeper.limit(caller)
            query = convert.federated_query_from_proto(request)
        answer = await self.service.federated_search(
            caller, query, time_remaining=context.time_remaining()
        )
        with TIMINGS.stage("coordinator: audit line and response encode"):
            self.gatekeeper.record(
                caller,
                "FederatedSearch",
                allowed=True,
                silos=[status.silo for status in answer.statuses],
                results=len(answer.hits),
                signed=query.signed is not None,
                outcomes=",".join(f"{s.silo}:{s.state.value}" for s in answer.statuses),
            )
            return convert.answer_to_proto(answer)

    @unary_boundary
    async def FederatedSearchBatch(
        self, request: coordinator_pb2.FederatedSearchBatchRequest, context: Context
    ) -> coordinator_pb2.FederatedSearchBatchResponse:
        caller = self._caller(context)
        batch = convert.federated_batch_from_proto(request)
        # Size first: an oversized batch is refused before it costs the caller's budget.
        check_batch_size(len(batch.vectors), self.service.config.server.max_batch)
        self.gatekeeper.limit(caller, len(batch.vectors))  # one token per query
        answer = await self.service.federated_search_batch(
            caller, batch, time_remaining=context.time_remaining()
        )
        self.gatekeeper.record(
            caller,
            "FederatedSearchBatch",
            allowed=True,
            silos=[status.silo for status in answer.statuses],
            results=sum(len(hits) for hits in answer.answers),
            batch=len(batch.vectors),
            signed=batch.signed is not None,
            outcomes=",".join(f"{s.silo}:{s.state.value}" for s in answer.statuses),
        )
        return convert.batch_answer_to_proto(answer)

    @unary_boundary
    async def ManageSilo(
        self, request: coordinator_pb2.ManageSiloRequest, context: Context
    ) -> coordinator_pb2.ManageSiloResponse:
        caller = self._caller(context)
        silo, action, reason = convert.manage_silo_from_proto(request)
        state = await self.service.manage_silo(caller, silo, action, reason)
        self.gatekeeper.record(
            caller, "ManageSilo", allowed=True, silos=[state.silo], action=state.state
        )
        return convert.silo_state_to_proto(state)

    @unary_boundary
    async def GetAdapter(
        self, request: coordinator_pb2.GetAdapterRequest, context: Context
    ) -> coordinator_pb2.GetAdapterResponse:
        caller = self._caller(context)
        files = await self.service.get_adapter(caller, request.adapter_id)
        self.gatekeeper.record(caller, "GetAdapter", allowed=True, adapter_id=request.adapter_id)
        return convert.adapter_files_to_proto(files)

    @unary_boundary
    async def RecordAuditHead(
        self, request: coordinator_pb2.RecordAuditHeadRequest, context: Context
    ) -> coordinator_pb2.RecordAuditHeadResponse:
        caller = self._caller(context)
        head = convert.audit_head_from_proto(request.head)
        recorded = await self.service.record_audit_head(caller, head)
        self.gatekeeper.record(caller, "RecordAuditHead", allowed=True, checkpoint_of=head.covers)
        return coordinator_pb2.RecordAuditHeadResponse(recorded=recorded)

    @unary_boundary
    async def ListAuditHeads(
        self, request: coordinator_pb2.ListAuditHeadsRequest, context: Context
    ) -> coordinator_pb2.ListAuditHeadsResponse:
        caller = self._caller(context)
        heads = await self.service.list_audit_heads(caller, request.silo)
        self.gatekeeper.record(
            caller, "ListAuditHeads", allowed=True, silos=[request.silo], results=len(heads)
        )
        return coordinator_pb2.ListAuditHeadsResponse(
            heads=[convert.audit_head_to_proto(head) for head in heads]
        )
