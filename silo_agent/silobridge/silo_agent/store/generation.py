"""One embedding space's vectors in the data directory: its docstore column, index and overlay.

A silo serves one generation, or two while it migrates to another model: the *source* slot
(the ``documents`` table's own vectors, ``index/``) and the *target* slot (the
``migration_vectors`` table, ``index-next/``). Each keeps its saved index (in the data
directory's ``IndexHome``: FAISS files, or a Milvus collection) and an exact ``Overlay`` of
what was written after that index, swapped as a pair so a concurrent search never mixes two
states.
"""

from __future__ import annotations

import dataclasses
import threading
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from silobridge.core.spaces import SpaceDescriptor
from silobridge.silo_agent.store.docstore import DocStore
from silobridge.silo_agent.store.index import IndexManifest, IndexSettings
from silobridge.silo_agent.store.index_home import IndexHome, IndexReplaced, ServedIndex
from silobridge.silo_agent.store.overlay import Overlay, search_with_overlay
from silobridge.silo_agent.store.rows import Changes

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]

# Rebuild the index once the changes served beside it pass this many rows or this share of it:
# exact search over the changes and hiding rewritten keys both grow with them.
COMPACT_MIN_ROWS = 2_000
COMPACT_SHARE = 0.05
# Beyond this many changes beside an index, live writes wait (ResourceExhausted) for the
# rebuild to fold them in: it bounds the overlay's memory and every search's exact part.
MAX_OVERLAY_ROWS = 50_000


@dataclass(frozen=True)
class Slot:
    """Where one generation lives: its docstore table, index directory and indexed-version key."""

    table: str
    index_dir: str
    # Docstore meta: the data version the saved index was built from. Compared with the current
    # version it survives a crash between a write and the rebuild.
    indexed_meta: str
    # Rebuild once the overlay passes this share of the index. The target's is larger: the
    # re-encode rewrites every row once, and each rebuild costs CPU the re-encode needs.
    compact_share: float = COMPACT_SHARE


SOURCE = Slot("documents", "index", "indexed_data_version")
TARGET = Slot("migration_vectors", "index-next", "migration_indexed_version", compact_share=0.25)


class Generation:
    """The vectors of one space: saved index plus overlay, refreshed from the docstore."""

    def __init__(
        self,
        home: IndexHome,
        slot: Slot,
        space: SpaceDescriptor,
        settings: IndexSettings,
        docstore: DocStore,
    ) -> None:
        self.home = home
        self.slot = slot
        self.space = space
        self.settings = settings
        self.docstore = docstore
        self.index: ServedIndex | None = None
        self.manifest: IndexManifest | None = None
        self.overlay = Overlay.empty(0, space.dimension)
        self._swap_lock = threading.Lock()
        self.write_lock = threading.RLock()
        self._reload_lock = threading.Lock()

    def state(self) -> tuple[ServedIndex | None, Overlay]:
        """The index and overlay to search, as one consistent pair."""
        with self._swap_lock:
            return self.index, self.overlay

    @property
    def indexed_version(self) -> str | None:
        return self.docstore.get_meta(self.slot.indexed_meta)

    def load_index_if_present(self) -> None:
        if self.home.read_manifest(self.slot.index_dir) is None:
            return
        # Read before the index: a rebuild saves its index before it records the version, so
        # a version read first is never newer than the index, and the overlay then serves a
        # superset of what the index lacks (never a gap).
        base_version = int(self.indexed_version or 0)
        index = self.home.load(
            self.slot.index_dir,
            expected_fingerprint=self.space.fingerprint,
            expected_model_id=self.space.model_id,
            settings=self.settings,
        )
        with self._swap_lock:
            self.index, self.manifest = index, index.manifest
            self.overlay = Overlay.empty(base_version, self.space.dimension)

    def refresh(self) -> bool:
        """Serve every change made after the index was built; True if there was a new one."""
        with self.write_lock:
            overlay = self.overlay
            if self.docstore.data_version() == overlay.version:
                return False
            # Only what came after the overlay's own version: one batch, not the whole overlay.
            changes = self._changes_since(overlay.version)
            max_key = self.index.max_key if self.index is not None else -1
            advanced = overlay.advanced(changes, max_key)
            with self._swap_lock:
                self.overlay = advanced
        return True

    def rebuild(self) -> IndexManifest:
        """Build the index from every vector of this slot, save it, and serve it."""
        # Read before the vectors: a write racing this rebuild leaves the index marked stale.
        version = self.docstore.data_version()
        keys, vectors = self.docstore.all_vectors(self.slot.table)
        if vectors.shape[0] == 0:
            vectors = np.zeros((0, self.space.dimension), dtype=np.float32)
        index = self.home.save(
            self.slot.index_dir,
            keys,
            vectors,
            self.settings,
            fingerprint=self.space.fingerprint,
            model_id=self.space.model_id,
        )
        manifest = index.manifest
        assert manifest is not None  # a saved index has one
        self.docstore.set_meta(self.slot.indexed_meta, str(version))
        with self.write_lock:
            # Rows written while this index was being built are still after ``version``.
            changes = self._changes_since(version)
            overlay = Overlay.of(version, changes, index.max_key)
            with self._swap_lock:
                self.index, self.manifest, self.overlay = index, manifest, overlay
        # After the swap: a search still holding the old index meets IndexReplaced and retries.
        self.home.discard_superseded(self.slot.index_dir)
        return manifest

    def compact(self) -> IndexManifest:
        """Fold the overlay into the index: in place where the backend can, else a rebuild."""
        index, overlay = self.state()
        if index is None or not self.home.folds_in_place:
            return self.rebuild()
        # The saved index holds everything up to the overlay's base; fold what came after.
        changes = self._changes_since(overlay.base_version)
        folded = self.home.fold(self.slot.index_dir, index, changes, self.settings)
        if folded is None or folded.manifest is None:
            return self.rebuild()
        # Meanwhile searches kept the old overlay, which hides every key it changed: a row
        # folded in early is never returned twice, a crash here leaves the old version.
        self.docstore.set_meta(self.slot.indexed_meta, str(changes.version))
        with self.write_lock:
            after = Overlay.of(changes.version, self._changes_since(changes.version), None)
            with self._swap_lock:
                self.index, self.manifest, self.overlay = folded, folded.manifest, after
        return folded.manifest

    def _changes_since(self, version: int) -> Changes:
        changes = self.docstore.changes_since(version, self.slot.table)
        if changes.vectors.shape[0] == 0:  # no rows: the docstore cannot know this slot's width
            empty = np.zeros((0, self.space.dimension), dtype=np.float32)
            changes = dataclasses.replace(changes, vectors=empty)
        return changes

    @property
    def needs_compaction(self) -> bool:
        """True once the overlay is large enough that a rebuild should fold it into the index."""
        indexed = self.index.count if self.index is not None else 0
        share = self.slot.compact_share
        # Never later than half the cap at which live writes wait for a rebuild.
        threshold = min(max(COMPACT_MIN_ROWS, share * indexed), MAX_OVERLAY_ROWS / 2)
        return self.overlay.size > threshold

    def search(self, query: FloatVector, k: int) -> list[tuple[int, float]]:
        """Top-``k`` (key, inner product) of this generation, best first."""
        index, overlay = self.state()
        try:
            return search_with_overlay(index, overlay, query, k)
        except IndexReplaced:
            # A rebuild dropped that index after swapping in its successor (or, with a Milvus
            # server, another process rebuilt the slot): search what is saved now.
            self._reload_replaced(index)
            index, overlay = self.state()
            return search_with_overlay(index, overlay, query, k)

    def _reload_replaced(self, gone: ServedIndex | None) -> None:
        with self._reload_lock:
            if self.state()[0] is gone:  # not swapped here: another process saved a new one
                with self.write_lock:
                    self.load_index_if_present()
                    self.refresh()

    def vectors_of(self, keys: list[int]) -> FloatMatrix | None:
        """Stored vectors of ``keys``, from the overlay where it holds them, else the index."""
        index, overlay = self.state()
        if not keys:
            return np.zeros((0, self.space.dimension), dtype=np.float32)
        if not overlay.holds_vectors and index is not None:  # the usual case: all in the index
            return index.reconstruct(np.asarray(keys, dtype=np.int64))
        found = [overlay.vector(key) for key in keys]
        missing = [key for key, row in zip(keys, found, strict=True) if row is None]
        from_index: list[FloatVector] = []
        if missing:
            if index is None:
                return None
            rebuilt = index.reconstruct(np.asarray(missing, dtype=np.int64))
            if rebuilt is None:
                return None
            from_index = list(rebuilt)
        rest = iter(from_index)
        rows = [row if row is not None else next(rest) for row in found]
        return np.stack(rows).astype(np.float32)
