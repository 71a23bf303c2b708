"""A typed asyncio client of the coordinator (SDK, silo registration and adapter fetch, reports).

Domain values in, domain values out; a refusal or failure raises the matching
``SiloBridgeError`` (``PermissionDenied``, ``Unavailable``, ...) naming the coordinator.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from types import TracebackType

from silobridge.audit.heads import AuditHead
from silobridge.core.config import TlsFiles
from silobridge.core.federation import FederatedAnswer, FederatedBatchAnswer
from silobridge.core.listings import (
    AdapterFiles,
    AdapterListing,
    AnchorChunk,
    AnchorVectors,
    SiloAction,
    SiloListing,
    SiloState,
    TrainProgress,
)
from silobridge.core.queries import FederatedBatch, FederatedQuery
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor
from silobridge.rpc import convert
from silobridge.rpc.calls import Peer, peer_errors, streamed, unary
from silobridge.rpc.transport import open_channel
from silobridge.v1 import coordinator_pb2, coordinator_pb2_grpc


class CoordinatorClient:
    """``async with CoordinatorClient(target, tls) as hub: await hub.list_silos()``.

    Construct it inside a running event loop: it opens its channel at once.
    """

    def __init__(
        self,
        target: str,
        tls: TlsFiles | None,
        *,
        insecure: bool = False,
        timeout: float | None = None,
        expect: str | None = None,
    ) -> None:
        # expect: the coordinator's SPIFFE id; another certificate is refused (``open_channel``).
        self.target = target
        self.timeout = timeout
        self._channel = open_channel(target, tls, insecure=insecure, expect=expect)
        self._stub = coordinator_pb2_grpc.CoordinatorServiceStub(self._channel)
        self._peer = Peer(f"coordinator {target}", target, expect)

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close()

    def _deadline(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is None else timeout

    async def register_silo(
        self, endpoint: str, *, timeout: float | None = None
    ) -> tuple[str, SpaceDescriptor]:
        """Register the calling silo (named by its certificate) at ``endpoint``."""
        request = coordinator_pb2.RegisterSiloRequest(endpoint=endpoint)
        reply = await unary(
            self._peer, self._stub.RegisterSilo(request, timeout=self._deadline(timeout))
        )
        return reply.silo, convert.space_from_proto(reply.space)

    async def list_silos(self, *, timeout: float | None = None) -> list[SiloListing]:
        request = coordinator_pb2.ListSilosRequest()
        reply = await unary(
            self._peer, self._stub.ListSilos(request, timeout=self._deadline(timeout))
        )
        return [convert.silo_listing_from_proto(silo) for silo in reply.silos]

    async def manage_silo(
        self, silo: str, action: SiloAction, reason: str = "", *, timeout: float | None = None
    ) -> SiloState:
        """Disable, enable or remove a registered silo (consortium admins only)."""
        request = convert.manage_silo_to_proto(silo, action, reason)
        reply = await unary(
            self._peer, self._stub.ManageSilo(request, timeout=self._deadline(timeout))
        )
        return convert.silo_state_from_proto(reply)

    async def list_adapters(self, *, timeout: float | None = None) -> list[AdapterListing]:
        request = coordinator_pb2.ListAdaptersRequest()
        reply = await unary(
            self._peer, self._stub.ListAdapters(request, timeout=self._deadline(timeout))
        )
        return [convert.adapter_listing_from_proto(adapter) for adapter in reply.adapters]

    async def federated_search(
        self, query: FederatedQuery, *, timeout: float | None = None
    ) -> FederatedAnswer:
        request = convert.federated_query_to_proto(query)
        reply = await unary(
            self._peer, self._stub.FederatedSearch(request, timeout=self._deadline(timeout))
        )
        return convert.answer_from_proto(reply, query.source_space)

    async def federated_search_batch(
        self, batch: FederatedBatch, *, timeout: float | None = None
    ) -> FederatedBatchAnswer:
        """A batch of queries in one call: per query its merged hits, per silo one status."""
        request = convert.federated_batch_to_proto(batch)
        reply = await unary(
            self._peer, self._stub.FederatedSearchBatch(request, timeout=self._deadline(timeout))
        )
        return convert.batch_answer_from_proto(reply, batch.source_space)

    async def train_adapter(
        self,
        source_space: str,
        target_space: str,
        anchor_set: str,
        *,
        kind: str = "",
        version: str = "",
        prefer: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[TrainProgress]:
        """Train an adapter (admins only), yielding progress; no deadline unless given.
        ``prefer`` > 0: on that many texts of the anchor set both silos prefer."""
        request = coordinator_pb2.TrainAdapterRequest(
            source_space=source_space,
            target_space=target_space,
            anchor_set=anchor_set,
            kind=kind,
            anchor_set_version=version,
            prefer=prefer,
        )
        call = self._stub.TrainAdapter(request, timeout=timeout)
        try:
            async for message in streamed(self._peer, call):
                yield convert.progress_from_proto(message)
        finally:
            # A caller that stops iterating early must not leave the stream open.
            call.cancel()

    async def anchor_set(
        self, name: str, version: str = "", *, timeout: float | None = None
    ) -> AsyncIterator[AnchorChunk]:
        """Stream an anchor set's texts in chunks (``version`` empty: the newest)."""
        request = coordinator_pb2.GetAnchorSetRequest(name=name, version=version)
        call = self._stub.GetAnchorSet(request, timeout=self._deadline(timeout))
        try:
            async for message in streamed(self._peer, call):
                yield convert.anchor_chunk_from_proto(message)
        finally:
            call.cancel()

    async def submit_anchor_embeddings(
        self,
        anchor_set: str,
        version: str,
        space: SpaceDescriptor,
        chunks: AsyncIterator[tuple[int, FloatMatrix]],
        *,
        timeout: float | None = None,
    ) -> int:
        """Send a whole anchor set's vectors as (offset, rows) chunks; returns how many stored."""

        async def requests() -> AsyncIterator[coordinator_pb2.SubmitAnchorEmbeddingsRequest]:
            async for offset, rows in chunks:
                yield convert.anchor_vectors_to_proto(
                    AnchorVectors(anchor_set, version, space, offset, rows)
                )

        with peer_errors(self._peer):
            reply = await self._stub.SubmitAnchorEmbeddings(requests(), timeout=timeout)
        return reply.stored

    async def get_adapter(self, adapter_id: str, *, timeout: float | None = None) -> AdapterFiles:
        """A signed adapter artifact, byte for byte (the caller verifies it)."""
        request = coordinator_pb2.GetAdapterRequest(adapter_id=adapter_id)
        reply = await unary(
            self._peer, self._stub.GetAdapter(request, timeout=self._deadline(timeout))
        )
        return convert.adapter_files_from_proto(reply)

    async def record_audit_head(self, head: AuditHead, *, timeout: float | None = None) -> int:
        """Send one signed checkpoint head of the calling silo's audit log; how many are kept."""
        request = coordinator_pb2.RecordAuditHeadRequest(head=convert.audit_head_to_proto(head))
        reply = await unary(
            self._peer, self._stub.RecordAuditHead(request, timeout=self._deadline(timeout))
        )
        return reply.recorded

    async def list_audit_heads(self, silo: str, *, timeout: float | None = None) -> list[AuditHead]:
        """The audit checkpoint heads the coordinator recorded for ``silo``."""
        request = coordinator_pb2.ListAuditHeadsRequest(silo=silo)
        reply = await unary(
            self._peer, self._stub.ListAuditHeads(request, timeout=self._deadline(timeout))
        )
        return [convert.audit_head_from_proto(head) for head in reply.heads]
