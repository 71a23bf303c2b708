"""The re-encode journal of a migration: per document, whether its new-space vector is current.

A document is re-encoded when ``migration_vectors`` holds a native row (embedded by the new
model) for its key with its current content hash; until then its row is provisional (its
source vector mapped by the migration's old->new adapter), so the new space covers every
document from the start. Rows are written in durable batches, only while the document still
has the text they were embedded from, so a live write that raced the re-encoder is never
overwritten with a vector of its old text. A crash loses at most the batch being embedded.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from silobridge.core.errors import FailedPrecondition
from silobridge.core.spaces import SpaceDescriptor
from silobridge.silo_agent.store.docstore import DocStore
from silobridge.silo_agent.store.generation import SOURCE, TARGET

FloatMatrix = npt.NDArray[np.float32]

_MISSING = (
    "SELECT d.key, d.text, d.content_hash FROM documents d"
    " LEFT JOIN migration_vectors m ON m.key = d.key"
    " WHERE d.key > ? AND (m.key IS NULL OR m.native = 0 OR m.content_hash != d.content_hash)"
    " ORDER BY d.key LIMIT ?"
)
_DONE = (
    "SELECT COUNT(*) FROM documents d JOIN migration_vectors m"
    " ON m.key = d.key AND m.content_hash = d.content_hash AND m.native = 1"
)


@dataclass(frozen=True)
class PendingDocument:
    """A document still to re-encode: its key, text and the content hash the text has."""

    key: int
    text: str
    content_hash: str


def pending(docstore: DocStore, after_key: int, limit: int) -> list[PendingDocument]:
    """Up to ``limit`` documents after ``after_key`` (by key) that lack a current new vector."""
    with docstore.reading() as conn:
        rows = conn.execute(_MISSING, (after_key, limit)).fetchall()
    return [PendingDocument(int(key), str(text), str(digest)) for key, text, digest in rows]


@dataclass(frozen=True)
class Progress:
    documents: int
    reencoded: int

    @property
    def remaining(self) -> int:
        return self.documents - self.reencoded


def progress(docstore: DocStore) -> Progress:
    """Documents, and those whose new-space vector matches their content, in one snapshot."""
    with docstore.reading() as conn:
        documents = int(conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0])
        return Progress(documents, int(conn.execute(_DONE).fetchone()[0]))


def record(docstore: DocStore, documents: Sequence[PendingDocument], vectors: FloatMatrix) -> int:
    """Store new-space vectors for ``documents`` in one durable transaction; returns how many
    were kept (a document rewritten or deleted since it was read is skipped: the live write
    stored its own vector)."""
    rows = np.ascontiguousarray(vectors, dtype="<f4")
    kept = 0
    with docstore.transaction() as conn:
        version = docstore.bump_version_locked(conn)
        for doc, row in zip(documents, rows, strict=True):
            cursor = conn.execute(
                "INSERT OR REPLACE INTO migration_vectors"
                " (key, content_hash, vector, version, native)"
                " SELECT key, content_hash, ?, ?, 1 FROM documents"
                " WHERE key = ? AND content_hash = ?",
                (row.tobytes(), version, doc.key, doc.content_hash),
            )
            kept += cursor.rowcount
    return kept


def provisional(
    docstore: DocStore, adapt: Callable[[FloatMatrix], FloatMatrix], chunk: int = 2_048
) -> int:
    """Give every document without a new-space row one adapted from its source vector.

    Chunk by chunk, each read and written in one transaction (a live write cannot slip between
    the vector read and its adapted copy); rows already there (dual writes) are kept.
    """
    after, written = -1, 0
    while True:
        with docstore.transaction() as conn:
            rows = conn.execute(
                "SELECT d.key, d.content_hash, d.vector FROM documents d"
                " LEFT JOIN migration_vectors m ON m.key = d.key"
                " WHERE d.key > ? AND m.key IS NULL ORDER BY d.key LIMIT ?",
                (after, chunk),
            ).fetchall()
            if not rows:
                return written
            flat = np.frombuffer(b"".join(row[2] for row in rows), dtype="<f4")
            adapted = np.ascontiguousarray(adapt(flat.reshape(len(rows), -1)), dtype="<f4")
            version = docstore.bump_version_locked(conn)
            conn.executemany(
                "INSERT OR IGNORE INTO migration_vectors"
                " (key, content_hash, vector, version, native) VALUES (?, ?, ?, ?, 0)",
                [
                    (int(key), str(digest), adapted[i].tobytes(), version)
                    for i, (key, digest, _) in enumerate(rows)
                ],
            )
        written += len(rows)
        after = int(rows[-1][0])


def clear(docstore: DocStore) -> None:
    """Forget every new-space vector (a rollback)."""
    with docstore.transaction() as conn:
        conn.execute("DELETE FROM migration_vectors")
        conn.execute("DELETE FROM meta WHERE k = ?", (TARGET.indexed_meta,))
        docstore.bump_version_locked(conn)


def promote(docstore: DocStore, target: SpaceDescriptor, finished_state: str) -> None:
    """Make the new-space vectors the documents' own, in one transaction (``finish``).

    The documents' rows take the new vectors and the versions that wrote them, the store is
    claimed for ``target``'s space, the target index's version becomes the source's, and the
    migration record moves to ``finished_state`` — all or nothing.
    """
    with docstore.transaction() as conn:
        missing = conn.execute(
            "SELECT COUNT(*) FROM documents d LEFT JOIN migration_vectors m ON m.key = d.key"
            " WHERE m.key IS NULL OR m.native = 0 OR m.content_hash != d.content_hash"
        ).fetchone()[0]
        if missing:
            raise FailedPrecondition(
                f"{missing} documents have no current vector in the new space; finish needs "
                "every document re-encoded"
            )
        conn.execute(
            "UPDATE documents SET (vector, version) = "
            "(SELECT m.vector, m.version FROM migration_vectors m WHERE m.key = documents.key)"
        )
        indexed = conn.execute("SELECT v FROM meta WHERE k = ?", (TARGET.indexed_meta,)).fetchone()
        meta = {
            "model_id": target.model_id,
            "dimension": str(target.dimension),
            "fingerprint": target.fingerprint,
            SOURCE.indexed_meta: indexed[0] if indexed else "0",
        }
        for key, value in meta.items():
            _set_meta(conn, key, value)
        record_row = conn.execute("SELECT v FROM meta WHERE k = 'migration'").fetchone()
        if record_row is not None:
            body = json.loads(record_row[0])
            body["state"] = finished_state
            _set_meta(conn, "migration", json.dumps(body, sort_keys=True))
        conn.execute("DELETE FROM migration_vectors")
        conn.execute("DELETE FROM meta WHERE k = ?", (TARGET.indexed_meta,))


def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
        (key, value),
    )
