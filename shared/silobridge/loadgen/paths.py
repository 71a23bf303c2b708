"""The query paths a load run drives, each a ``Call`` over vectors embedded once, up front.

``direct``: the client's own home silo, searched with a vector of its own space (no coordinator,
no signature). ``federated:<silo>`` and ``federated:all``: through the coordinator with
``FederatedClient.search_vector``, each query freshly signed (nonces are one-use); the time the
client spends in its ``QuerySigner`` is clocked per query. ``batch_call``: one
``FederatedClient.search_vectors`` of many vectors per call (one signature per batch).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from silobridge.client.api import FederatedClient
from silobridge.core.federation import FederatedAnswer
from silobridge.core.queries import SignedQuery, SiloQuery
from silobridge.core.spaces import FloatMatrix
from silobridge.core.vectors import WireVector
from silobridge.loadgen.runner import Call
from silobridge.rpc.silo_client import SiloClient
from silobridge.security.signed_query.signing import QuerySigner

# The home silo's limit on texts per Embed call is usually 64 or more; stay under it.
EMBED_CHUNK = 32


@dataclass
class SigningClock:
    """Seconds spent signing and how many queries were signed."""

    seconds: float = 0.0
    count: int = 0

    def reset(self) -> None:
        self.seconds, self.count = 0.0, 0


@dataclass(frozen=True)
class TimedSigner(QuerySigner):
    """A ``QuerySigner`` that adds the time of each signature to its clock."""

    clock: SigningClock = field(default_factory=SigningClock)

    def __call__(  # the same keywords, passed through
        self, **claims: Any
    ) -> SignedQuery:
        started = time.perf_counter()
        try:
            return super().__call__(**claims)
        finally:
            self.clock.seconds += time.perf_counter() - started
            self.clock.count += 1


def time_signing(client: FederatedClient) -> SigningClock:
    """Swap the client's signer for a timed one with the same key; return its clock."""
    signer = client._signer  # the SDK has no hook for this; the key is already loaded
    if signer is None:
        return SigningClock()
    timed = TimedSigner(signer.key, signer.certificate_pem)
    client._signer = timed
    return timed.clock


async def embed_all(client: FederatedClient, texts: Sequence[str]) -> tuple[FloatMatrix, str]:
    """Embed every query text at the home silo, in chunks, before any timing."""
    chunks: list[FloatMatrix] = []
    space_id = ""
    for start in range(0, len(texts), EMBED_CHUNK):
        matrix, space = await client.embed(texts[start : start + EMBED_CHUNK])
        chunks.append(matrix)
        space_id = space.space_id
    return np.vstack(chunks).astype(np.float32), space_id


def direct_call(silo: SiloClient, vectors: FloatMatrix, k: int, timeout: float) -> Call:
    queries = [SiloQuery(WireVector.of(row), k) for row in vectors]

    async def call(number: int) -> bool:
        await silo.search(queries[number % len(queries)], timeout=timeout)
        return True

    return call


def federated_call(
    client: FederatedClient, vectors: FloatMatrix, space_id: str, k: int, silos: Sequence[str]
) -> Call:
    targets = tuple(silos)

    async def call(number: int) -> bool:
        vector = vectors[number % len(vectors)]
        answer: FederatedAnswer = await client.search_vector(vector, space_id, k=k, silos=targets)
        return not answer.failed

    return call


def batch_call(
    client: FederatedClient,
    vectors: FloatMatrix,
    space_id: str,
    k: int,
    silos: Sequence[str],
    size: int,
) -> Call:
    """A call sends ``size`` vectors (the next ones, wrapping round) as one batch."""
    targets = tuple(silos)

    async def call(number: int) -> bool:
        rows = np.take(vectors, range(number * size, (number + 1) * size), axis=0, mode="wrap")
        answer = await client.search_vectors(rows, space_id, k=k, silos=targets, max_batch=size)
        return not answer.failed

    return call
