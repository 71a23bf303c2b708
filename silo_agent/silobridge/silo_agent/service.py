"""The silo's domain operations — describe, embed, embed anchors, search — with access and limits.

No gRPC here: the servicer unpacks messages, calls these, and packs replies. Every input from a
peer is validated before any work, and every refusal is a domain error with an actionable message.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from silobridge.shared.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from silobridge.shared.identity import PeerIdentity
from silobridge.shared.spaces import FloatMatrix, SpaceDescriptor
from silobridge.shared.vectors import FloatVector, validate_k, validate_query_vector
from silobridge.silo_agent.config import SiloConfig
from silobridge.silo_agent.embedders import Embedder
from silobridge.silo_agent.store import SiloData

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SiloDescription:
    name: str
    space: SpaceDescriptor
    document_count: int
    max_k: int


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

    def search(self, caller: PeerIdentity, vector: FloatVector, k: int) -> list[SearchHit]:
        """Nearest documents to a vector in this silo's space; only disclosed fields leave."""
        self.authorize("search", caller)
        validate_k(k, self.config.limits.max_k)
        query = validate_query_vector(vector, self.embedder.dimension)
        disclosed = self.config.access.disclose_fields
        hits = self.data.search(query, k)
        return [
            SearchHit(
                doc_id=hit.doc_id,
                score=float(hit.score),
                fields={name: hit.metadata[name] for name in disclosed if name in hit.metadata},
            )
            for hit in hits
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
