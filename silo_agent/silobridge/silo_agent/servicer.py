"""The silo's gRPC faces (queries, and its admins' live writes): unpack, one domain call, pack."""

from __future__ import annotations

import collections
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from silobridge.core.documents import Document
from silobridge.core.stage_timer import TIMINGS
from silobridge.rpc import convert
from silobridge.rpc.status import refusal, stream_boundary, unary_boundary
from silobridge.rpc.transport import peer_identity
from silobridge.silo_agent.admin import SiloAdmin
from silobridge.silo_agent.handlers import SiloHandlers
from silobridge.v1 import silo_pb2, silo_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class SiloServicer(silo_pb2_grpc.SiloServiceServicer):
    """Thin adapter from ``SiloHandlers`` to ``silobridge.v1.SiloService``."""

    def __init__(self, handlers: SiloHandlers) -> None:
        self.handlers = handlers
        # The error boundary audits every refusal through the servicer's gatekeeper.
        self.gatekeeper = handlers.gatekeeper
        # How many calls reached a handler, per RPC: an operator metric, and how tests prove that
        # a refused TLS handshake ran no handler at all.
        self.handled: collections.Counter[str] = collections.Counter()

    @unary_boundary
    async def Describe(
        self, request: silo_pb2.DescribeRequest, context: Context
    ) -> silo_pb2.DescribeResponse:
        self.handled["Describe"] += 1
        description = await self.handlers.describe(peer_identity(context))
        return convert.description_to_proto(description)

    @unary_boundary
    async def Embed(
        self, request: silo_pb2.EmbedRequest, context: Context
    ) -> silo_pb2.EmbedResponse:
        self.handled["Embed"] += 1
        vectors = await self.handlers.embed(peer_identity(context), list(request.texts))
        return silo_pb2.EmbedResponse(
            space=convert.space_to_proto(self.handlers.space),
            vectors=[convert.vector_to_proto(row) for row in vectors],
        )

    @stream_boundary
    async def EmbedAnchors(
        self, request: silo_pb2.EmbedAnchorsRequest, context: Context
    ) -> AsyncIterator[silo_pb2.EmbedAnchorsResponse]:
        self.handled["EmbedAnchors"] += 1
        answers = self.handlers.embed_anchors(
            peer_identity(context), request.anchor_set, request.version, request.sha256
        )
        # Closed at once when the caller goes away mid-stream, not whenever it is collected.
        async with contextlib.aclosing(answers):
            async for offset, total, vectors in answers:
                yield silo_pb2.EmbedAnchorsResponse(
                    vectors=[convert.vector_to_proto(row) for row in vectors],
                    offset=offset,
                    total=total,
                )

    @unary_boundary
    async def PreferAnchors(
        self, request: silo_pb2.PreferAnchorsRequest, context: Context
    ) -> silo_pb2.PreferAnchorsResponse:
        self.handled["PreferAnchors"] += 1
        positions = await self.handlers.prefer_anchors(
            peer_identity(context), convert.preference_request_from_proto(request)
        )
        return convert.positions_to_proto(positions)

    @unary_boundary
    async def Search(
        self, request: silo_pb2.SearchRequest, context: Context
    ) -> silo_pb2.SearchResponse:
        self.handled["Search"] += 1
        with TIMINGS.stage("silo: Search handler, in all"):
            with TIMINGS.stage("silo: peer identity and request decode"):
                caller, query = peer_identity(context), convert.silo_query_from_proto(request)
            hits = await self.handlers.search(caller, query)
            with TIMINGS.stage("silo: response encode"):
                return silo_pb2.SearchResponse(
                    hits=[convert.hit_to_proto(hit) for hit in hits],
                    space=convert.space_to_proto(self.handlers.space),
                )

    @unary_boundary
    async def SearchMany(
        self, request: silo_pb2.SearchManyRequest, context: Context
    ) -> silo_pb2.SearchManyResponse:
        self.handled["SearchMany"] += 1
        caller, queries = peer_identity(context), convert.silo_queries_from_proto(request)
        outcomes: list[convert.Outcome] = []
        for outcome in await self.handlers.search_many(caller, queries):
            if isinstance(outcome, Exception):
                # Logged and audited as the refusal of a Search of its own would be.
                status, message = refusal(self, context, outcome, "SiloServicer.Search")
                outcomes.append((status.name, message))
            else:
                outcomes.append(outcome)
        return convert.search_outcomes_to_proto(outcomes, self.handlers.space)

    @unary_boundary
    async def SearchBatch(
        self, request: silo_pb2.SearchBatchRequest, context: Context
    ) -> silo_pb2.SearchBatchResponse:
        self.handled["SearchBatch"] += 1
        caller, batch = peer_identity(context), convert.silo_batch_from_proto(request)
        results = await self.handlers.search_batch(caller, batch)
        return convert.hit_lists_to_proto(results, self.handlers.space)


class SiloAdminServicer(silo_pb2_grpc.SiloAdminServiceServicer):
    """Thin adapter from ``SiloAdmin`` to ``silobridge.v1.SiloAdminService``."""

    def __init__(self, admin: SiloAdmin) -> None:
        self.admin = admin
        # The error boundary audits every refusal through the servicer's gatekeeper.
        self.gatekeeper = admin.gatekeeper

    @stream_boundary
    async def WriteDocuments(
        self, request_iterator: AsyncIterator[silo_pb2.WriteDocumentsRequest], context: Context
    ) -> AsyncIterator[silo_pb2.WriteDocumentsResponse]:
        # The first batch is read before admission (never stored unless admitted): refusing a
        # stream the client is still writing can reach it as gRPC core's INTERNAL instead.
        messages = aiter(request_iterator)
        first = await anext(messages, None)

        async def batches() -> AsyncIterator[list[Document]]:
            if first is None:
                return
            yield convert.documents_from_proto(first)
            async for message in messages:
                yield convert.documents_from_proto(message)

        receipts = self.admin.write(peer_identity(context), batches())
        async with contextlib.aclosing(receipts):
            async for receipt in receipts:
                yield convert.write_receipt_to_proto(receipt)

    @unary_boundary
    async def DeleteDocuments(
        self, request: silo_pb2.DeleteDocumentsRequest, context: Context
    ) -> silo_pb2.DeleteDocumentsResponse:
        receipt = await self.admin.delete(peer_identity(context), list(request.doc_ids))
        return convert.delete_receipt_to_proto(receipt)

    @unary_boundary
    async def PlanMigration(
        self, request: silo_pb2.PlanMigrationRequest, context: Context
    ) -> silo_pb2.PlanMigrationResponse:
        plan = await self.admin.plan_migration(
            peer_identity(context), request.to_model, request.sample_size
        )
        return convert.migration_plan_to_proto(plan)

    @unary_boundary
    async def ControlMigration(
        self, request: silo_pb2.ControlMigrationRequest, context: Context
    ) -> silo_pb2.ControlMigrationResponse:
        status = await self.admin.control_migration(
            peer_identity(context),
            convert.migration_command_from_proto(request.command),
            request.to_model,
            request.sample_size,
            request.cpu_share,
        )
        return silo_pb2.ControlMigrationResponse(status=convert.migration_status_to_proto(status))
