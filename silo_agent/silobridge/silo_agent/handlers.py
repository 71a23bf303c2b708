"""Each call a peer makes to the silo, from admission to audit line: the servicer's one domain call.

Per call, in this order: the caller's certificate against the denylist, the silo's access rule
for the RPC (authorization happens here once, nowhere else), the asker's rate budget, for a
signed query its nonce (last, so a refused query never burns it), the work itself on the worker
pool (embedding and FAISS are CPU-bound; the event loop stays free), and an audit line for the
answer. Refusals raise domain errors; the gRPC boundary audits them (a refusal after a forwarded
query's signature verified: under its signer, ``via`` the forwarder). Only a coordinator's
forward makes the silo fetch an adapter.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import Executor
from typing import TypeVar

import numpy as np

from silobridge.core.errors import InvalidArgument, PermissionDenied
from silobridge.core.hits import Hit
from silobridge.core.listings import PreferenceRequest, SiloDescription
from silobridge.core.offload import off_loop
from silobridge.core.queries import SiloBatch, SiloQuery
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor
from silobridge.core.stage_timer import TIMINGS
from silobridge.security.gatekeeper import Gatekeeper
from silobridge.security.identity import PeerIdentity, Role
from silobridge.silo_agent import batch as batch_queries
from silobridge.silo_agent.adapter_fetch import AdapterFetcher, Translation
from silobridge.silo_agent.receiving.preferences import (
    EMBED_CHUNK,
    AnchorPreferences,
    check_count,
)
from silobridge.silo_agent.registration import fetch_checked_anchor_set, vectors_per_message
from silobridge.silo_agent.service import Answer, SiloService, refused_on_behalf_of

log = logging.getLogger(__name__)
T = TypeVar("T")
# One reply of an anchor stream: (offset of its first row, texts in the set, the rows).
AnchorRows = tuple[int, int, FloatMatrix]
_SHA256 = re.compile(r"[0-9a-f]{64}", re.ASCII)


class SiloHandlers:
    """``describe``, ``embed``, ``embed_anchors``, ``prefer_anchors`` and ``search`` as a peer
    calls them."""

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
        # PreferAnchors ([receiving] anchor_preferences), and the last pool's vectors.
        self.preferences = AnchorPreferences(service)

    @property
    def space(self) -> SpaceDescriptor:
        """The space every vector this silo returns is in."""
        return self.service.space

    async def _run(self, work: Callable[[], T]) -> T:
        return await off_loop(self.executor, work)

    def _admit(self, caller: PeerIdentity, rpc: str) -> PeerIdentity:
        # The peer's per-call budget and the denylist come before authorization: a refused
        # call costs its caller a token too, so a flood of them is cut off early.
        caller = self.gatekeeper.admit_peer(caller)
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
        self, caller: PeerIdentity, anchor_set: str, version: str, sha256: str
    ) -> AsyncGenerator[AnchorRows, None]:
        """The vectors of a public anchor set the caller names, in bounded chunks, in order.

        The texts are fetched from this silo's own coordinator and checked against ``sha256``
        before anything is embedded: a caller cannot have arbitrary texts embedded, and each
        reply carries a bounded number of rows, so no reply can outgrow the message limit.
        """
        caller = self._admit(caller, "embed_anchors")
        _check_named_set(anchor_set, version, sha256)
        texts = await fetch_checked_anchor_set(
            self.service.config,
            anchor_set,
            version,
            sha256,
            max_texts=self.service.config.limits.max_anchor_texts,
        )
        per_reply = vectors_per_message(self.space.dimension)
        reused = 0
        for offset in range(0, len(texts), per_reply):
            part = texts[offset : offset + per_reply]
            # A set derived from the last pool this silo ranked is served from its vectors.
            rows = self.preferences.cached_rows(part)
            if rows is None:
                rows = await self._run(functools.partial(self.service.embed_anchors, part))
            else:
                reused += len(part)
            yield offset, len(texts), rows
        if reused:
            log.info("EmbedAnchors %s %s: %d of %d rows from the last ranked pool",
                     anchor_set, version, reused, len(texts))  # fmt: skip
        self.gatekeeper.record(
            caller,
            "EmbedAnchors",
            allowed=True,
            results=len(texts),
            anchor_set=anchor_set,
            version=version,
            reused=reused or None,
        )

    async def prefer_anchors(self, caller: PeerIdentity, request: PreferenceRequest) -> list[int]:
        """The positions of the ``request.count`` texts of a public pool nearest this silo's
        documents, best first; only when its policy answers anchor preferences.

        The pool is fetched and checked like an EmbedAnchors set; nothing but positions leaves.
        """
        caller = self._admit(caller, "prefer_anchors")
        self.preferences.check_enabled()
        _check_named_set(request.name, request.version, request.sha256)
        if request.count < 1:
            raise InvalidArgument(f"count must be at least 1, got {request.count}")
        texts = await fetch_checked_anchor_set(
            self.service.config,
            request.name,
            request.version,
            request.sha256,
            max_texts=self.service.config.limits.max_anchor_texts,
        )
        check_count(request.count, len(texts), request.name)
        pool = self.preferences.embedded(request.sha256)
        if pool is None:
            parts: list[FloatMatrix] = []
            for offset in range(0, len(texts), EMBED_CHUNK):
                part = texts[offset : offset + EMBED_CHUNK]
                parts.append(await self._run(functools.partial(self.service.embed_anchors, part)))
                log.info(
                    "anchor preferences: embedded %d of %d texts of pool %s %s",
                    offset + len(part),
                    len(texts),
                    request.name,
                    request.version,
                )
            pool = np.concatenate(parts)
            self.preferences.keep(request.sha256, texts, pool)
        ranked = pool
        positions = await self._run(lambda: self.preferences.rank(ranked, request.count))
        self.gatekeeper.record(
            caller,
            "PreferAnchors",
            allowed=True,
            results=len(positions),
            anchor_set=request.name,
            version=request.version,
            count=request.count,
        )
        return positions

    async def search(self, caller: PeerIdentity, query: SiloQuery) -> list[Hit]:
        """The hits for ``query``; a forwarded one answers to its signer's rights, not ours."""
        caller = self._admit(caller, "search")  # an unauthorized caller learns nothing more
        translate = self.service.translates(query)
        if translate and caller.role != Role.COORDINATOR:
            # Adapter ids are the coordinator's to name: a direct caller naming one would make
            # this silo fetch whatever it likes from the coordinator.
            raise PermissionDenied(
                f"a query from space {query.source_space!r} needs the coordinator's adapter and is "
                "served only when forwarded by a coordinator; send it through the coordinator"
            )
        # The silo translates forwarded queries itself, with an adapter it verified.
        adapter = self.adapters.cached(query.adapter_id, query.source_space) if translate else None

        def admit() -> PeerIdentity:
            with TIMINGS.stage("silo: signature check and policy"):
                asker = self.service.admit_query(caller, query)
            # The signer of a forwarded query answers to the denylist too, and to its budget.
            with refused_on_behalf_of(asker, caller), TIMINGS.stage("silo: signer limits, nonce"):
                self.gatekeeper.admit(asker)
                self.gatekeeper.limit(asker)
                # Last: a query refused by a check above keeps its nonce for the genuine forward.
                self.service.remember_nonce(query, asker)
            return asker

        def answer(asker: PeerIdentity, translation: Translation | None) -> Answer:
            with TIMINGS.stage("silo: translate, search, disclose"):
                return self.service.answer(query, translation, asker.spiffe_id or "")

        if translate and adapter is None:
            # Verified before anything is fetched: an unverified request triggers no download.
            asker = await self._run(admit)
            fetched = await self.adapters.get(query.adapter_id, query.source_space)
            answered = await self._run(lambda: answer(asker, fetched))
        elif self.service.answers_at_once(query, adapter):
            # The usual case, on the event loop: verify, admit, translate, search are each well
            # under a millisecond, and a worker-thread hop cost more CPU than all of them (two
            # thread wake-ups and the GIL handed over: ~0.3-0.5 ms per query, measured).
            asker = admit()
            answered = answer(asker, adapter)
        else:
            # Re-ranking embeds the query text with the silo's model, or a hubness correction is
            # built first: milliseconds or more, off the loop.
            def admitted() -> tuple[PeerIdentity, Answer]:
                who = admit()
                return who, answer(who, adapter)

            asker, answered = await self._run(admitted)
        hits = answered.hits
        with TIMINGS.stage("silo: audit line"):
            self._record_search(caller, asker, query, answered)
        return hits

    async def search_many(
        self, caller: PeerIdentity, queries: Sequence[SiloQuery]
    ) -> list[list[Hit] | Exception]:
        """Independent queries in one call (a coordinator coalescing under load): each answered
        exactly as ``search`` answers it alone (its own admission, signature, nonce, rate and
        audit line), in order; a refusal or failure ends only its own query."""
        batch_queries.check_count(self.service, len(queries))
        # A caller that may not search at all is refused once for the call, not once per query;
        # the call costs its peer a token first, refused or not (as every call does).
        self._admit(caller, "search")
        outcomes: list[list[Hit] | Exception] = []
        for query in queries:
            try:
                outcomes.append(await self.search(caller, query))
            except Exception as error:  # reported per query, as its own Search would end
                outcomes.append(error)
        return outcomes

    async def search_batch(self, caller: PeerIdentity, batch: SiloBatch) -> list[list[Hit]]:
        """One hit list per query of a forwarded batch: the admission of ``search`` once for
        the batch (the rate limit charged per query), then every query in one worker hop."""
        caller = self._admit(caller, "search")
        first = batch_queries.query_of(batch, batch.vectors[0]) if batch.vectors else None
        translate = first is not None and self.service.translates(first)
        if translate and caller.role != Role.COORDINATOR:
            raise PermissionDenied(
                f"a query from space {batch.source_space!r} needs the coordinator's adapter and "
                "is served only when forwarded by a coordinator; send it through the coordinator"
            )
        adapter = self.adapters.cached(batch.adapter_id, batch.source_space) if translate else None

        def admit() -> PeerIdentity:
            asker = batch_queries.admit_batch(self.service, caller, batch)
            with refused_on_behalf_of(asker, caller):
                self.gatekeeper.admit(asker)
                self.gatekeeper.limit(asker, len(batch.vectors))  # one token per query
                batch_queries.remember_batch_nonce(self.service, batch, asker)
            return asker

        def answer(
            asker: PeerIdentity, translation: Translation | None
        ) -> tuple[list[list[Hit]], str]:
            return batch_queries.answer_batch(
                self.service, batch, translation, asker.spiffe_id or ""
            )

        if translate and adapter is None:
            asker = await self._run(admit)
            fetched = await self.adapters.get(batch.adapter_id, batch.source_space)
            results, receiving = await self._run(lambda: answer(asker, fetched))
        else:

            def admitted() -> tuple[PeerIdentity, tuple[list[list[Hit]], str]]:
                who = admit()
                return who, answer(who, adapter)

            asker, (results, receiving) = await self._run(admitted)
        self.gatekeeper.record(
            asker,
            "SearchBatch",
            allowed=True,
            results=sum(len(hits) for hits in results),
            batch=len(batch.vectors),
            via=caller.spiffe_id if caller != asker else None,
            signed=batch.signed is not None,
            source_space=batch.source_space or self.space.space_id,
            receiving=receiving or None,
        )
        return results

    def _record_search(
        self, caller: PeerIdentity, asker: PeerIdentity, query: SiloQuery, answered: Answer
    ) -> None:
        hits = answered.hits
        self.gatekeeper.record(
            asker,
            "Search",
            allowed=True,
            results=len(hits),
            via=caller.spiffe_id if caller != asker else None,
            signed=query.signed is not None,
            source_space=query.source_space or self.space.space_id,
            reranked=bool(query.rerank_text),
            receiving=answered.receiving or None,
        )


def _check_named_set(anchor_set: str, version: str, sha256: str) -> None:
    if not anchor_set or not version:
        raise InvalidArgument("name the anchor set and its version (e.g. public v1)")
    if not _SHA256.fullmatch(sha256):
        raise InvalidArgument(
            f"sha256 {sha256[:80]!r} of anchor set {anchor_set!r} is not 64 lower-case hex digits"
        )
