"""A typed asyncio client for one silo's SiloService (CLI, tests, coordinator)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from types import TracebackType

import grpc
import numpy as np

from silobridge.shared.serde import space_from_proto, vector_from_proto, vector_to_proto
from silobridge.shared.spaces import FloatMatrix, SpaceDescriptor
from silobridge.shared.transport import TlsFiles, open_channel
from silobridge.shared.vectors import FloatVector
from silobridge.v1 import common_pb2, silo_pb2, silo_pb2_grpc


@dataclass(frozen=True)
class SiloInfo:
    name: str
    space: SpaceDescriptor
    document_count: int
    max_k: int
    # What the silo's own policy discloses (None from a silo too old to say).
    policy: common_pb2.DisclosurePolicy | None = None


@dataclass(frozen=True)
class RemoteHit:
    doc_id: str
    score: float
    fields: dict[str, str]


class SiloClient:
    """``async with SiloClient(target, tls) as silo: await silo.search(vector, k)``."""

    def __init__(self, target: str, tls: TlsFiles | None, *, insecure: bool = False) -> None:
        self.target = target
        self.channel = open_channel(target, tls, insecure=insecure)
        self.stub = silo_pb2_grpc.SiloServiceStub(self.channel)

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

    async def describe(self, *, timeout: float | None = None) -> SiloInfo:
        reply = await self.stub.Describe(silo_pb2.DescribeRequest(), timeout=timeout)
        return SiloInfo(
            name=reply.silo,
            space=space_from_proto(reply.space),
            document_count=reply.document_count,
            max_k=reply.max_k,
            policy=reply.policy if reply.HasField("policy") else None,
        )

    async def embed(self, texts: Sequence[str], *, timeout: float | None = None) -> FloatMatrix:
        reply = await self.stub.Embed(silo_pb2.EmbedRequest(texts=list(texts)), timeout=timeout)
        rows = [vector_from_proto(v) for v in reply.vectors]
        return np.stack(rows) if rows else np.zeros((0, reply.space.dimension), np.float32)

    async def search(
        self,
        vector: FloatVector,
        k: int,
        *,
        timeout: float | None = None,
        rerank_text: str = "",
        rerank_depth: int = 0,
        signed: common_pb2.SignedQuery | None = None,
        source_space: str = "",
        adapter_id: str = "",
    ) -> list[RemoteHit]:
        """Search; a forwarded query carries the client's signature and its original vector."""
        request = silo_pb2.SearchRequest(
            vector=vector_to_proto(vector),
            k=k,
            rerank_text=rerank_text,
            rerank_depth=rerank_depth,
            signed=signed,
            source_space=source_space,
            adapter_id=adapter_id,
        )
        reply = await self.stub.Search(request, timeout=timeout)
        return [RemoteHit(h.doc_id, h.score, dict(h.fields)) for h in reply.hits]

    async def embed_anchors(
        self,
        anchor_set: str,
        texts: Sequence[str],
        *,
        chunk: int = 256,
        timeout: float | None = None,
    ) -> FloatMatrix:
        """Stream anchor texts in chunks; vectors come back in the same order."""

        async def requests() -> AsyncIterator[silo_pb2.EmbedAnchorsRequest]:
            for start in range(0, len(texts), chunk):
                yield silo_pb2.EmbedAnchorsRequest(
                    anchor_set=anchor_set, texts=list(texts[start : start + chunk])
                )

        rows: list[FloatVector] = []
        call = self.stub.EmbedAnchors(requests(), timeout=timeout)
        async for reply in call:
            rows.extend(vector_from_proto(v) for v in reply.vectors)
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)


def is_unavailable(error: BaseException) -> bool:
    """True for a gRPC error meaning the silo could not be reached (down, handshake refused)."""
    return isinstance(error, grpc.aio.AioRpcError) and error.code() is grpc.StatusCode.UNAVAILABLE
