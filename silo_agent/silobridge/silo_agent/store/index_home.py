"""Where a data directory's generations keep their saved indexes: FAISS files, or Milvus.

A generation (``generation.py``) names its slot by the slot's index directory (``index``,
``index-next``) and asks its ``IndexHome`` to save, load, fold, drop and promote what is there;
``[index] backend`` picks the home. With FAISS a slot is a directory of this data directory;
with Milvus (``milvus_home.py``) it is an alias naming one collection. The docstore stays the
source of truth either way: any index can be rebuilt from it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from silobridge.silo_agent.store.index import (
    IndexManifest,
    IndexSettings,
    VectorIndex,
    read_manifest,
)
from silobridge.silo_agent.store.rows import Changes, KeyArray

FloatMatrix = npt.NDArray[np.float32]
_OLD_INDEX = "index-old"


class IndexReplaced(Exception):
    """The index a search held was dropped meanwhile (a rebuild replaced it): search again."""


class ServedIndex(Protocol):
    """What a generation searches: the docstore's integer keys, inner-product scores."""

    @property
    def manifest(self) -> IndexManifest | None: ...

    @property
    def factory(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    @property
    def max_key(self) -> int | None: ...

    @property
    def count(self) -> int: ...

    def search(self, queries: FloatMatrix, k: int) -> list[list[tuple[int, float]]]: ...

    def reconstruct(self, keys: KeyArray) -> FloatMatrix | None: ...


class IndexHome(Protocol):
    """The saved indexes of one data directory's slots (each named by its index directory)."""

    # Whether ``fold`` can apply changes to a saved index (else compaction rebuilds it).
    folds_in_place: bool

    def read_manifest(self, name: str) -> IndexManifest | None:
        """The manifest of the index saved for ``name``, or None if none is."""
        ...

    def load(
        self,
        name: str,
        *,
        expected_fingerprint: str,
        expected_model_id: str,
        settings: IndexSettings,
    ) -> ServedIndex:
        """The saved index of ``name``; another model's index is refused."""
        ...

    def save(
        self,
        name: str,
        keys: KeyArray,
        vectors: FloatMatrix,
        settings: IndexSettings,
        *,
        fingerprint: str,
        model_id: str,
    ) -> ServedIndex:
        """Build an index of these vectors and make it ``name``'s saved index."""
        ...

    def fold(
        self, name: str, index: ServedIndex, changes: Changes, settings: IndexSettings
    ) -> ServedIndex | None:
        """Apply ``changes`` to the saved index in place; None where only a rebuild can."""
        ...

    def discard_superseded(self, name: str) -> None:
        """Remove what ``name``'s earlier saves left, once nothing searches it any more."""
        ...

    def drop(self, name: str) -> None:
        """Remove ``name``'s saved index (a rollback's, a restarted migration's leftovers)."""
        ...

    def promote(self, source: str, target: str) -> None:
        """``target``'s index becomes ``source``'s (finish); safe to repeat after a crash."""
        ...

    def serve(self, name: str) -> None:
        """Record that ``name`` answers the silo's default queries (its primary)."""
        ...

    def close(self) -> None: ...


class FaissHome:
    """FAISS: each slot is a directory of the data directory, a manifest naming one file."""

    # FAISS's HNSW can neither delete nor replace a vector: compaction rebuilds.
    folds_in_place = False

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    def read_manifest(self, name: str) -> IndexManifest | None:
        return read_manifest(self.data_dir / name)

    def load(
        self,
        name: str,
        *,
        expected_fingerprint: str,
        expected_model_id: str,
        settings: IndexSettings,
    ) -> ServedIndex:
        return VectorIndex.load(
            self.data_dir / name,
            expected_fingerprint=expected_fingerprint,
            expected_model_id=expected_model_id,
            settings=settings,
        )

    def save(
        self,
        name: str,
        keys: KeyArray,
        vectors: FloatMatrix,
        settings: IndexSettings,
        *,
        fingerprint: str,
        model_id: str,
    ) -> ServedIndex:
        index = VectorIndex.build(keys, vectors, settings)
        index.save(self.data_dir / name, fingerprint=fingerprint, model_id=model_id)
        return index

    def fold(
        self, name: str, index: ServedIndex, changes: Changes, settings: IndexSettings
    ) -> ServedIndex | None:
        return None

    def discard_superseded(self, name: str) -> None:
        pass  # ``VectorIndex.save`` removed the old files; searches hold the index in memory

    def drop(self, name: str) -> None:
        shutil.rmtree(self.data_dir / name, ignore_errors=True)

    def promote(self, source: str, target: str) -> None:
        # Each step checks what is already done, so a crash anywhere leaves a state this finishes.
        now, new, old = self.data_dir / source, self.data_dir / target, self.data_dir / _OLD_INDEX
        if new.is_dir():
            if now.is_dir():
                shutil.rmtree(old, ignore_errors=True)
                now.rename(old)
            new.rename(now)
        shutil.rmtree(old, ignore_errors=True)

    def serve(self, name: str) -> None:
        pass  # the process serving the directory is the only reader that needs to know

    def close(self) -> None:
        pass


def open_index_home(data_dir: Path, settings: IndexSettings, slots: tuple[str, ...]) -> IndexHome:
    """The home ``[index] backend`` names; ``slots`` are every slot name the silo may use."""
    if settings.milvus is None:
        return FaissHome(data_dir)
    # Imported here: a FAISS silo never loads the Milvus client.
    from silobridge.silo_agent.store.milvus_home import MilvusHome

    return MilvusHome.connect(settings.milvus, slots)
