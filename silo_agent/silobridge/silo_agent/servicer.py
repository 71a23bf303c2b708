"""The silo's gRPC face: unpack the message, run the domain call off the loop, pack the reply."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from silobridge.shared.errors import ResourceExhausted
from silobridge.shared.grpc_errors import stream_boundary, unary_boundary
from silobridge.shared.serde import space_to_proto, vector_from_proto, vector_to_proto
from silobridge.shared.transport import peer_identity
from silobridge.silo_agent.service import SiloService
from silobridge.v1 import common_pb2, silo_pb2, silo_pb2_grpc

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]


class SiloServicer(silo_pb2_grpc.SiloServiceServicer):
    """Thin adapter from ``SiloService`` to ``silobridge.v1.SiloService``."""

    def __init__(self, service: SiloService, executor: Executor) -> None:
        self.service = service
        self.executor = executor
        # How many calls reached a handler, per RPC: an operator metric, and how tests prove that
        # a refused TLS handshake ran no handler at all.
        self.handled: collections.Counter[str] = collections.Counter()

    async def _run(self, work: Callable[[], T]) -> T:
        # CPU-bound work (embedding, FAISS) runs in a bounded pool so the event loop stays free.
        return await asyncio.get_running_loop().run_in_executor(self.executor, work)

    @unary_boundary
    async def Describe(
        self, request: silo_pb2.DescribeRequest, context: Context
    ) -> silo_pb2.DescribeResponse:
        self.handled["Describe"] += 1
        caller = peer_identity(context)
        info = await self._run(lambda: self.service.describe(caller))
        return silo_pb2.DescribeResponse(
            silo=info.name,
            space=space_to_proto(info.space),
            document_count=info.document_count,
            max_k=info.max_k,
        )

    @unary_boundary
    async def Embed(
        self, request: silo_pb2.EmbedRequest, context: Context
    ) -> silo_pb2.EmbedResponse:
        self.handled["Embed"] += 1
        caller = peer_identity(context)
        texts = list(request.texts)
        vectors = await self._run(lambda: self.service.embed(caller, texts))
        return silo_pb2.EmbedResponse(
            space=space_to_proto(self.service.embedder.space),
            vectors=[vector_to_proto(row) for row in vectors],
        )

    @stream_boundary
    async def EmbedAnchors(
        self, request_iterator: AsyncIterator[silo_pb2.EmbedAnchorsRequest], context: Context
    ) -> AsyncIterator[silo_pb2.EmbedAnchorsResponse]:
        self.handled["EmbedAnchors"] += 1
        caller = peer_identity(context)
        self.service.authorize("embed_anchors", caller)  # before reading any text
        limit = self.service.config.limits.max_anchor_texts
        total = 0
        async for chunk in request_iterator:
            texts = list(chunk.texts)
            total += len(texts)
            if total > limit:
                raise ResourceExhausted(f"anchor stream exceeds this silo's limit of {limit} texts")
            vectors = await self._run(lambda t=texts: self.service.embed_anchors(caller, t))  # type: ignore[misc]
            yield silo_pb2.EmbedAnchorsResponse(vectors=[vector_to_proto(row) for row in vectors])

    @unary_boundary
    async def Search(
        self, request: silo_pb2.SearchRequest, context: Context
    ) -> silo_pb2.SearchResponse:
        self.handled["Search"] += 1
        caller = peer_identity(context)
        self.service.authorize("search", caller)  # an unauthorized caller learns nothing more
        vector = vector_from_proto(request.vector)
        k = request.k
        rerank_text, rerank_depth = request.rerank_text, request.rerank_depth
        hits = await self._run(
            lambda: self.service.search(caller, vector, k, rerank_text, rerank_depth)
        )
        return silo_pb2.SearchResponse(
            hits=[common_pb2.Hit(doc_id=h.doc_id, score=h.score, fields=h.fields) for h in hits],
            space=space_to_proto(self.service.embedder.space),
        )
