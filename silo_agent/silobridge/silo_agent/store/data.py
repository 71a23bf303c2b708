"""The silo's data directory as one object: docstore plus index, checked against the embedder."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from silobridge.core.errors import FailedPrecondition, InvalidArgument
from silobridge.core.hits import Hit
from silobridge.core.spaces import SpaceDescriptor
from silobridge.embedding.embedders import Embedder
from silobridge.silo_agent.store.docstore import DocStore, Document, UpsertCounts
from silobridge.silo_agent.store.index import (
    IndexManifest,
    IndexSettings,
    VectorIndex,
    read_manifest,
    space_mismatch_message,
)

FloatMatrix = npt.NDArray[np.float32]
FloatVector = npt.NDArray[np.float32]

DOCSTORE_NAME = "docstore.sqlite"
INDEX_DIR_NAME = "index"
# Docstore meta: the docstore data version the saved index was built from. Compared with the
# current version it survives a crash between an upsert and the rebuild, so the next ingest
# rebuilds even if nothing else changed.
_INDEXED_VERSION = "indexed_data_version"


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

    Searches may run concurrently from many threads; ``rebuild_index`` swaps the index in one
    assignment, so a search sees the old index or the new one.
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
        self._swap_lock = threading.Lock()

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
        # One reference for the search and the reconstruction: a concurrent rebuild swaps
        # ``self._index`` but cannot mix two indexes into one answer.
        index = self._index
        if index is None:
            raise FailedPrecondition("index not built yet: run `silobridge silo ingest` first")
        query = np.asarray(vector, dtype=np.float32)
        if query.shape != (self._space.dimension,):
            raise InvalidArgument(
                f"query vector has shape {query.shape}; this silo expects "
                f"({self._space.dimension},)"
            )
        found = index.search(query.reshape(1, -1), k)[0]
        docs = self.docstore.fetch(key for key, _ in found)
        hits = [(key, score) for key, score in found if key in docs]
        scored = [
            Hit(doc_id=docs[key].doc_id, score=score, fields=docs[key].metadata)
            for key, score in hits
        ]
        if not with_vectors:
            return Candidates(scored, None)
        keys = np.fromiter((key for key, _ in hits), dtype=np.int64, count=len(hits))
        return Candidates(scored, index.reconstruct(keys))

    def rebuild_index(self) -> IndexManifest:
        """Rebuild the index from every vector in the docstore, save it, and serve it.

        One writer at a time: an upsert from another process during a rebuild is kept in the
        docstore but may miss this index until the next rebuild.
        """
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
        with self._swap_lock:
            self._index, self._manifest = index, manifest
        return manifest

    def reload_index(self) -> bool:
        """Pick up an index another process (``silo ingest``) saved; True if it changed."""
        current = read_manifest(self.index_dir)
        if current is None or current == self._manifest:
            return False
        self._load_index_if_present()
        return True

    def close(self) -> None:
        self.docstore.close()

    def _load_index_if_present(self) -> None:
        if read_manifest(self.index_dir) is None:
            return
        index = VectorIndex.load(
            self.index_dir,
            expected_fingerprint=self._space.fingerprint,
            expected_model_id=self._space.model_id,
            settings=self.settings,
        )
        with self._swap_lock:
            self._index, self._manifest = index, index.manifest


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
