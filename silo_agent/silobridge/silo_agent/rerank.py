"""Two-stage re-ranking at a silo that accepts query text: its own model re-scores the first
stage's candidates (``[access] accept_query_text``)."""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

import numpy as np

from silobridge.core.documents import has_visible_text
from silobridge.core.errors import InvalidArgument, ResourceExhausted
from silobridge.core.hits import Hit
from silobridge.core.vectors import FloatVector
from silobridge.silo_agent.config import Limits
from silobridge.silo_agent.store.generation import Generation

if TYPE_CHECKING:
    from silobridge.silo_agent.service import SiloService

log = logging.getLogger(__name__)
# First-stage candidates re-scored when the caller names no rerank_depth (at least k).
DEFAULT_RERANK_DEPTH = 100


def rerank_depth(limits: Limits, k: int, requested: int) -> int:
    """How many first-stage candidates to re-score: ``requested`` or max(k, 100), clamped."""
    limit = limits.max_rerank_depth
    if requested > limit:
        raise InvalidArgument(
            f"rerank_depth={requested} exceeds this silo's max_rerank_depth of {limit}; "
            f"ask for at most {limit} (0 picks a default)"
        )
    depth = requested or max(k, DEFAULT_RERANK_DEPTH)
    # Never fewer candidates than hits asked for, even where max_rerank_depth < max_k.
    return max(k, min(depth, limit))


def rerank(
    service: SiloService,
    generation: Generation,
    query: FloatVector,
    k: int,
    text: str,
    requested_depth: int,
) -> list[Hit]:
    """The top ``k`` of ``query``'s candidates in ``generation`` by their cosine with ``text``
    embedded by the silo's own model; that native score is what is returned."""
    # The text is the caller's query: validated, embedded, never logged.
    limits = service.config.limits
    if len(text) > limits.max_text_chars:
        raise ResourceExhausted(
            f"rerank_text has {len(text)} characters; the limit is {limits.max_text_chars}"
        )
    if not has_visible_text(text):
        raise InvalidArgument("rerank_text is blank; send the query text or leave it empty")
    depth = rerank_depth(limits, k, requested_depth)
    native = service.embedder.embed([text])[0]
    candidates = service.data.candidates_in(generation, query, depth)
    if not candidates.hits:
        return []
    vectors = candidates.vectors
    if vectors is None:
        # An index type that cannot give vectors back: re-embed the candidates' own texts.
        texts = service.data.texts(hit.doc_id for hit in candidates.hits)
        vectors = service.embedder.embed(
            [texts.get(hit.doc_id, "") or " " for hit in candidates.hits],
            batch_size=limits.batch_size,
        )
    scores = np.asarray(vectors, dtype=np.float32) @ np.asarray(native, dtype=np.float32)
    order = np.argsort(-scores, kind="stable")[:k]
    log.debug("re-ranked %d candidates into %d hits", len(candidates.hits), len(order))
    return [dataclasses.replace(candidates.hits[i], score=float(scores[i])) for i in order]
