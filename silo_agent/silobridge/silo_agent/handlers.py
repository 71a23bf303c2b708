"""Each call a peer makes to the silo, from admission to audit line: the servicer's one domain call.

Per call, in this order: the caller's certificate against the denylist, the silo's access rule
for the RPC (authorization happens here once, nowhere else), the asker's rate budget, the work
itself on the worker pool (embedding and FAISS are CPU-bound; the event loop stays free), and
an audit line for the answer. Refusals raise domain errors; the gRPC boundary audits them.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Sequence
from concurrent.futures import Executor
from typing import TypeVar

from silobridge.core.errors import ResourceExhausted
from silobridge.core.hits import Hit
from silobridge.core.listings import SiloDescription
from silobridge.core.offload import off_loop
from silobridge.core.queries import SiloQuery
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor
from silobridge.security.gatekeeper import Gatekeeper
from silobridge.security.identity import PeerIdentity
from silobridge.silo_agent.adapter_fetch import AdapterFetcher, Translation
from silobridge.silo_agent.service import SiloService

T = TypeVar("T")
# One request message of an anchor stream: (anchor set name, its texts).
AnchorBatch = tuple[str, Sequence[str]]


class SiloHandlers:
    """``describe``, ``embed``, ``embed_anchors`` and ``search`` as a peer calls them."""

    def __init__(
        self,
        service: SiloService,
        executor: Executor,
        gatekeeper: Gatekeeper,
        adapters: AdapterFetcher,
    ) -> None:
        self.service = service
        self.executor = executor
        # Denylist, rate limits and the audit log.
        self.gatekeeper = gatekeeper
        self.adapters = adapters

    @property
    def space(self) -> SpaceDescriptor:
        """The space every vector this silo returns is in."""
        return self.service.space

    async def _run(self, work: Callable[[], T]) -> T:
        return await off_loop(self.executor, work)

    def _admit(self, caller: PeerIdentity, rpc: str) -> PeerIdentity:
        caller = self.gatekeeper.admit(caller)
        self.service.authorize(rpc, caller)
        return caller

    async def describe(self, caller: PeerIdentity) -> SiloDescription:
        caller = self._admit(caller, "describe")
        description = await self._run(self.service.describe)
        self.gatekeeper.record(caller, "Describe", allowed=True)
        return description

    async def embed(self, caller: PeerIdentity, texts: Sequence[str]) -> FloatMatrix:
        """Vectors of a client's own texts, in ``space``."""
        caller = self._admit(caller, "embed")
        self.gatekeeper.limit(caller)
        vectors = await self._run(lambda: self.service.embed(texts))
        self.gatekeeper.record(caller, "Embed", allowed=True, results=len(vectors))
        return vectors

    async def embed_anchors(
        self, caller: PeerIdentity, batches: AsyncIterable[AnchorBatch]
    ) -> AsyncGenerator[FloatMatrix, None]:
        """The vectors of each batch of anchor texts, batch by batch, as they are read."""
        caller = self._admit(caller, "embed_anchors")  # before reading any text
        limit = self.service.config.limits.max_anchor_texts
        total = 0
        anchor_set = ""
        async for name, texts in batches:
            anchor_set = name
            total += len(texts)
            if total > limit:
                raise ResourceExhausted(f"anchor stream exceeds this silo's limit of {limit} texts")
            yield await self._run(functools.partial(self.service.embed_anchors, texts))
        self.gatekeeper.record(
            caller, "EmbedAnchors", allowed=True, results=total, anchor_set=anchor_set
        )

    async def search(self, caller: PeerIdentity, query: SiloQuery) -> list[Hit]:
        """The hits for ``query``; a forwarded one answers to its signer's rights, not ours."""
        caller = self._admit(caller, "search")  # an unauthorized caller learns nothing more
        translate = self.service.translates(query)
        # The silo translates forwarded queries itself, with an adapter it verified.
        adapter = self.adapters.cached(query.adapter_id, query.source_space) if translate else None

        def admit() -> PeerIdentity:
            asker = self.service.admit_query(caller, query)
            # The signer of a forwarded query answers to the denylist too, and to its budget.
            self.gatekeeper.admit(asker)
            self.gatekeeper.limit(asker)
            return asker

        def answer(translation: Translation | None) -> list[Hit]:
            return self.service.answer(query, translation)

        if translate and adapter is None:
            # Verified before anything is fetched: an unverified request triggers no download.
            asker = await self._run(admit)
            fetched = await self.adapters.get(query.adapter_id, query.source_space)
            hits = await self._run(lambda: answer(fetched))
        else:
            # The usual case, one worker-thread hop: verify, admit, translate, search.
            asker, hits = await self._run(lambda: (admit(), answer(adapter)))
        self.gatekeeper.record(
            asker,
            "Search",
            allowed=True,
            results=len(hits),
            via=caller.spiffe_id if caller != asker else None,
            signed=query.signed is not None,
            source_space=query.source_space or self.space.space_id,
            reranked=bool(query.rerank_text),
        )
        return hits
