"""The coordinator's gRPC links to silos: one mTLS ``SiloClient`` per endpoint, reused.

``SiloClient`` speaks domain values and raises ``SiloBridgeError``s, so this module needs no gRPC
of its own; the domain calls it through the ``SiloGateway`` protocol.
"""

from __future__ import annotations

import asyncio

from silobridge.core.config import TlsFiles
from silobridge.core.errors import SiloBridgeError
from silobridge.core.hits import Hit
from silobridge.core.listings import AnchorSetRef, PreferenceRequest, SiloDescription
from silobridge.core.queries import SiloBatch, SiloQuery
from silobridge.core.spaces import FloatMatrix
from silobridge.rpc.silo_client import SiloClient


class GrpcSiloGateway:
    """Calls silos over mutual TLS with the coordinator's own certificate."""

    def __init__(self, tls: TlsFiles | None, *, insecure: bool = False) -> None:
        self._tls = tls
        self._insecure = insecure
        # Keyed by endpoint and the identity expected there: a channel checks one identity.
        self._clients: dict[tuple[str, str], SiloClient] = {}
        self._lock = asyncio.Lock()

    async def _client(self, endpoint: str, expect: str) -> SiloClient:
        # Channels are reused across queries: a TLS handshake per query would cost milliseconds.
        async with self._lock:
            client = self._clients.get((endpoint, expect))
            if client is None:
                client = SiloClient(endpoint, self._tls, insecure=self._insecure, expect=expect)
                self._clients[(endpoint, expect)] = client
            return client

    async def describe(self, endpoint: str, *, expect: str, timeout: float) -> SiloDescription:
        return await (await self._client(endpoint, expect)).describe(timeout=timeout)

    async def search(
        self, endpoint: str, query: SiloQuery, *, expect: str, timeout: float
    ) -> list[Hit]:
        return await (await self._client(endpoint, expect)).search(query, timeout=timeout)

    async def search_batch(
        self, endpoint: str, batch: SiloBatch, *, expect: str, timeout: float
    ) -> list[list[Hit]]:
        return await (await self._client(endpoint, expect)).search_batch(batch, timeout=timeout)

    async def search_many(
        self, endpoint: str, queries: list[SiloQuery], *, expect: str, timeout: float
    ) -> list[list[Hit] | SiloBridgeError]:
        client = await self._client(endpoint, expect)
        return await client.search_many(queries, timeout=timeout)

    async def embed_anchors(
        self,
        endpoint: str,
        anchors: AnchorSetRef,
        *,
        expect: str,
        timeout: float | None,
    ) -> FloatMatrix:
        client = await self._client(endpoint, expect)
        return await client.embed_anchors(
            anchors.name, anchors.version, anchors.sha256, count=anchors.count, timeout=timeout
        )

    async def prefer_anchors(
        self,
        endpoint: str,
        request: PreferenceRequest,
        *,
        expect: str,
        timeout: float | None,
    ) -> list[int]:
        client = await self._client(endpoint, expect)
        return await client.prefer_anchors(request, timeout=timeout)

    async def close(self) -> None:
        async with self._lock:
            clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            await client.close()
