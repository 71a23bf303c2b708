"""The coordinator's gRPC links to silos: one mTLS ``SiloClient`` per endpoint, reused.

``SiloClient`` speaks domain values and raises ``SiloBridgeError``s, so this module needs no gRPC
of its own; the domain calls it through the ``SiloGateway`` protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from silobridge.core.config import TlsFiles
from silobridge.core.hits import Hit
from silobridge.core.listings import SiloDescription
from silobridge.core.queries import SiloQuery
from silobridge.core.spaces import FloatMatrix
from silobridge.rpc.silo_client import SiloClient


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

    async def describe(self, endpoint: str, *, timeout: float) -> SiloDescription:
        return await (await self._client(endpoint)).describe(timeout=timeout)

    async def search(self, endpoint: str, query: SiloQuery, *, timeout: float) -> list[Hit]:
        return await (await self._client(endpoint)).search(query, timeout=timeout)

    async def embed_anchors(
        self, endpoint: str, anchor_set: str, texts: Sequence[str], *, timeout: float | None
    ) -> FloatMatrix:
        client = await self._client(endpoint)
        return await client.embed_anchors(anchor_set, texts, timeout=timeout)

    async def close(self) -> None:
        async with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
