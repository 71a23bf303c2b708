"""A typed asyncio client of one silo's SiloService (SDK, coordinator fan-out, CLI, tests).

Domain values in, domain values out; a refusal or failure raises the matching
``SiloBridgeError`` (``PermissionDenied``, ``Unavailable``, ``DeadlineExceeded``, ...).
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator, Sequence
from types import TracebackType

import grpc
import numpy as np

from silobridge.core.config import TlsFiles
from silobridge.core.documents import DeleteReceipt, Document, WriteReceipt
from silobridge.core.errors import InvalidArgument, SiloBridgeError
from silobridge.core.hits import Hit
from silobridge.core.listings import PreferenceRequest, SiloDescription
from silobridge.core.migration import MigrationCommand, MigrationPlan, MigrationStatus
from silobridge.core.queries import SiloBatch, SiloQuery
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor
from silobridge.core.vectors import FloatVector, WireVector
from silobridge.rpc import convert
from silobridge.rpc.calls import Peer, peer_errors, streamed, unary
from silobridge.rpc.transport import open_channel
from silobridge.v1 import silo_pb2, silo_pb2_grpc


class SiloClient:
    """``async with SiloClient(target, tls, expect=silo_id) as silo: await silo.describe()``.

    ``expect`` is the SPIFFE id the silo at ``target`` must hold (``open_channel``); a server
    with another certificate is refused during the handshake, before anything is sent, with
    ``Unavailable`` saying so.
    """

    def __init__(
        self,
        target: str,
        tls: TlsFiles | None,
        *,
        insecure: bool = False,
        expect: str | None = None,
    ) -> None:
        self.target = target
        self.channel = open_channel(target, tls, insecure=insecure, expect=expect)
        self.stub = silo_pb2_grpc.SiloServiceStub(self.channel)
        self.admin_stub = silo_pb2_grpc.SiloAdminServiceStub(self.channel)
        self._peer = Peer(f"silo {target}", target, expect)

    async def __aenter__(self) -> SiloClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.channel.close()

    async def describe(self, *, timeout: float | None = None) -> SiloDescription:
        reply = await unary(
            self._peer, self.stub.Describe(silo_pb2.DescribeRequest(), timeout=timeout)
        )
        return convert.description_from_proto(reply)

    async def embed_with_space(
        self, texts: Sequence[str], *, timeout: float | None = None
    ) -> tuple[FloatMatrix, SpaceDescriptor]:
        """Embed texts with the silo's model; the space says which model that was."""
        request = silo_pb2.EmbedRequest(texts=list(texts))
        reply = await unary(self._peer, self.stub.Embed(request, timeout=timeout))
        space = convert.space_from_proto(reply.space)
        if len(reply.vectors) != len(texts):
            raise InvalidArgument(
                f"{self._peer} returned {len(reply.vectors)} vectors for {len(texts)} texts"
            )
        return convert.matrix_from_protos(reply.vectors, space.dimension), space

    async def embed(self, texts: Sequence[str], *, timeout: float | None = None) -> FloatMatrix:
        matrix, _space = await self.embed_with_space(texts, timeout=timeout)
        return matrix

    async def search(self, query: SiloQuery, *, timeout: float | None = None) -> list[Hit]:
        """Search with a query as it travels (a forwarded one carries the client's signature)."""
        request = convert.silo_query_to_proto(query)
        reply = await unary(self._peer, self.stub.Search(request, timeout=timeout))
        return [convert.hit_from_proto(hit) for hit in reply.hits]

    async def search_batch(
        self, batch: SiloBatch, *, timeout: float | None = None
    ) -> list[list[Hit]]:
        """A forwarded batch in one call: one hit list per vector, in order."""
        request = convert.silo_batch_to_proto(batch)
        reply = await unary(self._peer, self.stub.SearchBatch(request, timeout=timeout))
        if len(reply.results) != len(batch.vectors):
            raise InvalidArgument(
                f"the silo answered {len(reply.results)} of a batch of {len(batch.vectors)}"
            )
        return convert.hit_lists_from_proto(reply)

    async def search_many(
        self, queries: Sequence[SiloQuery], *, timeout: float | None = None
    ) -> list[list[Hit] | SiloBridgeError]:
        """Independent queries in one call (``SearchMany``): per query, in order, its hits or
        the error a ``search`` of its own would have raised."""
        request = convert.silo_queries_to_proto(queries)
        reply = await unary(self._peer, self.stub.SearchMany(request, timeout=timeout))
        outcomes = convert.search_outcomes_from_proto(reply)
        if len(outcomes) != len(queries):
            raise InvalidArgument(
                f"the silo answered {len(outcomes)} of {len(queries)} queries in one call"
            )
        return [self._outcome(outcome) for outcome in outcomes]

    def _outcome(self, outcome: convert.Outcome) -> list[Hit] | SiloBridgeError:
        if not isinstance(outcome, tuple):
            return outcome
        code, message = outcome
        status = getattr(grpc.StatusCode, code, grpc.StatusCode.UNKNOWN)
        if not isinstance(status, grpc.StatusCode) or status is grpc.StatusCode.OK:
            status = grpc.StatusCode.UNKNOWN  # a refusal is never OK
        return self._peer.error(status, message)

    async def search_vector(
        self,
        vector: FloatVector,
        k: int,
        *,
        timeout: float | None = None,
        rerank_text: str = "",
        rerank_depth: int = 0,
    ) -> list[Hit]:
        """Search with a vector already in the silo's space."""
        query = SiloQuery(
            WireVector.of(vector), k, rerank_text=rerank_text, rerank_depth=rerank_depth
        )
        return await self.search(query, timeout=timeout)

    async def embed_anchors(
        self,
        anchor_set: str,
        version: str,
        sha256: str,
        *,
        count: int,
        timeout: float | None = None,
    ) -> FloatMatrix:
        """The silo's vectors of the ``count`` texts of an anchor set version, which it fetches
        from its coordinator and checks against ``sha256`` itself; streamed back in order.

        A reply out of order, or beyond ``count`` rows, ends the call (``InvalidArgument``):
        what is held in memory is bounded by the set's size.
        """
        request = silo_pb2.EmbedAnchorsRequest(
            anchor_set=anchor_set, version=version, sha256=sha256
        )
        rows: list[FloatVector] = []
        call = self.stub.EmbedAnchors(request, timeout=timeout)
        try:
            async for reply in streamed(self._peer, call):
                if reply.offset != len(rows) or len(rows) + len(reply.vectors) > count:
                    raise InvalidArgument(
                        f"{self._peer} sent anchor vectors at offset {reply.offset} after "
                        f"{len(rows)} of {count}"
                    )
                rows.extend(convert.vector_from_proto(v) for v in reply.vectors)
        finally:
            call.cancel()
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    async def prefer_anchors(
        self, request: PreferenceRequest, *, timeout: float | None = None
    ) -> list[int]:
        """The positions of the silo's ``request.count`` preferred texts of a public pool, best
        first; the silo fetches and checks the pool itself. More positions than asked for, or a
        repeated one, is refused (``InvalidArgument``)."""
        message = convert.preference_request_to_proto(request)
        reply = await unary(self._peer, self.stub.PreferAnchors(message, timeout=timeout))
        positions = convert.positions_from_proto(reply)
        if len(positions) > request.count or len(set(positions)) != len(positions):
            raise InvalidArgument(
                f"{self._peer} answered {len(positions)} positions ({len(set(positions))} "
                f"distinct) when asked for {request.count}"
            )
        return positions

    async def write_documents(
        self, batches: AsyncIterable[Sequence[Document]], *, timeout: float | None = None
    ) -> AsyncIterator[WriteReceipt]:
        """Add or update documents (the silo's admins only); one receipt per durable batch.

        Lock-step: the next batch goes out once the last one is acknowledged. That bounds what
        is in flight, and a refusal reaches the caller as itself rather than as gRPC core's
        INTERNAL, which a server that refuses a stream still being written can cause.
        """
        call = self.admin_stub.WriteDocuments(timeout=timeout)
        try:
            with peer_errors(self._peer):
                async for batch in batches:
                    await call.write(convert.documents_to_proto(batch))
                    reply = await call.read()
                    if not isinstance(reply, silo_pb2.WriteDocumentsResponse):
                        break  # the server ended the stream: its status says why, below
                    yield convert.write_receipt_from_proto(reply)
                await call.done_writing()
                code = await call.code()
                if code is not grpc.StatusCode.OK:
                    raise self._peer.error(code, await call.details() or "")
        finally:
            call.cancel()

    async def delete_documents(
        self, doc_ids: Sequence[str], *, timeout: float | None = None
    ) -> DeleteReceipt:
        """Remove documents by id (the silo's admins only)."""
        request = silo_pb2.DeleteDocumentsRequest(doc_ids=list(doc_ids))
        reply = await unary(self._peer, self.admin_stub.DeleteDocuments(request, timeout=timeout))
        return convert.delete_receipt_from_proto(reply)

    async def plan_migration(
        self, to_model: str, *, sample_size: int = 0, timeout: float | None = None
    ) -> MigrationPlan:
        """What moving the silo to ``to_model`` would take (the silo's admins only)."""
        request = silo_pb2.PlanMigrationRequest(to_model=to_model, sample_size=sample_size)
        reply = await unary(self._peer, self.admin_stub.PlanMigration(request, timeout=timeout))
        return convert.migration_plan_from_proto(reply)

    async def control_migration(
        self,
        command: MigrationCommand,
        *,
        to_model: str = "",
        sample_size: int = 0,
        cpu_share: float = 0.0,
        timeout: float | None = None,
    ) -> MigrationStatus:
        """One migration command (the silo's admins only); every command returns the status."""
        request = silo_pb2.ControlMigrationRequest(
            command=convert.migration_command_to_proto(command),
            to_model=to_model,
            sample_size=sample_size,
            cpu_share=cpu_share,
        )
        reply = await unary(self._peer, self.admin_stub.ControlMigration(request, timeout=timeout))
        return convert.migration_status_from_proto(reply.status)
