"""The silo's domain operations — describe, embed, embed anchors, search — with access and limits.

No gRPC here: the servicer unpacks messages, calls these, and packs replies. Every input from a
peer is validated before any work, and every refusal is a domain error with an actionable message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from silobridge.core.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor
from silobridge.core.vectors import FloatVector, validate_k, validate_query_vector
from silobridge.embedding.embedders import Embedder
from silobridge.security.identity import PeerIdentity, Role
from silobridge.security.signed_query import ReplayCache, verify_signed_query
from silobridge.silo_agent.config import SiloConfig
from silobridge.silo_agent.store.data import ScoredDocument, SiloData
from silobridge.v1 import common_pb2

log = logging.getLogger(__name__)
# First-stage candidates re-scored when the caller names no rerank_depth (at least k).
DEFAULT_RERANK_DEPTH = 100


@dataclass(frozen=True)
class Disclosure:
    """The parts of this silo's policy a caller may know (the data-boundary report shows them)."""

    disclose_fields: tuple[str, ...]
    accept_query_text: bool
    accept_spaces: tuple[str, ...]
    max_k: int


@dataclass(frozen=True)
class SiloDescription:
    name: str
    space: SpaceDescriptor
    document_count: int
    max_k: int
    disclosure: Disclosure


@dataclass(frozen=True)
class SearchHit:
    doc_id: str
    score: float
    fields: dict[str, str]


class SiloService:
    """One silo: its config (policy and limits), its embedder and its data."""

    def __init__(self, config: SiloConfig, embedder: Embedder, data: SiloData) -> None:
        self.config = config
        self.embedder = embedder
        self.data = data
        # Nonces of signed queries seen within their validity window: a replay is refused.
        self.replay = ReplayCache()
        self._ca_pem: bytes | None = None

    def _ca_certificate(self) -> bytes:
        if self._ca_pem is None:
            if self.config.tls is None:
                raise PermissionDenied(
                    f"silo {self.config.name!r} runs without TLS and cannot verify signed queries"
                )
            self._ca_pem = self.config.tls.read()[2]
        return self._ca_pem

    def admit_query(
        self,
        caller: PeerIdentity,
        *,
        signed: common_pb2.SignedQuery | None,
        wire_vector: common_pb2.Vector,
        source_space: str,
        k: int,
        rerank_text: str = "",
    ) -> PeerIdentity:
        """Who is asking, checked against this silo's own policy (which has the last word).

        A query forwarded by a coordinator must carry the client's signature: verified against
        the consortium CA, within its time window, never replayed, over this very vector and
        source space, addressed to this silo. The asker is then the signer, not the forwarder.
        """
        access = self.config.access
        name = self.config.name
        if signed is None:
            if caller.role == Role.COORDINATOR and access.require_signed:
                raise PermissionDenied(
                    f"silo {name!r} serves queries forwarded by a coordinator only when the "
                    "client signed them"
                )
            asker = caller
        else:
            if not source_space:
                raise InvalidArgument("a signed query must name its source space")
            verified = verify_signed_query(
                signed,
                ca_certificate_pem=self._ca_certificate(),
                vector=wire_vector,
                source_space=source_space,
                silo=name,
                replay=self.replay,
                rerank_text=rerank_text,
            )
            asker = verified.signer
            if k > verified.claims.k:
                raise PermissionDenied(
                    f"k={k} exceeds the k={verified.claims.k} the client signed for"
                )
        if not access.may_ask(asker):
            raise PermissionDenied(
                f"silo {name!r} does not serve queries from {asker.spiffe_id or 'this caller'} "
                f"(organization {asker.org or 'none'})"
            )
        own = self.embedder.space.space_id
        if source_space and source_space != own and not access.accepts_space(source_space):
            raise PermissionDenied(
                f"silo {name!r} does not accept queries translated from space {source_space!r}"
            )
        return asker

    def authorize(self, rpc: str, caller: PeerIdentity) -> None:
        """Refuse (PermissionDenied) unless the silo's access rules allow ``caller`` this RPC."""
        if not self.config.access.allows(rpc, caller):
            who = caller.spiffe_id or "an unauthenticated caller"
            raise PermissionDenied(f"silo {self.config.name!r} does not allow {who} to call {rpc}")

    def _check_texts(self, texts: Sequence[str], max_count: int) -> None:
        limits = self.config.limits
        if not texts:
            raise InvalidArgument("no texts given; send at least one")
        if len(texts) > max_count:
            raise ResourceExhausted(
                f"{len(texts)} texts in one request; this silo accepts at most {max_count}: "
                "split the request"
            )
        for position, text in enumerate(texts):
            if len(text) > limits.max_text_chars:
                raise ResourceExhausted(
                    f"text #{position} has {len(text)} characters; the limit is "
                    f"{limits.max_text_chars}"
                )
            if not text.strip():
                raise InvalidArgument(f"text #{position} is empty")

    def describe(self, caller: PeerIdentity) -> SiloDescription:
        self.authorize("describe", caller)
        return SiloDescription(
            name=self.config.name,
            space=self.embedder.space,
            document_count=self.data.count(),
            max_k=self.config.limits.max_k,
            disclosure=Disclosure(
                disclose_fields=self.config.access.disclose_fields,
                accept_query_text=self.config.access.accept_query_text,
                accept_spaces=self.config.access.accept_spaces,
                max_k=self.config.limits.max_k,
            ),
        )

    def embed(self, caller: PeerIdentity, texts: Sequence[str]) -> FloatMatrix:
        """Embed a client's own texts (its organization's queries)."""
        self.authorize("embed", caller)
        self._check_texts(texts, self.config.limits.max_embed_texts)
        return self.embedder.embed(texts, batch_size=self.config.limits.batch_size)

    def embed_anchors(self, caller: PeerIdentity, texts: Sequence[str]) -> FloatMatrix:
        """Embed public anchor texts for adapter training."""
        self.authorize("embed_anchors", caller)
        self._check_texts(texts, self.config.limits.max_anchor_texts)
        return self.embedder.embed(texts, batch_size=self.config.limits.batch_size)

    def search(
        self,
        caller: PeerIdentity,
        vector: FloatVector,
        k: int,
        rerank_text: str = "",
        rerank_depth: int = 0,
    ) -> list[SearchHit]:
        """Nearest documents to a vector in this silo's space; only disclosed fields leave.

        With ``rerank_text`` (two-stage re-ranking, only if the silo accepts query text) the top
        ``rerank_depth`` hits for ``vector`` are re-ordered by their cosine with the text embedded
        by this silo's own model, and that native score is what is returned.
        """
        self.authorize("search", caller)
        if rerank_text and not self.config.access.accept_query_text:
            raise PermissionDenied(
                f"silo {self.config.name!r} does not accept query text (two-stage re-ranking); "
                "resend without it"
            )
        validate_k(k, self.config.limits.max_k)
        query = validate_query_vector(vector, self.embedder.dimension)
        if rerank_text:
            hits = self._rerank(query, k, rerank_text, rerank_depth)
        else:
            hits = self.data.search(query, k)
        disclosed = self.config.access.disclose_fields
        return [
            SearchHit(
                doc_id=hit.doc_id,
                score=float(hit.score),
                fields={name: hit.metadata[name] for name in disclosed if name in hit.metadata},
            )
            for hit in hits
        ]

    def rerank_depth(self, k: int, requested: int) -> int:
        """How many first-stage candidates to re-score: ``requested`` or max(k, 100), clamped."""
        limit = self.config.limits.max_rerank_depth
        if requested > limit:
            raise InvalidArgument(
                f"rerank_depth={requested} exceeds this silo's max_rerank_depth of {limit}; "
                f"ask for at most {limit} (0 picks a default)"
            )
        depth = requested or max(k, DEFAULT_RERANK_DEPTH)
        # Never fewer candidates than hits asked for, even where max_rerank_depth < max_k.
        return max(k, min(depth, limit))

    def _rerank(
        self, query: FloatVector, k: int, text: str, requested_depth: int
    ) -> list[ScoredDocument]:
        # The text is the caller's query: validated, embedded, never logged.
        max_chars = self.config.limits.max_text_chars
        if len(text) > max_chars:
            raise ResourceExhausted(
                f"rerank_text has {len(text)} characters; the limit is {max_chars}"
            )
        if not text.strip():
            raise InvalidArgument("rerank_text is blank; send the query text or leave it empty")
        depth = self.rerank_depth(k, requested_depth)
        native = self.embedder.embed([text])[0]
        candidates = self.data.search_candidates(query, depth)
        if not candidates.hits:
            return []
        vectors = candidates.vectors
        if vectors is None:
            # An index type that cannot give vectors back: re-embed the candidates' own texts.
            texts = self.data.texts(hit.doc_id for hit in candidates.hits)
            vectors = self.embedder.embed(
                [texts.get(hit.doc_id, "") or " " for hit in candidates.hits],
                batch_size=self.config.limits.batch_size,
            )
        scores = np.asarray(vectors, dtype=np.float32) @ np.asarray(native, dtype=np.float32)
        order = np.argsort(-scores, kind="stable")[:k]
        log.debug("re-ranked %d candidates into %d hits", len(candidates.hits), len(order))
        return [
            ScoredDocument(
                doc_id=candidates.hits[i].doc_id,
                score=float(scores[i]),
                metadata=candidates.hits[i].metadata,
            )
            for i in order
        ]

    def search_text(self, text: str, k: int) -> list[SearchHit]:
        """Local debugging: embed and search with the silo's own model (no access check: local)."""
        self._check_texts([text], 1)
        vector = self.embedder.embed([text])[0]
        validate_k(k, self.config.limits.max_k)
        hits = self.data.search(np.asarray(vector, dtype=np.float32), k)
        return [
            SearchHit(doc_id=h.doc_id, score=float(h.score), fields=dict(h.metadata)) for h in hits
        ]
