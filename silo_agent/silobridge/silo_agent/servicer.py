"""The silo's gRPC face: unpack the message, run the domain call off the loop, pack the reply."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

import grpc

from silobridge.adapters import Adapter
from silobridge.core.errors import ResourceExhausted
from silobridge.core.vectors import validate_query_vector
from silobridge.rpc.convert import space_to_proto, vector_from_proto, vector_to_proto
from silobridge.rpc.status import stream_boundary, unary_boundary
from silobridge.rpc.transport import peer_identity
from silobridge.security.gatekeeper import Gatekeeper
from silobridge.security.identity import PeerIdentity
from silobridge.silo_agent.adapter_fetch import AdapterFetcher
from silobridge.silo_agent.service import SearchHit, SiloService
from silobridge.v1 import common_pb2, silo_pb2, silo_pb2_grpc

T = TypeVar("T")
Context = grpc.aio.ServicerContext[Any, Any]


class SiloServicer(silo_pb2_grpc.SiloServiceServicer):
    """Thin adapter from ``SiloService`` to ``silobridge.v1.SiloService``."""

    def __init__(
        self,
        service: SiloService,
        executor: Executor,
        gatekeeper: Gatekeeper,
        adapters: AdapterFetcher,
    ) -> None:
        self.service = service
        self.executor = executor
        # Denylist, rate limits and the audit log; the error boundary audits every refusal.
        self.gatekeeper = gatekeeper
        self.adapters = adapters
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
        caller = self.gatekeeper.admit(peer_identity(context))
        info = await self._run(lambda: self.service.describe(caller))
        self.gatekeeper.record(caller, "Describe", allowed=True)
        policy = info.disclosure
        return silo_pb2.DescribeResponse(
            silo=info.name,
            space=space_to_proto(info.space),
            document_count=info.document_count,
            max_k=info.max_k,
            policy=common_pb2.DisclosurePolicy(
                disclose_fields=list(policy.disclose_fields),
                accept_query_text=policy.accept_query_text,
                accept_spaces=list(policy.accept_spaces),
                max_k=policy.max_k,
            ),
        )

    @unary_boundary
    async def Embed(
        self, request: silo_pb2.EmbedRequest, context: Context
    ) -> silo_pb2.EmbedResponse:
        self.handled["Embed"] += 1
        caller = self.gatekeeper.admit(peer_identity(context))
        self.service.authorize("embed", caller)
        self.gatekeeper.limit(caller)
        texts = list(request.texts)
        vectors = await self._run(lambda: self.service.embed(caller, texts))
        self.gatekeeper.record(caller, "Embed", allowed=True, results=len(vectors))
        return silo_pb2.EmbedResponse(
            space=space_to_proto(self.service.embedder.space),
            vectors=[vector_to_proto(row) for row in vectors],
        )

    @stream_boundary
    async def EmbedAnchors(
        self, request_iterator: AsyncIterator[silo_pb2.EmbedAnchorsRequest], context: Context
    ) -> AsyncIterator[silo_pb2.EmbedAnchorsResponse]:
        self.handled["EmbedAnchors"] += 1
        caller = self.gatekeeper.admit(peer_identity(context))
        self.service.authorize("embed_anchors", caller)  # before reading any text
        limit = self.service.config.limits.max_anchor_texts
        total = 0
        anchor_set = ""
        async for chunk in request_iterator:
            anchor_set = chunk.anchor_set
            texts = list(chunk.texts)
            total += len(texts)
            if total > limit:
                raise ResourceExhausted(f"anchor stream exceeds this silo's limit of {limit} texts")
            vectors = await self._run(lambda t=texts: self.service.embed_anchors(caller, t))  # type: ignore[misc]
            yield silo_pb2.EmbedAnchorsResponse(vectors=[vector_to_proto(row) for row in vectors])
        self.gatekeeper.record(
            caller, "EmbedAnchors", allowed=True, results=total, anchor_set=anchor_set
        )

    @unary_boundary
    async def Search(
        self, request: silo_pb2.SearchRequest, context: Context
    ) -> silo_pb2.SearchResponse:
        self.handled["Search"] += 1
        caller = self.gatekeeper.admit(peer_identity(context))
        self.service.authorize("search", caller)  # an unauthorized caller learns nothing more
        signed = request.signed if request.HasField("signed") else None
        k, source_space = request.k, request.source_space
        rerank_text, rerank_depth = request.rerank_text, request.rerank_depth
        own = self.service.embedder.space.space_id
        translate = bool(source_space) and source_space != own
        # The silo translates forwarded queries itself, with an adapter it verified.
        adapter = self.adapters.cached(request.adapter_id, source_space) if translate else None

        def admit() -> PeerIdentity:
            asker = self.service.admit_query(
                caller,
                signed=signed,
                wire_vector=request.vector,
                source_space=source_space,
                k=k,
                rerank_text=rerank_text,
            )
            # The signer of a forwarded query answers to the denylist too, and to its budget.
            self.gatekeeper.admit(asker)
            self.gatekeeper.limit(asker)
            return asker

        def search(adapter: Adapter | None) -> list[SearchHit]:
            vector = vector_from_proto(request.vector)
            if adapter is not None:
                vector = adapter.apply_one(validate_query_vector(vector, adapter.source_dim))
            return self.service.search(caller, vector, k, rerank_text, rerank_depth)

        if translate and adapter is None:
            # Verified before anything is fetched: an unverified request triggers no download.
            asker = await self._run(admit)
            fetched = await self.adapters.get(request.adapter_id, source_space)
            hits = await self._run(lambda: search(fetched))
        else:
            # The usual case, one worker-thread hop: verify, admit, translate, search.
            asker, hits = await self._run(lambda: (admit(), search(adapter)))
        self.gatekeeper.record(
            asker,
            "Search",
            allowed=True,
            results=len(hits),
            via=caller.spiffe_id if caller != asker else None,
            signed=signed is not None,
            source_space=source_space or own,
            reranked=bool(rerank_text),
        )
        return silo_pb2.SearchResponse(
            hits=[common_pb2.Hit(doc_id=h.doc_id, score=h.score, fields=h.fields) for h in hits],
            space=space_to_proto(self.service.embedder.space),
        )
