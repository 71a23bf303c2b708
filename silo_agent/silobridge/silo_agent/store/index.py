"""The silo's FAISS vector index: build, search, and an atomically swapped index directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from silobridge.core.durable import ensure_directory, write_file_atomically
from silobridge.core.errors import ConfigError, FailedPrecondition, InvalidArgument, NotFound
from silobridge.silo_agent.store.milvus_settings import MilvusSettings

FloatMatrix = npt.NDArray[np.float32]
KeyArray = npt.NDArray[np.int64]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT_VERSION = 1
EXACT_FACTORY = "IDMap2,Flat"
_INDEX_PREFIX = "faiss-"
_INDEX_SUFFIX = ".index"
# A writer in another process may delete the file a manifest named just after we read that
# manifest; re-reading the manifest then finds the new file.
_LOAD_ATTEMPTS = 3


def pin_faiss_threads(threads: int) -> None:
    """Cap FAISS's OpenMP threads so searches do not fight the server's own thread pool."""
    if threads < 1:
        raise ConfigError(f"FAISS thread count must be at least 1, got {threads}")
    faiss.omp_set_num_threads(threads)


@dataclass(frozen=True)
class IndexSettings:
    """How to build the index: exact below ``exact_threshold`` vectors, the factory above."""

    exact_threshold: int = 20_000
    hnsw_factory: str = "HNSW32,Flat"
    hnsw_ef_search: int = 128
    hnsw_ef_construction: int = 80
    # None: FAISS files in the data directory; else the Milvus server or Lite file to use.
    milvus: MilvusSettings | None = None

    @property
    def backend(self) -> str:
        return "faiss" if self.milvus is None else "milvus"


@dataclass(frozen=True)
class IndexManifest:
    """What built the index files beside it; readers trust only files this names."""

    fingerprint: str
    model_id: str
    dimension: int
    factory: str
    count: int
    files: Mapping[str, str]
    faiss_version: str
    created_at: str
    format_version: int = MANIFEST_FORMAT_VERSION

    def to_json(self) -> str:
        body = {
            "format_version": self.format_version,
            "fingerprint": self.fingerprint,
            "model_id": self.model_id,
            "dimension": self.dimension,
            "factory": self.factory,
            "count": self.count,
            "files": dict(self.files),
            "faiss_version": self.faiss_version,
            "created_at": self.created_at,
        }
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, source: Path) -> IndexManifest:
        try:
            body = json.loads(text)
            manifest = cls(
                fingerprint=str(body["fingerprint"]),
                model_id=str(body["model_id"]),
                dimension=int(body["dimension"]),
                factory=str(body["factory"]),
                count=int(body["count"]),
                files={str(k): str(v) for k, v in dict(body["files"]).items()},
                faiss_version=str(body["faiss_version"]),
                created_at=str(body["created_at"]),
                format_version=int(body["format_version"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise FailedPrecondition(
                f"index manifest {source} is unreadable ({exc}); delete the index directory "
                "and run `silobridge silo ingest` to rebuild it from the docstore"
            ) from exc
        if manifest.format_version != MANIFEST_FORMAT_VERSION:
            raise FailedPrecondition(
                f"index manifest {source} has format version {manifest.format_version}; this "
                f"release reads version {MANIFEST_FORMAT_VERSION}. Rebuild the index with "
                "`silobridge silo ingest`."
            )
        return manifest


def space_mismatch_message(
    what: str,
    *,
    stored_fingerprint: str,
    stored_model_id: str,
    configured_fingerprint: str,
    configured_model_id: str,
) -> str:
    """The one wording used wherever stored data and the configured embedder disagree."""
    return (
        f"{what} was built with model '{stored_model_id}' (fingerprint {stored_fingerprint}), "
        f"but the configured embedder is '{configured_model_id}' "
        f"(fingerprint {configured_fingerprint}). Vectors from different models cannot be "
        f"mixed: configure the model '{stored_model_id}' the data was built with, "
        "or ingest into a new data directory."
    )


def read_manifest(directory: Path | str) -> IndexManifest | None:
    """The manifest in ``directory``, or None if no index has been saved there."""
    path = Path(directory) / MANIFEST_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return IndexManifest.from_json(text, path)


def checked_queries(queries: FloatMatrix, dimension: int, k: int) -> FloatMatrix:
    """``queries`` as a contiguous float32 matrix of ``dimension`` columns; ``k`` at least 1."""
    matrix = np.ascontiguousarray(queries, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != dimension:
        raise InvalidArgument(
            f"queries have shape {matrix.shape}; this index expects (m, {dimension})"
        )
    if k < 1:
        raise InvalidArgument(f"k must be at least 1, got {k}")
    return matrix


def _hnsw_of(index: Any) -> Any | None:
    """The HNSW structure inside an IDMap wrapper, if the wrapped index is an HNSW one."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "index") else index
    return getattr(inner, "hnsw", None)


class VectorIndex:
    """A FAISS inner-product index whose ids are the docstore's integer keys."""

    def __init__(self, index: Any, factory: str, manifest: IndexManifest | None = None) -> None:
        self._index = index
        self.factory = factory
        self._max_key: int | None = None
        # The manifest this index was loaded from or last saved with; None while only in memory.
        self.manifest = manifest

    @property
    def dimension(self) -> int:
        return int(self._index.d)

    @property
    def max_key(self) -> int | None:
        """The largest docstore key this index holds (-1 when empty; None when unknown).

        Keys only grow (the docstore never reuses one), so a key above it is not in the index.
        """
        if self._max_key is None:
            try:
                ids = faiss.vector_to_array(self._index.id_map)
            except AttributeError:
                return None
            self._max_key = int(ids.max()) if ids.shape[0] else -1
        return self._max_key

    @property
    def count(self) -> int:
        return int(self._index.ntotal)

    @classmethod
    def build(
        cls, keys: KeyArray, vectors: FloatMatrix, settings: IndexSettings | None = None
    ) -> VectorIndex:
        """Exact search below the threshold; the configured approximate factory above it."""
        settings = settings or IndexSettings()
        matrix = np.ascontiguousarray(vectors, dtype=np.float32)
        ids = np.ascontiguousarray(keys, dtype=np.int64)
        if matrix.ndim != 2 or ids.shape != (matrix.shape[0],):
            raise InvalidArgument(
                f"index build needs one key per vector row: keys {ids.shape}, "
                f"vectors {matrix.shape}"
            )
        if matrix.shape[0] < settings.exact_threshold:
            factory = EXACT_FACTORY
        elif settings.hnsw_factory.startswith("IDMap"):
            factory = settings.hnsw_factory
        else:
            # The wrapper makes FAISS return our integer keys instead of insertion positions.
            factory = f"IDMap2,{settings.hnsw_factory}"
        try:
            index = faiss.index_factory(matrix.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            raise ConfigError(f"FAISS cannot build index factory '{factory}': {exc}") from exc
        hnsw = _hnsw_of(index)
        if hnsw is not None:
            hnsw.efConstruction = settings.hnsw_ef_construction
            hnsw.efSearch = settings.hnsw_ef_search
        if not index.is_trained:
            index.train(matrix)
        if matrix.shape[0]:
            index.add_with_ids(matrix, ids)
        return cls(index, factory)

    def set_ef_search(self, ef_search: int) -> None:
        """Set HNSW's search breadth (no effect on an exact index). Call before serving."""
        hnsw = _hnsw_of(self._index)
        if hnsw is not None:
            hnsw.efSearch = ef_search

    def search(self, queries: FloatMatrix, k: int) -> list[list[tuple[int, float]]]:
        """Top-``k`` (key, inner product) per query row, best first, without FAISS's -1 padding."""
        matrix = checked_queries(queries, self.dimension, k)
        if self.count == 0:
            return [[] for _ in range(matrix.shape[0])]
        scores, ids = self._index.search(matrix, k)
        # Plain Python numbers in one conversion each (not per element): this runs per query.
        return [
            [(key, score) for key, score in zip(row_ids, row_scores, strict=True) if key != -1]
            for row_ids, row_scores in zip(ids.tolist(), scores.tolist(), strict=True)
        ]

    def reconstruct(self, keys: KeyArray) -> FloatMatrix | None:
        """The stored vectors of ``keys`` (keys this index holds), row by row.

        None when the index type cannot give vectors back (an IVF index without a direct map);
        flat and HNSW indexes can.
        """
        ids = np.ascontiguousarray(keys, dtype=np.int64)
        if ids.shape[0] == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        try:
            rows = self._index.reconstruct_batch(ids)
        except RuntimeError:
            return None
        return np.asarray(rows, dtype=np.float32).reshape(ids.shape[0], self.dimension)

    def save(self, directory: Path | str, *, fingerprint: str, model_id: str) -> IndexManifest:
        """Write a new index file, then atomically point ``manifest.json`` at it.

        Readers follow the manifest, so they see either the old index or the new one, never a
        mixture; files the new manifest does not name are removed afterwards.
        """
        target = Path(directory)
        ensure_directory(target)
        data = bytes(faiss.serialize_index(self._index))
        digest = hashlib.sha256(data).hexdigest()
        name = f"{_INDEX_PREFIX}{digest[:16]}{_INDEX_SUFFIX}"
        write_file_atomically(target / name, data)
        manifest = IndexManifest(
            fingerprint=fingerprint,
            model_id=model_id,
            dimension=self.dimension,
            factory=self.factory,
            count=self.count,
            files={name: digest},
            faiss_version=str(faiss.__version__),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        # The index file's rename is durable before the manifest names it.
        write_file_atomically(target / MANIFEST_NAME, manifest.to_json().encode("utf-8"))
        for stale in target.iterdir():
            is_old_index = stale.name.startswith(_INDEX_PREFIX) and stale.name not in manifest.files
            if is_old_index or stale.name.endswith(".tmp"):
                with contextlib.suppress(FileNotFoundError):
                    stale.unlink()
        self.manifest = manifest
        return manifest

    @classmethod
    def load(
        cls,
        directory: Path | str,
        *,
        expected_fingerprint: str,
        expected_model_id: str = "(configured model)",
        settings: IndexSettings | None = None,
    ) -> VectorIndex:
        """Load the index the manifest names, refusing another model's index or a corrupt file."""
        source = Path(directory)
        attempts_left = _LOAD_ATTEMPTS
        while True:
            manifest = read_manifest(source)
            if manifest is None:
                raise NotFound(f"no index in {source}: run `silobridge silo ingest` to build one")
            if manifest.fingerprint != expected_fingerprint:
                raise FailedPrecondition(
                    space_mismatch_message(
                        f"the index in {source}",
                        stored_fingerprint=manifest.fingerprint,
                        stored_model_id=manifest.model_id,
                        configured_fingerprint=expected_fingerprint,
                        configured_model_id=expected_model_id,
                    )
                )
            try:
                index = cls._read_verified(source, manifest)
            except FileNotFoundError:
                attempts_left -= 1
                if attempts_left:
                    continue
                raise FailedPrecondition(
                    f"the index files named by {source / MANIFEST_NAME} are missing; run "
                    "`silobridge silo ingest` to rebuild the index from the docstore"
                ) from None
            if settings is not None:
                index.set_ef_search(settings.hnsw_ef_search)
            return index

    @classmethod
    def _read_verified(cls, source: Path, manifest: IndexManifest) -> VectorIndex:
        if len(manifest.files) != 1:
            raise FailedPrecondition(
                f"index manifest in {source} names {len(manifest.files)} files; expected one"
            )
        ((name, expected_digest),) = manifest.files.items()
        if Path(name).name != name:
            raise FailedPrecondition(f"index manifest in {source} names a path outside it: {name}")
        data = (source / name).read_bytes()
        rebuild_hint = (
            "delete the index directory and run `silobridge silo ingest` to rebuild it "
            "from the docstore"
        )
        if hashlib.sha256(data).hexdigest() != expected_digest:
            raise FailedPrecondition(
                f"index file {source / name} is corrupt (its sha256 does not match the "
                f"manifest); {rebuild_hint}"
            )
        try:
            index = faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))
        except RuntimeError as exc:
            raise FailedPrecondition(
                f"index file {source / name} cannot be read by FAISS {faiss.__version__} "
                f"({exc}); {rebuild_hint}"
            ) from exc
        if int(index.d) != manifest.dimension or int(index.ntotal) != manifest.count:
            raise FailedPrecondition(
                f"index file {source / name} holds {index.ntotal} vectors of dimension "
                f"{index.d}, the manifest says {manifest.count} of {manifest.dimension}; "
                f"{rebuild_hint}"
            )
        return cls(index, manifest.factory, manifest)
