"""What the docstore hands out: stored documents, change sets, receipts, content hashes."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from silobridge.core.documents import Document
from silobridge.core.errors import InvalidArgument

FloatMatrix = npt.NDArray[np.float32]
KeyArray = npt.NDArray[np.int64]
# The tables a generation's vectors live in (store/generation.py): spliced into SQL, so fixed.
VECTOR_TABLES = frozenset({"documents", "migration_vectors"})


@dataclass(frozen=True)
class StoredDocument:
    """A document as held in the docstore, with the integer key the vector index uses."""

    key: int
    doc_id: str
    text: str
    metadata: Mapping[str, str]


@dataclass(frozen=True)
class Changes:
    """What changed after a data version: rows written since (key, vector) and keys deleted."""

    version: int
    keys: KeyArray
    vectors: FloatMatrix
    deleted: KeyArray


@dataclass(frozen=True)
class DeleteCounts:
    """What one delete did: the ids removed and the requested ids that were not stored."""

    deleted: tuple[str, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class UpsertCounts:
    """What one upsert did: new documents, changed documents, documents already identical."""

    inserted: int = 0
    updated: int = 0
    unchanged: int = 0


def canonical_metadata(metadata: Mapping[str, str]) -> str:
    """Metadata as canonical JSON (sorted keys, no spaces), so equal metadata hashes equally."""
    return json.dumps(dict(metadata), sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def content_hash(doc: Document) -> str:
    """sha256 over the text and canonical metadata; unchanged documents are not re-embedded."""
    # One JSON array keeps the text/metadata boundary unambiguous.
    payload = json.dumps(
        [doc.text, canonical_metadata(doc.metadata)], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def check_table(table: str) -> None:
    if table not in VECTOR_TABLES:  # the table name is spliced into SQL
        raise ValueError(f"unexpected table {table!r}")


def target_rows(target: FloatMatrix | None, count: int) -> npt.NDArray[np.float32] | None:
    if target is None:
        return None
    matrix = np.asarray(target)
    if matrix.ndim != 2 or matrix.shape[0] != count or not np.all(np.isfinite(matrix)):
        raise InvalidArgument(f"dual write needs {count} finite target vectors, got {matrix.shape}")
    return np.ascontiguousarray(matrix, dtype="<f4")
