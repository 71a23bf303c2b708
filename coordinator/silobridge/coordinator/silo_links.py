"""The coordinator's gRPC links to silos: one mTLS channel per endpoint, and error outcomes.

This is the only coordinator module besides the servicer that knows about gRPC. The service
calls it through the ``SiloGateway`` protocol, so its domain logic stays transport-free.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import grpc

from silobridge.coordinator.search.outcomes import Forwarded, SiloOutcome
from silobridge.core.config import TlsFiles
from silobridge.core.spaces import FloatMatrix
from silobridge.core.vectors import FloatVector
from silobridge.rpc.silo_client import RemoteHit, SiloClient, SiloInfo

_OUTCOME_FOR_STATUS = {
    grpc.StatusCode.DEADLINE_EXCEEDED: SiloOutcome.TIMEOUT,
    grpc.StatusCode.UNAVAILABLE: SiloOutcome.UNAVAILABLE,
    grpc.StatusCode.PERMISSION_DENIED: SiloOutcome.DENIED,
    grpc.StatusCode.UNAUTHENTICATED: SiloOutcome.DENIED,
}


class GrpcSiloGateway:
    """Calls silos over mutual TLS with the coordinator's own certificate."""

    def __init__(self, tls: TlsFiles | None, *, insecure: bool = False) -> None:
        self._tls = tls
        self._insecure = insecure
        self._clients: dict[str, SiloClient] = {}
        self._lock = asyncio.Lock()

    async def _client(self, endpoint: str) -> SiloClient:
        # Channels are reused across queries: a TLS handshake per query would cost milliseconds.
        async with self._lock:
            client = self._clients.get(endpoint)
            if client is None:
                client = SiloClient(endpoint, self._tls, insecure=self._insecure)
                self._clients[endpoint] = client
            return client

    async def describe(self, endpoint: str, *, timeout: float) -> SiloInfo:
        return await (await self._client(endpoint)).describe(timeout=timeout)

    async def search(
        self,
        endpoint: str,
        vector: FloatVector,
        k: int,
        *,
        timeout: float,
        rerank_text: str = "",
        rerank_depth: int = 0,
        forward: Forwarded | None = None,
    ) -> list[RemoteHit]:
        client = await self._client(endpoint)
        if forward is None:
            return await client.search(
                vector, k, timeout=timeout, rerank_text=rerank_text, rerank_depth=rerank_depth
            )
        return await client.search(
            vector,
            k,
            timeout=timeout,
            rerank_text=rerank_text,
            rerank_depth=rerank_depth,
            signed=forward.signed,
            source_space=forward.source_space,
            adapter_id=forward.adapter_id,
        )

    async def embed_anchors(
        self, endpoint: str, anchor_set: str, texts: Sequence[str], *, timeout: float | None
    ) -> FloatMatrix:
        client = await self._client(endpoint)
        return await client.embed_anchors(anchor_set, texts, timeout=timeout)

    def outcome(self, error: BaseException) -> tuple[SiloOutcome, str]:
        """How a failed silo call shows in the caller's per-silo status."""
        if isinstance(error, grpc.aio.AioRpcError):
            state = _OUTCOME_FOR_STATUS.get(error.code(), SiloOutcome.ERROR)
            return state, f"{error.code().name}: {error.details() or ''}".rstrip(": ")
        if isinstance(error, TimeoutError):
            return SiloOutcome.TIMEOUT, "no answer within the deadline"
        return SiloOutcome.ERROR, "the silo call failed; the coordinator logged the details"

    async def close(self) -> None:
        async with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
