"""One Milvus collection as a generation's index: build it, search it, fold changes into it.

The collection holds (key, vector) rows, the key being the docstore's integer key, and is
searched by inner product: ``FLAT`` (exact, what FAISS's ``IDMap2,Flat`` is) below the exact
threshold, ``HNSW`` with the configured links and breadths above it. The same calls work
against Milvus Lite and a Milvus server (``milvus_home.py`` connects and names collections).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import numpy.typing as npt
from pymilvus import DataType, MilvusClient, MilvusException

from silobridge.core.errors import FailedPrecondition, Unavailable
from silobridge.silo_agent.store.index import IndexManifest, IndexSettings, checked_queries
from silobridge.silo_agent.store.index_home import IndexReplaced
from silobridge.silo_agent.store.milvus_settings import hnsw_links
from silobridge.silo_agent.store.rows import Changes, KeyArray

FloatMatrix = npt.NDArray[np.float32]
log = logging.getLogger(__name__)

KEY_FIELD = "key"
VECTOR_FIELD = "vector"
EXACT_KIND = "FLAT"
# Milvus answers at most this many hits per query (its topk limit).
MAX_TOPK = 16_384
# Rows per insert or upsert call: well under gRPC's message limits for any model's width.
_WRITE_BYTES = 8 * 1024 * 1024
# Keys per delete call (Milvus turns them into one "key in [...]" expression).
_DELETE_IDS = 5_000
# A search or a read that takes longer than this is an outage, not a slow answer.
CALL_TIMEOUT_S = 30.0
# Milvus's "collection does not exist" status.
_NO_COLLECTION = 100
# How often to ask a Milvus server whether it has built a new collection's index.
_INDEX_POLL_S = 0.5


@dataclass(frozen=True)
class IndexKind:
    """What a build makes: the index type and its parameters, as the manifest records them."""

    exact: bool
    links: int = 0
    ef_construction: int = 0

    @classmethod
    def for_size(cls, rows: int, settings: IndexSettings) -> IndexKind:
        if rows < settings.exact_threshold:
            return cls(exact=True)
        return cls(False, hnsw_links(settings.hnsw_factory), settings.hnsw_ef_construction)

    @property
    def factory(self) -> str:
        if self.exact:
            return f"milvus:{EXACT_KIND}"
        return f"milvus:HNSW,M={self.links},efConstruction={self.ef_construction}"

    @classmethod
    def of_factory(cls, factory: str) -> IndexKind:
        if factory == f"milvus:{EXACT_KIND}":
            return cls(exact=True)
        params = dict(part.split("=", 1) for part in factory.split(",")[1:] if "=" in part)
        return cls(False, int(params.get("M", 0)), int(params.get("efConstruction", 0)))


def create_collection(
    client: MilvusClient, name: str, dimension: int, kind: IndexKind, description: str
) -> None:
    """An empty, loaded collection for (key, vector) rows, indexed for inner product."""
    schema = MilvusClient.create_schema(
        auto_id=False, enable_dynamic_field=False, description=description
    )
    schema.add_field(KEY_FIELD, DataType.INT64, is_primary=True)
    schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=dimension)
    params = client.prepare_index_params()
    if kind.exact:
        params.add_index(field_name=VECTOR_FIELD, index_type=EXACT_KIND, metric_type="IP")
    else:
        params.add_index(
            field_name=VECTOR_FIELD,
            index_type="HNSW",
            metric_type="IP",
            # Nested once more: pymilvus flattens ``params`` into top-level pairs, which Milvus
            # Lite ignores (it built M=16, efConstruction=200 whatever was asked); a ``params``
            # pair holding the JSON is what Lite reads and what Milvus servers also accept.
            params={"params": {"M": kind.links, "efConstruction": kind.ef_construction}},
        )
    # Strong: a search sees every row written before it, as the overlay handover requires.
    client.create_collection(name, schema=schema, consistency_level="Strong")
    # Not ``sync``: pymilvus's wait asks for a timestamp Milvus Lite does not serve, then
    # sleeps; ``load`` waits for the index instead.
    client.create_index(name, params, sync=False)


def load(client: MilvusClient, name: str) -> None:
    """Make a built (and flushed) collection searchable once its index is built."""
    while True:
        state = str(client.describe_index(name, VECTOR_FIELD).get("state", ""))
        if state.endswith("Finished"):
            break
        if state.endswith("Failed"):
            raise FailedPrecondition(f"Milvus could not build the index of collection {name}")
        time.sleep(_INDEX_POLL_S)
    client.load_collection(name)


def write_rows(client: MilvusClient, name: str, keys: KeyArray, vectors: FloatMatrix) -> None:
    """Upsert (key, vector) rows in calls of a bounded size."""
    matrix = np.ascontiguousarray(vectors, dtype=np.float32)
    if matrix.shape[0] == 0:
        return
    step = max(1, _WRITE_BYTES // (matrix.shape[1] * 4 + 8))
    for start in range(0, matrix.shape[0], step):
        chunk = zip(keys[start : start + step], matrix[start : start + step], strict=True)
        rows = [{KEY_FIELD: int(key), VECTOR_FIELD: row} for key, row in chunk]
        client.upsert(name, rows)


def count_rows(client: MilvusClient, name: str) -> int:
    rows = client.query(name, filter="", output_fields=["count(*)"])
    return int(rows[0]["count(*)"])


def new_manifest(
    collection: str, kind: IndexKind, *, fingerprint: str, model_id: str, dimension: int, count: int
) -> IndexManifest:
    import pymilvus  # the version of what wrote it, as FAISS's manifests record FAISS's

    return IndexManifest(
        fingerprint=fingerprint,
        model_id=model_id,
        dimension=dimension,
        factory=kind.factory,
        count=count,
        # The collection this manifest describes; Milvus holds its files, so no digest.
        files={collection: ""},
        faiss_version=f"pymilvus {pymilvus.__version__}",
        created_at=_now(),
    )


class MilvusIndex:
    """A loaded collection, searched by inner product; keys are the docstore's keys."""

    def __init__(
        self,
        client: MilvusClient,
        collection: str,
        manifest: IndexManifest,
        settings: IndexSettings,
    ) -> None:
        self.client = client
        self.collection = collection
        self._manifest = manifest
        self.kind = IndexKind.of_factory(manifest.factory)
        self.ef_search = settings.hnsw_ef_search

    @property
    def manifest(self) -> IndexManifest:
        return self._manifest

    @property
    def factory(self) -> str:
        return self._manifest.factory

    @property
    def dimension(self) -> int:
        return self._manifest.dimension

    @property
    def max_key(self) -> int | None:
        # Unknown: rows are folded in place, so a search hides every key the overlay holds
        # (store/overlay.py) and never returns a key from both.
        return None

    @property
    def count(self) -> int:
        return self._manifest.count

    def search(self, queries: FloatMatrix, k: int) -> list[list[tuple[int, float]]]:
        """Top-``k`` (key, inner product) per query row, best first (at most ``MAX_TOPK``)."""
        matrix = checked_queries(queries, self.dimension, k)
        if self.count == 0:
            return [[] for _ in range(matrix.shape[0])]
        limit = min(k, MAX_TOPK)
        params: dict[str, Any] = {"metric_type": "IP"}
        if not self.kind.exact:
            params["params"] = {"ef": max(self.ef_search, limit)}  # Milvus wants ef >= limit
        try:
            answers = self.client.search(
                self.collection,
                data=list(matrix),
                limit=limit,
                search_params=params,
                output_fields=[KEY_FIELD],  # not the vectors
                timeout=CALL_TIMEOUT_S,
            )
        except MilvusException as error:
            raise self._failure("search", error) from error
        return [[(int(hit.id), float(hit.distance)) for hit in answer] for answer in answers]

    def reconstruct(self, keys: KeyArray) -> FloatMatrix | None:
        """The stored vectors of ``keys``, row by row; None if one is not held any more."""
        wanted = [int(key) for key in keys]
        if not wanted:
            return np.zeros((0, self.dimension), dtype=np.float32)
        try:
            rows = self.client.get(
                self.collection, ids=wanted, output_fields=[VECTOR_FIELD], timeout=CALL_TIMEOUT_S
            )
        except MilvusException as error:
            if error.code == _NO_COLLECTION:
                return None
            raise self._failure("read", error) from error
        found = {int(row[KEY_FIELD]): row[VECTOR_FIELD] for row in rows}
        if any(key not in found for key in wanted):
            return None
        return np.asarray([found[key] for key in wanted], dtype=np.float32)

    def folded(self, changes: Changes, settings: IndexSettings) -> MilvusIndex | None:
        """This collection with ``changes`` applied and flushed; None once the exact index has
        grown past the threshold (an HNSW one is a new build)."""
        write_rows(self.client, self.collection, changes.keys, changes.vectors)
        deleted = [int(key) for key in changes.deleted]
        for start in range(0, len(deleted), _DELETE_IDS):  # each call is one filter expression
            self.client.delete(self.collection, ids=deleted[start : start + _DELETE_IDS])
        self.client.flush(self.collection)  # durable before the docstore says it is indexed
        count = count_rows(self.client, self.collection)
        if self.kind.exact and count >= settings.exact_threshold:
            return None
        manifest = dataclasses.replace(self._manifest, count=count, created_at=_now())
        return MilvusIndex(self.client, self.collection, manifest, settings)

    def _failure(self, what: str, error: MilvusException) -> Exception:
        if error.code == _NO_COLLECTION:
            return IndexReplaced(self.collection)
        log.error("Milvus %s in collection %s failed: %s", what, self.collection, error)
        # The peer learns only that the silo's index is down; the log has the details.
        return Unavailable("the silo's vector index is unavailable; try again later")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")
