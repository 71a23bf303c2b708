"""The silo's data directory as one object: docstore plus index, checked against the embedder."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from silobridge.core.documents import Document
from silobridge.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from silobridge.core.hits import Hit
from silobridge.core.spaces import SpaceDescriptor
from silobridge.embedding.embedders import Embedder
from silobridge.silo_agent.store.docstore import DeleteCounts, DocStore, UpsertCounts
from silobridge.silo_agent.store.index import (
    IndexManifest,
    IndexSettings,
    VectorIndex,
    read_manifest,
    space_mismatch_message,
)
from silobridge.silo_agent.store.overlay import Overlay, search_with_overlay

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]

DOCSTORE_NAME = "docstore.sqlite"
REBUILD_LOCK_NAME = "index.lock"
INDEX_DIR_NAME = "index"
# Docstore meta: the docstore data version the saved index was built from. Compared with the
# current version it survives a crash between an upsert and the rebuild, so the next ingest
# rebuilds even if nothing else changed, and a serving silo searches what came after it exactly.
_INDEXED_VERSION = "indexed_data_version"
# Rebuild the index once the changes served beside it pass this many rows or this share of it:
# exact search over the changes and hiding rewritten keys both grow with them.
COMPACT_MIN_ROWS = 2_000
COMPACT_SHARE = 0.05
# Beyond this many changes beside the index, live writes wait (ResourceExhausted) for the
# rebuild to fold them in: it bounds the overlay's memory and every search's exact part.
MAX_PENDING_ROWS = 50_000


# What the storage layer needs from an embedder: the embedders' own structural protocol, so a
# small deterministic embedder in a unit test satisfies it too.
EmbedderLike = Embedder


@dataclass(frozen=True)
class Candidates:
    """A first-stage result to re-rank: hits, best first, and each hit's stored vector."""

    hits: list[Hit]
    # Row i is hits[i]'s vector as the index stores it; None if the index cannot give it back.
    vectors: FloatMatrix | None


class SiloData:
    """Docstore + index of one data directory, bound to one embedding space.

    The docstore is the source of truth. The saved index covers it up to the version it was
    built from; whatever was written after (live writes, deletes, another process's ingest) is
    served exactly from an ``Overlay`` until the next rebuild. Searches may run concurrently
    from many threads: the index and the overlay are swapped as a pair, in one assignment.
    """

    def __init__(
        self, data_dir: Path, space: SpaceDescriptor, settings: IndexSettings, docstore: DocStore
    ) -> None:
        self.data_dir = data_dir
        self._space = space
        self.settings = settings
        self.docstore = docstore
        self._index: VectorIndex | None = None
        self._manifest: IndexManifest | None = None
        self._overlay = Overlay.empty(0, space.dimension)
        self._swap_lock = threading.Lock()
        # One writer of the overlay at a time (writes, deletes, refreshes, rebuilds).
        self._write_lock = threading.RLock()
        self._rebuild_lock = threading.Lock()

    @classmethod
    def open(
        cls, data_dir: Path | str, space: SpaceDescriptor, settings: IndexSettings | None = None
    ) -> SiloData:
        """Open (creating if new) a data directory for ``space``; refuse another model's data."""
        root = Path(data_dir)
        root.mkdir(parents=True, exist_ok=True)
        docstore = DocStore(root / DOCSTORE_NAME)
        try:
            _claim_or_check_space(docstore, space)
            data = cls(root, space, settings or IndexSettings(), docstore)
            data._load_index_if_present()
            data.refresh()
        except BaseException:
            docstore.close()
            raise
        return data

    @property
    def index_dir(self) -> Path:
        return self.data_dir / INDEX_DIR_NAME

    @property
    def space(self) -> SpaceDescriptor:
        return self._space

    @property
    def has_index(self) -> bool:
        return self._index is not None

    @property
    def needs_rebuild(self) -> bool:
        """True if there is no index or documents changed since the saved one was built."""
        indexed = self.docstore.get_meta(_INDEXED_VERSION)
        return self._index is None or indexed != str(self.docstore.data_version())

    @property
    def manifest(self) -> IndexManifest | None:
        """The manifest of the index being served, or None before one is built."""
        return self._manifest

    def count(self) -> int:
        """Documents in the docstore (the index may lag until ``rebuild_index``)."""
        return self.docstore.count()

    def stored_hashes(self, doc_ids: Iterable[str]) -> dict[str, str]:
        return self.docstore.stored_hashes(doc_ids)

    def texts(self, doc_ids: Iterable[str]) -> dict[str, str]:
        """Stored text by doc id, for local display (never sent to a peer by this layer)."""
        return self.docstore.texts(doc_ids)

    def upsert(self, docs: Sequence[Document], vectors: FloatMatrix) -> UpsertCounts:
        """Store documents with vectors in this space (durable on return)."""
        matrix = np.asarray(vectors)
        if matrix.ndim != 2 or matrix.shape[1] != self._space.dimension:
            raise InvalidArgument(
                f"vectors have shape {matrix.shape}; space {self._space.space_id} expects "
                f"(n, {self._space.dimension})"
            )
        return self.docstore.upsert(docs, matrix)

    def write(self, docs: Sequence[Document], vectors: FloatMatrix) -> UpsertCounts:
        """Store documents now, in a serving silo: durable on return, seen by the next search."""
        with self._write_lock:
            if self._overlay.size >= MAX_PENDING_ROWS:
                raise ResourceExhausted(
                    f"{self._overlay.size} changes are waiting to be folded into the index; "
                    "retry once the silo's background rebuild is done"
                )
            counts = self.upsert(docs, vectors)
            self.refresh()
        return counts

    def delete(self, doc_ids: Sequence[str]) -> DeleteCounts:
        """Remove documents: durable on return, gone from the next search."""
        with self._write_lock:
            counts = self.docstore.delete(doc_ids)
            self.refresh()
        return counts

    def refresh(self) -> bool:
        """Serve every change made after the index was built; True if there was a new one.

        Cheap when nothing changed (one meta read), so a server may call it periodically to
        pick up another process's ingest.
        """
        with self._write_lock:
            overlay = self._overlay
            if self.docstore.data_version() == overlay.version:
                return False
            changes = self.docstore.changes_since(overlay.base_version)
            with self._swap_lock:
                self._overlay = Overlay.of(overlay.base_version, changes, self._index_max_key())
        return True

    def _index_max_key(self) -> int | None:
        return self._index.max_key if self._index is not None else -1

    @property
    def pending_changes(self) -> int:
        """Rows written or deleted since the index was built (served from the overlay)."""
        return self._overlay.size

    @property
    def needs_compaction(self) -> bool:
        """True once the overlay is large enough that a rebuild should fold it into the index."""
        indexed = self._index.count if self._index is not None else 0
        return self._overlay.size > max(COMPACT_MIN_ROWS, COMPACT_SHARE * indexed)

    def search(self, vector: FloatVector, k: int) -> list[Hit]:
        """Top-``k`` documents for an L2-normalised query vector in this space, best first.

        Each hit's ``fields`` are all of the document's metadata: what leaves the silo is the
        service's decision, not the store's.
        """
        return self._search(vector, k, with_vectors=False).hits

    def search_candidates(self, vector: FloatVector, depth: int) -> Candidates:
        """Top-``depth`` documents with their stored vectors, for a second-stage re-rank."""
        return self._search(vector, depth, with_vectors=True)

    def _search(self, vector: FloatVector, k: int, *, with_vectors: bool) -> Candidates:
        # One reference each for the search and the reconstruction: a concurrent rebuild or
        # write swaps them as a pair but cannot mix two states into one answer.
        with self._swap_lock:
            index, overlay = self._index, self._overlay
        if index is None and overlay.version == 0:
            raise FailedPrecondition("index not built yet: run `silobridge silo ingest` first")
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (self._space.dimension,):
            raise InvalidArgument(
                f"query vector has shape {query.shape}; this silo expects "
                f"({self._space.dimension},)"
            )
        found = search_with_overlay(index, overlay, query, k)
        docs = self.docstore.fetch(key for key, _ in found)
        hits = [(key, score) for key, score in found if key in docs]
        scored = [
            Hit(doc_id=docs[key].doc_id, score=score, fields=docs[key].metadata)
            for key, score in hits
        ]
        if not with_vectors:
            return Candidates(scored, None)
        return Candidates(scored, _vectors_of([key for key, _ in hits], index, overlay))

    def rebuild_index(self) -> IndexManifest:
        """Rebuild the index from every vector in the docstore, save it, and serve it.

        One rebuild at a time in this process; a write during the rebuild is kept in the
        docstore and served beside the new index (it is after the version read first).
        """
        # The file lock: `silo ingest` in another process may rebuild the same directory; two
        # interleaved saves could leave a manifest naming a file the other one cleaned up.
        with self._rebuild_lock, _directory_lock(self.data_dir / REBUILD_LOCK_NAME):
            return self._rebuild_index()

    def _rebuild_index(self) -> IndexManifest:
        # Read before the vectors: an upsert racing this rebuild leaves the index marked stale.
        version = self.docstore.data_version()
        keys, vectors = self.docstore.all_vectors()
        if vectors.shape[0] == 0:
            vectors = np.zeros((0, self._space.dimension), dtype=np.float32)
        index = VectorIndex.build(keys, vectors, self.settings)
        manifest = index.save(
            self.index_dir, fingerprint=self._space.fingerprint, model_id=self._space.model_id
        )
        self.docstore.set_meta(_INDEXED_VERSION, str(version))
        with self._write_lock:
            # Rows written while this index was being built are still after ``version``.
            overlay = Overlay.of(version, self.docstore.changes_since(version), index.max_key)
            with self._swap_lock:
                self._index, self._manifest, self._overlay = index, manifest, overlay
        return manifest

    def reload_index(self) -> bool:
        """Pick up an index another process (``silo ingest``) saved; True if it changed."""
        current = read_manifest(self.index_dir)
        if current is None or current == self._manifest:
            return False
        self._load_index_if_present()
        self.refresh()
        return True

    def close(self) -> None:
        self.docstore.close()

    def _load_index_if_present(self) -> None:
        if read_manifest(self.index_dir) is None:
            return
        # Read before the index: a rebuild saves its index before it records the version, so
        # a version read first is never newer than the index, and the overlay then serves a
        # superset of what the index lacks (never a gap).
        base_version = int(self.docstore.get_meta(_INDEXED_VERSION) or 0)
        index = VectorIndex.load(
            self.index_dir,
            expected_fingerprint=self._space.fingerprint,
            expected_model_id=self._space.model_id,
            settings=self.settings,
        )
        with self._swap_lock:
            self._index, self._manifest = index, index.manifest
            # Everything after the index's version is served beside it (``refresh`` fills it).
            self._overlay = Overlay.empty(base_version, self._space.dimension)


@contextlib.contextmanager
def _directory_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed), held across processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _vectors_of(
    keys: Sequence[int], index: VectorIndex | None, overlay: Overlay
) -> FloatMatrix | None:
    """Stored vectors of the hits, from the overlay where it holds them, else the index."""
    if not keys:
        return np.zeros((0, overlay.vectors.shape[1]), dtype=np.float32)
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


def _claim_or_check_space(docstore: DocStore, space: SpaceDescriptor) -> None:
    """Record the space in a new docstore; refuse an existing one built in another space."""
    stored = docstore.get_meta("fingerprint")
    if stored is None:
        docstore.set_meta("model_id", space.model_id)
        docstore.set_meta("dimension", str(space.dimension))
        # Written last: its presence marks the store as claimed.
        docstore.set_meta("fingerprint", space.fingerprint)
        return
    if stored != space.fingerprint:
        raise FailedPrecondition(
            space_mismatch_message(
                f"the docstore {docstore.path}",
                stored_fingerprint=stored,
                stored_model_id=docstore.get_meta("model_id") or "(unknown)",
                configured_fingerprint=space.fingerprint,
                configured_model_id=space.model_id,
            )
        )
