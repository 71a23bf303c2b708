"""The silo's SQLite docstore: documents, their vectors and the space the store was built in."""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from silobridge.core.documents import Document
from silobridge.core.errors import FailedPrecondition, InvalidArgument
from silobridge.silo_agent.store.rows import (
    Changes,
    DeleteCounts,
    KeyArray,
    StoredDocument,
    UpsertCounts,
    canonical_metadata,
    check_table,
    content_hash,
    target_rows,
)

FloatMatrix = npt.NDArray[np.float32]

# SQLite limits the number of bound parameters per statement; stay well below the old 999 default.
_IN_CHUNK = 500

# Meta key counting committed upserts that changed something; an index records the version it
# was built from, so a stale index is detected even after a crash between upsert and rebuild.
_DATA_VERSION = "data_version"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS documents (
    key          INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id       TEXT UNIQUE NOT NULL,
    text         TEXT,
    metadata     TEXT,
    content_hash TEXT,
    vector       BLOB
);
CREATE TABLE IF NOT EXISTS meta (
    k TEXT PRIMARY KEY,
    v TEXT
);
CREATE TABLE IF NOT EXISTS deletions (
    key     INTEGER PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS migration_vectors (
    key          INTEGER PRIMARY KEY,
    content_hash TEXT NOT NULL,
    vector       BLOB NOT NULL,
    version      INTEGER NOT NULL,
    native       INTEGER NOT NULL DEFAULT 1  -- 0: provisional, the source vector adapted
);
CREATE INDEX IF NOT EXISTS migration_vectors_by_version ON migration_vectors (version);
"""

# Every document row records the data version that last wrote it, and every deletion the version
# that made it: a serving silo applies exactly the changes since the version its index was built
# from, whoever wrote them (a live write, or `silo ingest` in another process).
_VERSION_COLUMN = "ALTER TABLE documents ADD COLUMN version INTEGER NOT NULL DEFAULT 0"
_VERSION_INDEX = "CREATE INDEX IF NOT EXISTS documents_by_version ON documents (version)"


class DocStore:
    """SQLite (WAL, synchronous=FULL) holding documents and vectors; the source of truth.

    A write connection serialised by a lock, and one for the search path's reads (WAL: a read
    need not wait for a write's fsync). Another process (`silo ingest`) may write the file too.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves so a batch is one transaction.
            self._conn = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=30.0
            )
        except sqlite3.Error as exc:
            raise FailedPrecondition(f"cannot open docstore {self.path}: {exc}") from exc
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            # FULL: the WAL is fsynced at every commit, so an acknowledged upsert survives kill -9.
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(_SCHEMA)
            columns = {row[1] for row in self._conn.execute("PRAGMA table_info(documents)")}
            if "version" not in columns:
                self._conn.execute(_VERSION_COLUMN)
            self._conn.execute(_VERSION_INDEX)
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise FailedPrecondition(
                f"{self.path} is not a usable SQLite docstore ({exc}); "
                "point the silo at its own data directory"
            ) from exc
        self._read_lock = threading.Lock()
        self._reader = sqlite3.connect(
            self.path, check_same_thread=False, isolation_level=None, timeout=30.0
        )

    def journal_mode(self) -> str:
        """The connection's journal mode (``wal`` once opened)."""
        with self._lock:
            return str(self._conn.execute("PRAGMA journal_mode").fetchone()[0])

    def count(self) -> int:
        """Number of documents stored."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0])

    def stored_hashes(self, doc_ids: Iterable[str]) -> dict[str, str]:
        """Content hash of each given doc id that is already stored (absent ids are left out)."""
        return self._column_by_id(doc_ids, "content_hash")

    def upsert(
        self, docs: Sequence[Document], vectors: FloatMatrix, target: FloatMatrix | None = None
    ) -> UpsertCounts:
        """Insert new documents and update changed ones, in one durable transaction.

        An updated document keeps its integer key, so an index built earlier still points at it.
        A document whose content hash is unchanged is left as it is (its vector is not rewritten).
        ``target`` (one row per document), while the silo migrates, is each document's vector
        in the new space, written in the same transaction (dual write).
        """
        matrix = np.asarray(vectors)
        if matrix.ndim != 2 or matrix.shape[0] != len(docs):
            raise InvalidArgument(
                f"upsert needs one vector row per document: {len(docs)} documents, "
                f"vectors of shape {matrix.shape}"
            )
        if not np.all(np.isfinite(matrix)):
            raise InvalidArgument("upsert vectors contain NaN or infinity")
        stored_dim = self.get_meta("dimension")
        if len(docs) and stored_dim is not None and int(stored_dim) != matrix.shape[1]:
            raise InvalidArgument(
                f"vectors have dimension {matrix.shape[1]} but this docstore holds "
                f"{stored_dim}-dimensional vectors"
            )
        rows = np.ascontiguousarray(matrix, dtype="<f4")
        second = target_rows(target, len(docs))
        inserted = updated = unchanged = 0
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                version = self._version_locked() + 1
                for position, (doc, row) in enumerate(zip(docs, rows, strict=True)):
                    digest = content_hash(doc)
                    current = self._conn.execute(
                        "SELECT content_hash FROM documents WHERE doc_id = ?", (doc.doc_id,)
                    ).fetchone()
                    if current is not None and current[0] == digest:
                        unchanged += 1
                        continue
                    values = (
                        doc.text,
                        canonical_metadata(doc.metadata),
                        digest,
                        row.tobytes(),
                        version,
                    )
                    if current is None:
                        self._conn.execute(
                            "INSERT INTO documents"
                            " (doc_id, text, metadata, content_hash, vector, version)"
                            " VALUES (?, ?, ?, ?, ?, ?)",
                            (doc.doc_id, *values),
                        )
                        inserted += 1
                    else:
                        self._conn.execute(
                            "UPDATE documents SET text = ?, metadata = ?, content_hash = ?,"
                            " vector = ?, version = ? WHERE doc_id = ?",
                            (*values, doc.doc_id),
                        )
                        updated += 1
                    if second is not None:
                        self._conn.execute(
                            "INSERT OR REPLACE INTO migration_vectors"
                            " (key, content_hash, vector, version)"
                            " SELECT key, ?, ?, ? FROM documents WHERE doc_id = ?",
                            (digest, second[position].tobytes(), version, doc.doc_id),
                        )
                if inserted or updated:
                    self._set_version_locked(version)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        return UpsertCounts(inserted=inserted, updated=updated, unchanged=unchanged)

    def delete(self, doc_ids: Sequence[str]) -> DeleteCounts:
        """Remove documents by id in one durable transaction; absent ids are reported."""
        wanted = list(dict.fromkeys(doc_ids))
        deleted: list[str] = []
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                version = self._version_locked() + 1
                for doc_id in wanted:
                    row = self._conn.execute(
                        "SELECT key FROM documents WHERE doc_id = ?", (doc_id,)
                    ).fetchone()
                    if row is None:
                        continue
                    self._conn.execute("DELETE FROM documents WHERE key = ?", (row[0],))
                    self._conn.execute("DELETE FROM migration_vectors WHERE key = ?", (row[0],))
                    self._conn.execute(
                        "INSERT OR REPLACE INTO deletions (key, version) VALUES (?, ?)",
                        (row[0], version),
                    )
                    deleted.append(doc_id)
                if deleted:
                    self._set_version_locked(version)
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
        found = set(deleted)
        return DeleteCounts(tuple(deleted), tuple(i for i in wanted if i not in found))

    def data_version(self) -> int:
        """Incremented by every write that inserted, updated or deleted a document."""
        return int(self.get_meta(_DATA_VERSION) or 0)

    def changes_since(self, version: int, table: str = "documents") -> Changes:
        """Rows of ``table`` written and keys deleted after ``version``, as one snapshot."""
        check_table(table)
        with self._lock:
            self._conn.execute("BEGIN")
            try:
                now = self._version_locked()
                rows = self._conn.execute(
                    f"SELECT key, vector FROM {table} WHERE version > ? ORDER BY key",  # noqa: S608
                    (version,),
                ).fetchall()
                gone = self._conn.execute(
                    "SELECT key FROM deletions WHERE version > ? ORDER BY key", (version,)
                ).fetchall()
            finally:
                self._conn.execute("COMMIT")
        keys, vectors = self._keyed_vectors(rows)
        deleted = np.fromiter((int(row[0]) for row in gone), dtype=np.int64, count=len(gone))
        return Changes(version=now, keys=keys, vectors=vectors, deleted=deleted)

    def _version_locked(self) -> int:
        row = self._conn.execute("SELECT v FROM meta WHERE k = ?", (_DATA_VERSION,)).fetchone()
        return 0 if row is None else int(row[0])

    def _set_version_locked(self, version: int) -> None:
        self._conn.execute(
            "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
            (_DATA_VERSION, str(version)),
        )

    def all_vectors(self, table: str = "documents") -> tuple[KeyArray, FloatMatrix]:
        """Every key and vector of ``table``, ordered by key: what an index is rebuilt from."""
        check_table(table)
        with self._lock:
            rows = self._conn.execute(
                f"SELECT key, vector FROM {table} ORDER BY key"  # noqa: S608
            ).fetchall()
        return self._keyed_vectors(rows)

    def _keyed_vectors(self, rows: Sequence[tuple[Any, ...]]) -> tuple[KeyArray, FloatMatrix]:
        if not rows:
            dim = int(self.get_meta("dimension") or 0)
            return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
        keys = np.fromiter((int(key) for key, _ in rows), dtype=np.int64, count=len(rows))
        width = len(rows[0][1])
        if any(len(blob) != width for _, blob in rows) or width % 4:
            raise FailedPrecondition(
                f"docstore {self.path} holds vectors of differing sizes; it is damaged. "
                "Re-ingest the corpus into a new data directory."
            )
        flat = np.frombuffer(b"".join(blob for _, blob in rows), dtype="<f4")
        return keys, flat.reshape(len(rows), width // 4).astype(np.float32)

    def fetch(self, keys: Iterable[int]) -> dict[int, StoredDocument]:
        """The documents with the given integer keys (keys not stored are left out)."""
        wanted = list(dict.fromkeys(int(key) for key in keys))
        found: dict[int, StoredDocument] = {}
        with self._read_lock:
            for start in range(0, len(wanted), _IN_CHUNK):
                chunk = wanted[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._reader.execute(
                    f"SELECT key, doc_id, text, metadata FROM documents WHERE key IN ({marks})",  # noqa: S608
                    chunk,
                ).fetchall()
                for key, doc_id, text, metadata in rows:
                    found[int(key)] = StoredDocument(
                        key=int(key),
                        doc_id=str(doc_id),
                        text=str(text),
                        metadata=json.loads(metadata) if metadata else {},
                    )
        return found

    def sample_texts(self, count: int) -> list[str]:
        """Up to ``count`` texts spread evenly over the store (every n-th by key), in key order."""
        with self._lock:
            total, low, high = self._conn.execute(
                "SELECT COUNT(*), MIN(key), MAX(key) FROM documents"
            ).fetchone()
            if not total:
                return []
            # Rounded up, so the sample reaches the last documents instead of stopping early.
            step = max(1, -(-(int(high) - int(low) + 1) // max(count, 1)))
            rows = self._conn.execute(
                "SELECT text FROM documents WHERE (key - ?) % ? = 0 ORDER BY key LIMIT ?",
                (int(low), step, count),
            ).fetchall()
        return [str(row[0]) for row in rows]

    def texts(self, doc_ids: Iterable[str]) -> dict[str, str]:
        """The text of each given doc id that is stored (absent ids are left out)."""
        return self._column_by_id(doc_ids, "text")

    def _column_by_id(self, doc_ids: Iterable[str], column: str) -> dict[str, str]:
        if column not in {"content_hash", "text"}:  # the column name is spliced into SQL below
            raise ValueError(f"unexpected column {column!r}")
        ids = list(dict.fromkeys(doc_ids))
        found: dict[str, str] = {}
        with self._lock:
            for start in range(0, len(ids), _IN_CHUNK):
                chunk = ids[start : start + _IN_CHUNK]
                marks = ",".join("?" * len(chunk))
                rows = self._conn.execute(
                    f"SELECT doc_id, {column} FROM documents WHERE doc_id IN ({marks})",  # noqa: S608
                    chunk,
                ).fetchall()
                found.update((str(doc_id), str(value)) for doc_id, value in rows)
        return found

    def get_meta(self, key: str) -> str | None:
        """A value from the meta table, or None."""
        with self._lock:
            row = self._conn.execute("SELECT v FROM meta WHERE k = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        """Write one meta value (durably)."""
        with self._lock:
            self._conn.execute(
                "INSERT INTO meta (k, v) VALUES (?, ?) ON CONFLICT(k) DO UPDATE SET v = excluded.v",
                (key, value),
            )

    def delete_meta(self, key: str) -> None:
        """Remove one meta value (durably)."""
        with self._lock:
            self._conn.execute("DELETE FROM meta WHERE k = ?", (key,))

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one durable write transaction (for the migration's tables)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise

    def bump_version_locked(self, conn: sqlite3.Connection) -> int:
        """Inside ``transaction``: the next data version, recorded (every reader refreshes)."""
        version = self._version_locked() + 1
        self._set_version_locked(version)
        return version

    @contextlib.contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A connection of its own inside one read transaction (one consistent snapshot): a
        long read (a migration's progress) holds up neither writes nor the search path."""
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=30.0)
        try:
            conn.execute("BEGIN")
            yield conn
            conn.execute("COMMIT")
        finally:
            conn.close()

    def close(self) -> None:
        """Close the connections (idempotent)."""
        with self._lock, self._read_lock:
            self._conn.close()
            self._reader.close()
