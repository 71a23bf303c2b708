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
from silobridge.silo_agent.store.docstore import DocStore
from silobridge.silo_agent.store.generation import MAX_OVERLAY_ROWS, SOURCE, TARGET, Generation
from silobridge.silo_agent.store.index import IndexManifest, IndexSettings, space_mismatch_message
from silobridge.silo_agent.store.index_home import IndexHome, open_index_home
from silobridge.silo_agent.store.rows import DeleteCounts, UpsertCounts

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]

DOCSTORE_NAME = "docstore.sqlite"
REBUILD_LOCK_NAME = "index.lock"
INDEX_DIR_NAME = SOURCE.index_dir
# Beyond this many changes beside an index, live writes wait (ResourceExhausted) for the
# rebuild to fold them in (generations compact at half of it).
MAX_PENDING_ROWS = MAX_OVERLAY_ROWS


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
    """Docstore + the generations of one data directory; the primary one answers by default.

    The docstore is the source of truth. Each generation (``store/generation.py``) serves its
    saved index with an exact overlay of what was written after it. A silo that migrates to
    another model holds two: the source (the documents' own vectors) and the target; which one
    is primary is the migration's business (``silo_agent/migration``). Searches may run
    concurrently from many threads.
    """

    def __init__(
        self,
        data_dir: Path,
        space: SpaceDescriptor,
        settings: IndexSettings,
        docstore: DocStore,
        home: IndexHome,
    ) -> None:
        self.data_dir = data_dir
        self.settings = settings
        self.docstore = docstore
        self.home = home  # where the generations' indexes are saved: FAISS files or Milvus
        self.source = Generation(home, SOURCE, space, settings, docstore)
        self.target: Generation | None = None
        self._primary = self.source
        # One writer at a time (writes, deletes, refreshes, rebuilds), across generations.
        self._write_lock = threading.RLock()
        self._rebuild_lock = threading.Lock()

    @classmethod
    def open(
        cls, data_dir: Path | str, space: SpaceDescriptor, settings: IndexSettings | None = None
    ) -> SiloData:
        """Open (creating if new) a data directory for ``space``; refuse another model's data."""
        root = Path(data_dir)
        root.mkdir(parents=True, exist_ok=True)
        settings = settings or IndexSettings()
        docstore = DocStore(root / DOCSTORE_NAME)
        home: IndexHome | None = None
        try:
            _claim_or_check_space(docstore, space)
            home = open_index_home(root, settings, (SOURCE.index_dir, TARGET.index_dir))
            data = cls(root, space, settings, docstore, home)
            data.source.load_index_if_present()
            home.serve(SOURCE.index_dir)  # a migration's recovery moves it to its primary
            data.refresh()
        except BaseException:
            if home is not None:
                home.close()
            docstore.close()
            raise
        return data

    # --- the generations -------------------------------------------------------------------

    @property
    def primary(self) -> Generation:
        return self._primary

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        """No rebuild and no write of any generation meanwhile (a migration's finish and
        rollback move and remove generations' files under it)."""
        with (
            self._rebuild_lock,
            _directory_lock(self.data_dir / REBUILD_LOCK_NAME),
            self._write_lock,
        ):
            yield

    def open_target(self, space: SpaceDescriptor) -> Generation:
        """Serve the target slot's vectors (a migration to ``space``) beside the source.

        Its index is brought up to date before it is served: the first time, every document's
        provisional vector would otherwise sit in the overlay (and hold up every write).
        """
        target = Generation(self.home, TARGET, space, self.settings, self.docstore)
        with self._rebuild_lock, _directory_lock(self.data_dir / REBUILD_LOCK_NAME):
            target.load_index_if_present()
            target.refresh()
            if target.index is None or target.needs_compaction:
                target.rebuild()
        with self._write_lock:
            target.refresh()
            self.target = target
        return target

    def set_primary(self, generation: Generation) -> None:
        """Answer default searches from ``generation`` (one swap; Milvus: the serving alias)."""
        self._primary = generation
        self.home.serve(generation.slot.index_dir)

    def close_target(self) -> None:
        """Stop serving the target slot (its files are the migration's to remove)."""
        with self._write_lock:
            self._primary = self.source
            self.target = None
            self.home.serve(SOURCE.index_dir)

    def promote_target(self, space: SpaceDescriptor) -> Generation:
        """After a finished migration: the source slot holds ``space``'s vectors; serve it alone."""
        with self._write_lock:
            source = Generation(self.home, SOURCE, space, self.settings, self.docstore)
            source.load_index_if_present()
            source.refresh()
            self.source, self.target, self._primary = source, None, source
            self.home.serve(SOURCE.index_dir)
        return source

    def generations(self) -> list[Generation]:
        target = self.target
        return [self.source] if target is None else [self.source, target]

    def generation_for(self, space_id: str) -> Generation | None:
        """The generation whose vectors are in ``space_id``, if this silo serves it."""
        return next((g for g in self.generations() if g.space.space_id == space_id), None)

    # --- the primary generation, as a one-space silo sees it ---------------------------------

    @property
    def space(self) -> SpaceDescriptor:
        return self._primary.space

    @property
    def has_index(self) -> bool:
        return self._primary.index is not None

    @property
    def needs_rebuild(self) -> bool:
        """True if there is no index or documents changed since the saved one was built."""
        primary = self._primary
        version = str(self.docstore.data_version())
        return primary.index is None or primary.indexed_version != version

    @property
    def manifest(self) -> IndexManifest | None:
        """The manifest of the primary index being served, or None before one is built."""
        return self._primary.manifest

    def count(self) -> int:
        """Documents in the docstore (the index may lag until ``rebuild_index``)."""
        return self.docstore.count()

    def stored_hashes(self, doc_ids: Iterable[str]) -> dict[str, str]:
        return self.docstore.stored_hashes(doc_ids)

    def texts(self, doc_ids: Iterable[str]) -> dict[str, str]:
        """Stored text by doc id, for local display (never sent to a peer by this layer)."""
        return self.docstore.texts(doc_ids)

    def upsert(
        self, docs: Sequence[Document], vectors: FloatMatrix, target: FloatMatrix | None = None
    ) -> UpsertCounts:
        """Store documents with vectors in the source space (and ``target``'s, while migrating)."""
        matrix = np.asarray(vectors)
        dimension = self.source.space.dimension
        if matrix.ndim != 2 or matrix.shape[1] != dimension:
            raise InvalidArgument(
                f"vectors have shape {matrix.shape}; space {self.source.space.space_id} "
                f"expects (n, {dimension})"
            )
        for vectors_of, space in ((matrix, self.source.space), (target, None)):
            if vectors_of is not None:
                _refuse_zero_rows(docs, np.asarray(vectors_of), space)
        return self.docstore.upsert(docs, matrix, target)

    def write(
        self, docs: Sequence[Document], vectors: FloatMatrix, target: FloatMatrix | None = None
    ) -> UpsertCounts:
        """Store documents now, in a serving silo: durable on return, seen by the next search."""
        with self._write_lock:
            pending = max(g.overlay.size for g in self.generations())
            if pending >= MAX_PENDING_ROWS:
                raise ResourceExhausted(
                    f"{pending} changes are waiting to be folded into the index; "
                    "retry once the silo's background rebuild is done"
                )
            counts = self.upsert(docs, vectors, target)
            self.refresh()
        return counts

    def delete(self, doc_ids: Sequence[str]) -> DeleteCounts:
        """Remove documents (in every generation): durable on return, gone from the next search."""
        with self._write_lock:
            counts = self.docstore.delete(doc_ids)
            self.refresh()
        return counts

    def refresh(self) -> bool:
        """Serve every change made after each index was built; True if there was a new one.

        Cheap when nothing changed (one meta read per generation), so a server may call it
        periodically to pick up another process's ingest.
        """
        with self._write_lock:
            changed = [generation.refresh() for generation in self.generations()]
        return any(changed)

    @property
    def pending_changes(self) -> int:
        """Rows written or deleted since the primary index was built (served from its overlay)."""
        return self._primary.overlay.size

    @property
    def needs_compaction(self) -> bool:
        """True once some generation's overlay should be folded into its index."""
        return any(generation.needs_compaction for generation in self.generations())

    def search(self, vector: FloatVector, k: int) -> list[Hit]:
        """Top-``k`` documents for an L2-normalised query vector in the primary space.

        Each hit's ``fields`` are all of the document's metadata: what leaves the silo is the
        service's decision, not the store's.
        """
        return self._search(self._primary, vector, k, with_vectors=False).hits

    def search_candidates(self, vector: FloatVector, depth: int) -> Candidates:
        """Top-``depth`` documents with their stored vectors, for a second-stage re-rank."""
        return self._search(self._primary, vector, depth, with_vectors=True)

    def search_in(self, generation: Generation, vector: FloatVector, k: int) -> list[Hit]:
        """Top-``k`` documents of one generation (a query in its space)."""
        return self._search(generation, vector, k, with_vectors=False).hits

    def candidates_in(self, generation: Generation, vector: FloatVector, depth: int) -> Candidates:
        """Top-``depth`` documents of one generation, with their vectors in the primary space
        (the re-ranker's text is embedded by the primary model)."""
        return self._search(generation, vector, depth, with_vectors=True)

    def checked_query(self, generation: Generation, vector: FloatVector) -> FloatVector:
        """``vector`` as a query of ``generation``'s space, or a refusal saying why not."""
        index, overlay = generation.state()
        if index is None and overlay.version == 0:
            raise FailedPrecondition("index not built yet: run `silobridge silo ingest` first")
        query = np.asarray(vector, dtype=np.float32)
        dimension = generation.space.dimension
        if query.shape != (dimension,):
            raise InvalidArgument(
                f"query vector has shape {query.shape}; this silo expects ({dimension},)"
            )
        return query

    def _search(
        self, generation: Generation, vector: FloatVector, k: int, *, with_vectors: bool
    ) -> Candidates:
        query = self.checked_query(generation, vector)
        found = generation.search(query, k)
        docs = self.docstore.fetch(key for key, _ in found)
        kept = [key for key, _ in found if key in docs]
        scored = [
            Hit(doc_id=docs[key].doc_id, score=score, fields=docs[key].metadata)
            for key, score in found
            if key in docs
        ]
        if not with_vectors:
            return Candidates(scored, None)
        return Candidates(scored, self._primary.vectors_of(kept))

    def rebuild_index(self) -> IndexManifest:
        """Rebuild every generation's index from the docstore, save and serve them.

        One rebuild at a time in this process; a write during the rebuild is kept in the
        docstore and served beside the new index (it is after the version read first). Returns
        the primary generation's manifest.
        """
        # The file lock: `silo ingest` in another process may rebuild the same directory; two
        # interleaved saves could leave a manifest naming a file the other one cleaned up.
        with self._rebuild_lock, _directory_lock(self.data_dir / REBUILD_LOCK_NAME):
            manifests = {id(g): g.rebuild() for g in self.generations()}
        return manifests.get(id(self._primary)) or self.source.rebuild()

    def compact(self) -> list[IndexManifest]:
        """Fold large overlays into their indexes (the background compaction; FAISS rebuilds)."""
        with self._rebuild_lock, _directory_lock(self.data_dir / REBUILD_LOCK_NAME):
            # Read under the lock: a generation a rollback or finish dropped is not rebuilt.
            return [g.compact() for g in self.generations() if g.needs_compaction]

    def rebuild_generation(self, generation: Generation) -> IndexManifest:
        """Rebuild one generation's index now (a migration does before its cut-over)."""
        with self._rebuild_lock, _directory_lock(self.data_dir / REBUILD_LOCK_NAME):
            if generation not in self.generations():
                raise FailedPrecondition("that generation is no longer served")
            return generation.rebuild()

    def reload_index(self) -> bool:
        """Pick up an index another process (``silo ingest``) saved; True if it changed."""
        current = self.home.read_manifest(SOURCE.index_dir)
        if current is None or current == self.source.manifest:
            return False
        self.source.load_index_if_present()
        self.refresh()
        return True

    def close(self) -> None:
        self.home.close()
        self.docstore.close()


def _refuse_zero_rows(
    docs: Sequence[Document], matrix: np.ndarray, space: SpaceDescriptor | None
) -> None:
    # A zero vector has no direction: it matches nothing and makes cosine scores meaningless.
    norms = np.linalg.norm(matrix.astype(np.float64), axis=1) if matrix.size else np.zeros(0)
    zero = np.flatnonzero(~(norms > 0))
    if zero.size:
        doc = docs[int(zero[0])]
        where = f" in space {space.space_id}" if space is not None else " in the target space"
        raise InvalidArgument(
            f"document {doc.doc_id!r:.80} embeds to a zero vector{where} (the model found "
            "nothing in its text); nothing of this batch was stored"
        )


def rebuild_lock(data_dir: Path) -> contextlib.AbstractContextManager[None]:
    """The cross-process lock rebuilds, finish and rollback hold on a data directory."""
    return _directory_lock(data_dir / REBUILD_LOCK_NAME)


@contextlib.contextmanager
def _directory_lock(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if needed), held across processes."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


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
