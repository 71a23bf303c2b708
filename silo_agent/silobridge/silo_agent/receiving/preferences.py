"""PreferAnchors at the silo: which texts of a public pool its own documents lie near.

The pool is fetched and checked like an anchor set (``fetch_checked_anchor_set``), embedded with
the silo's model in bounded chunks on the worker pool, and scored against up to
``MAX_DOCUMENTS`` of its primary generation's stored vectors, spread over its keys. Only pool
positions leave the silo. The last pool's vectors stay in memory (keyed by its sha256 and the
space they are in), so the EmbedAnchors of the set the coordinator derives from the silo's
answer (a subset of the pool's texts) is served without embedding anything again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from silobridge.adapters.anchor_preference import MAX_DOCUMENTS, preference_scores, preferred
from silobridge.core.errors import FailedPrecondition, InvalidArgument
from silobridge.core.spaces import FloatMatrix
from silobridge.silo_agent.receiving.hubness_routes import sample_vectors
from silobridge.silo_agent.service import SiloService
from silobridge.silo_agent.store.data import SiloData
from silobridge.silo_agent.store.generation import Generation

log = logging.getLogger(__name__)
# Texts embedded per worker-pool hop: other calls get the pool between chunks, and the log
# shows progress on a large pool.
EMBED_CHUNK = 4_096


@dataclass(frozen=True)
class EmbeddedPool:
    """A pool's texts and their vectors in one space."""

    sha256: str
    space_id: str
    rows: dict[str, int]
    vectors: FloatMatrix


class AnchorPreferences:
    """Ranks public pools against this silo's corpus; keeps the last pool's vectors."""

    def __init__(self, service: SiloService) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._last: EmbeddedPool | None = None
        # Rows of EmbedAnchors served from the kept pool instead of the model: the saving.
        self.rows_reused = 0

    def check_enabled(self) -> None:
        """Refuse (FailedPrecondition) unless the silo's policy answers anchor preferences."""
        if not self.service.config.receiving.anchor_preferences:
            raise FailedPrecondition(
                f"silo {self.service.config.name!r} does not answer anchor preferences "
                "([receiving] anchor_preferences = false in its silo.toml): they reveal which "
                "public texts lie near its documents"
            )

    def embedded(self, sha256: str) -> FloatMatrix | None:
        """The kept vectors of pool ``sha256``, if it is the last pool and still in our space."""
        last = self._last
        if last is None or last.sha256 != sha256 or last.space_id != self.service.space.space_id:
            return None
        return last.vectors

    def keep(self, sha256: str, texts: Sequence[str], vectors: FloatMatrix) -> None:
        rows: dict[str, int] = {}
        for row, text in enumerate(texts):
            rows.setdefault(text, row)
        pool = EmbeddedPool(sha256, self.service.space.space_id, rows, vectors)
        with self._lock:
            self._last = pool

    def cached_rows(self, texts: Sequence[str]) -> FloatMatrix | None:
        """The kept vectors of ``texts`` when every one is in the last pool (same space)."""
        last = self._last
        if last is None or last.space_id != self.service.space.space_id or not texts:
            return None
        try:
            picks = [last.rows[text] for text in texts]
        except KeyError:
            return None
        with self._lock:
            self.rows_reused += len(picks)
        rows: FloatMatrix = last.vectors[np.asarray(picks, dtype=np.int64)]
        return rows

    def rank(self, pool: FloatMatrix, count: int) -> list[int]:
        """The positions of the ``count`` pool texts nearest this silo's documents, best first."""
        service = self.service
        generation = service.route(service.space.space_id).generation
        return rank_pool(service.data, generation, pool, count, silo=service.config.name)


def rank_pool(
    data: SiloData, generation: Generation, pool: FloatMatrix, count: int, *, silo: str
) -> list[int]:
    """The positions of the ``count`` rows of ``pool`` nearest ``generation``'s documents (up
    to ``MAX_DOCUMENTS`` of its stored vectors, spread over its keys), best first."""
    check_count(count, pool.shape[0], "")
    documents = sample_vectors(data, generation, MAX_DOCUMENTS)
    if documents.shape[0] == 0:
        raise FailedPrecondition(f"silo {silo!r} holds no documents to rank anchors against")
    return preferred(preference_scores(pool, documents), count)


def check_count(count: int, pool_size: int, name: str) -> None:
    """``count`` must name 1 to ``pool_size`` positions of the pool (``name``: for the message)."""
    if not 1 <= count <= pool_size:
        pool = f"pool {name!r}" if name else "the pool"
        raise InvalidArgument(
            f"count must be between 1 and the {pool_size} texts of {pool}, got {count}"
        )
