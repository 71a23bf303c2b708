"""Changes since the saved index was built, served beside it until the next rebuild folds them in.

FAISS's HNSW cannot delete or replace a vector, so a serving silo never edits the saved index:
rows written since it was built are searched exactly here, and the index's own entries for
changed or deleted keys are hidden (every changed key for a Milvus collection, which compaction
edits in place: its ``max_key`` is unknown). An ``Overlay`` is immutable; a write swaps in a new
one, so a search running meanwhile sees one consistent state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from silobridge.silo_agent.store.index_home import ServedIndex
from silobridge.silo_agent.store.rows import Changes, KeyArray

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]
# The least a search over-fetches beside k when the overlay hides index keys.
MIN_EXTRA = 32


@dataclass(frozen=True)
class Overlay:
    """Rows written after ``base_version`` and the index keys they hide, as of ``version``."""

    base_version: int
    version: int
    keys: KeyArray
    vectors: FloatMatrix
    # Index keys not to return: rewritten since (their new vector is here) or deleted.
    hidden: frozenset[int] = field(default_factory=frozenset)
    _row_of: dict[int, int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def empty(cls, base_version: int, dimension: int) -> Overlay:
        return cls(
            base_version,
            base_version,
            np.zeros(0, dtype=np.int64),
            np.zeros((0, dimension), dtype=np.float32),
        )

    @classmethod
    def of(cls, base_version: int, changes: Changes, index_max_key: int | None = None) -> Overlay:
        """The overlay of ``changes``; keys above ``index_max_key`` are new, so nothing to hide.

        Hiding only keys the index may hold keeps a search's over-fetch to the rewritten and
        deleted documents, not every new one (``None``: unknown, hide every changed key).
        """
        keys = np.ascontiguousarray(changes.keys, dtype=np.int64)
        limit = np.iinfo(np.int64).max if index_max_key is None else index_max_key
        changed = (int(key) for key in (*keys.tolist(), *changes.deleted.tolist()))
        hidden = frozenset(key for key in changed if key <= limit)
        rows = {int(key): row for row, key in enumerate(keys)}
        vectors = np.ascontiguousarray(changes.vectors, dtype=np.float32)
        return cls(base_version, changes.version, keys, vectors, hidden, rows)

    def advanced(self, changes: Changes, index_max_key: int | None = None) -> Overlay:
        """This overlay with ``changes`` (everything written after ``self.version``) applied.

        The cost is one pass over this overlay's rows in numpy, not a re-read of all of them
        from the docstore: a migration's re-encode refreshes after every batch while the
        overlay grows to thousands of rows.
        """
        new_keys = np.ascontiguousarray(changes.keys, dtype=np.int64)
        gone = np.concatenate([new_keys, changes.deleted.astype(np.int64)])
        keep = ~np.isin(self.keys, gone)
        keys = np.concatenate([self.keys[keep], new_keys])
        vectors = np.concatenate(
            [
                self.vectors[keep],
                np.asarray(changes.vectors, dtype=np.float32).reshape(-1, self.vectors.shape[1]),
            ]
        )
        limit = np.iinfo(np.int64).max if index_max_key is None else index_max_key
        hidden = self.hidden | frozenset(int(key) for key in gone.tolist() if key <= limit)
        rows = {int(key): row for row, key in enumerate(keys.tolist())}
        return Overlay(self.base_version, changes.version, keys, vectors, hidden, rows)

    @property
    def size(self) -> int:
        """How much the next rebuild would fold in: rows written plus index keys hidden."""
        return len(self._row_of) + len(self.hidden - self._row_of.keys())

    @property
    def holds_vectors(self) -> bool:
        """Whether any row was written since the index was built."""
        return bool(self._row_of)

    def vector(self, key: int) -> FloatVector | None:
        row = self._row_of.get(key)
        return None if row is None else self.vectors[row]


def search_with_overlay(
    index: ServedIndex | None, overlay: Overlay, query: FloatVector, k: int
) -> list[tuple[int, float]]:
    """Top-``k`` (key, inner product) over the index minus hidden keys, plus the overlay rows."""
    found: list[tuple[int, float]] = []
    if index is not None and index.count:
        # Deepen until k survive the hidden ones. Asking for k + every hidden key at once would
        # make each search of a migrating silo (thousands hidden) an HNSW walk of that depth.
        hidden = overlay.hidden
        enough = min(index.count, k + len(hidden))
        depth = min(enough, k + min(len(hidden), max(k, MIN_EXTRA)))
        while True:
            found = [
                (key, score)
                for key, score in index.search(query.reshape(1, -1), depth)[0]
                if key not in hidden
            ]
            if len(found) >= k or depth >= enough:
                break
            depth = min(enough, depth * 4)
    if not overlay.keys.shape[0]:
        return found[:k]  # the index's own order, ties included
    scores = overlay.vectors @ query
    take = min(k, scores.shape[0])
    best = np.argpartition(-scores, take - 1)[:take]
    found.extend((int(overlay.keys[i]), float(scores[i])) for i in best)
    # Stable: equal scores keep the index's order, then the overlay's.
    found.sort(key=lambda pair: -pair[1])
    return found[:k]
