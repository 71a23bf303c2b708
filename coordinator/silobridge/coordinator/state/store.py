"""The coordinator's durable state: registered silos, anchor embeddings and adapter records.

``state_dir/state.sqlite`` (WAL, synchronous=FULL) holds the tables; ``state_dir/adapters/`` holds
the signed artifact directories the adapter records point at. Every write is one transaction, so
a write that returned survives ``kill -9`` and a crash never leaves half of one.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from silobridge.coordinator.state.records import (
    SELECT_ADAPTERS,
    SELECT_SILOS,
    AdapterRecord,
    SiloRecord,
    adapter_from_row,
    adapter_to_row,
    silo_from_row,
    silo_to_row,
    space_to_json,
    spaces_to_json,
)
from silobridge.coordinator.state.schema import prepare
from silobridge.core.errors import FailedPrecondition, InvalidArgument, NotFound
from silobridge.core.spaces import SpaceDescriptor

FloatMatrix = npt.NDArray[np.float32]

STATE_FILE = "state.sqlite"
ADAPTERS_DIR = "adapters"

T = TypeVar("T")


class CoordinatorState:
    """SQLite-backed state shared by the server's threads; one connection behind a lock.

    Adapter training runs in a worker thread while queries read, so every statement takes the
    lock; SQLite work here is small (a few rows, or one anchor matrix), so the lock is brief.
    """

    def __init__(self, state_dir: Path, conn: sqlite3.Connection) -> None:
        self.state_dir = state_dir
        self.adapters_dir = state_dir / ADAPTERS_DIR
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.Lock()
        # Silo and adapter lists are read on every federated query and change rarely. This
        # process is the only writer of its state directory, so they are cached until the next
        # write; ``_generation`` keeps a read that raced a write from caching stale rows.
        self._generation = 0
        self._cache: dict[str, list[Any]] = {}

    @classmethod
    def open(cls, state_dir: Path) -> CoordinatorState:
        """Open (creating if needed) the state under ``state_dir``."""
        state_dir = Path(state_dir)
        path = state_dir / STATE_FILE
        try:
            (state_dir / ADAPTERS_DIR).mkdir(parents=True, exist_ok=True)
            # isolation_level=None: transactions are explicit, one per write.
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        except (OSError, sqlite3.Error) as err:
            raise FailedPrecondition(f"cannot open coordinator state {path}: {err}") from None
        try:
            prepare(conn, path)
        except BaseException:
            conn.close()
            raise
        return cls(state_dir, conn)

    def close(self) -> None:
        """Close the database; later calls raise ``FailedPrecondition``."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> CoordinatorState:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- silos ----------------------------------------------------------------------------

    def upsert_silo(self, record: SiloRecord) -> None:
        """Register ``record``, replacing any silo of the same name."""
        if record.document_count < 0:
            raise InvalidArgument(
                f"silo {record.name!r} reports {record.document_count} documents; "
                "a count cannot be negative"
            )
        with self._write() as conn:
            # ON CONFLICT ... DO UPDATE, not INSERT OR REPLACE: REPLACE deletes the row first,
            # and the cascade would drop the silo's stored anchor embeddings with it.
            # ``disabled`` is not updated: registering again must not undo an admin's decision.
            conn.execute(
                "INSERT INTO silos (name, endpoint, spiffe_id, org, space, document_count, "
                "registered_at, also_serves, cert_serial, cert_fingerprint, server_serial, "
                "server_fingerprint, disabled) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET endpoint=excluded.endpoint, "
                "spiffe_id=excluded.spiffe_id, org=excluded.org, space=excluded.space, "
                "document_count=excluded.document_count, registered_at=excluded.registered_at, "
                "also_serves=excluded.also_serves, cert_serial=excluded.cert_serial, "
                "cert_fingerprint=excluded.cert_fingerprint, "
                "server_serial=excluded.server_serial, "
                "server_fingerprint=excluded.server_fingerprint",
                silo_to_row(record),
            )

    def set_silo_disabled(self, name: str, reason: str) -> SiloRecord:
        """Disable silo ``name`` with ``reason`` (``""``: enable it again); the record after."""
        with self._write() as conn:
            cursor = conn.execute("UPDATE silos SET disabled = ? WHERE name = ?", (reason, name))
            if cursor.rowcount == 0:
                raise NotFound(f"no silo named {name!r} is registered; see `silobridge silos`")
        return self.silo(name)

    def remove_silo(self, name: str) -> None:
        """Forget silo ``name`` and the anchor embeddings it sent; it must register again."""
        with self._write() as conn:
            # The foreign key's ON DELETE CASCADE drops its anchor embeddings with it.
            cursor = conn.execute("DELETE FROM silos WHERE name = ?", (name,))
            if cursor.rowcount == 0:
                raise NotFound(f"no silo named {name!r} is registered; see `silobridge silos`")

    def update_also_serves(
        self, name: str, space: SpaceDescriptor, also_serves: Sequence[SpaceDescriptor]
    ) -> bool:
        """Set the spaces silo ``name`` also serves, if it is still registered in ``space``.

        A probe's answer must not undo a registration that happened while it was in flight, so
        nothing changes (and ``False`` comes back) unless the stored space is still ``space``.
        """
        with self._write() as conn:
            cursor = conn.execute(
                "UPDATE silos SET also_serves = ? WHERE name = ? AND space = ?",
                (spaces_to_json(also_serves), name, space_to_json(space)),
            )
            return cursor.rowcount > 0

    def silos(self) -> list[SiloRecord]:
        """Every registered silo, sorted by name."""
        return self._cached(
            "silos",
            lambda: [silo_from_row(r) for r in self._read(SELECT_SILOS + " ORDER BY name", ())],
        )

    def silo(self, name: str) -> SiloRecord:
        """The silo called ``name``; ``NotFound`` lists the registered ones."""
        rows = self._read(SELECT_SILOS + " WHERE name = ?", (name,))
        if not rows:
            known = [row[0] for row in self._read("SELECT name FROM silos ORDER BY name", ())]
            listed = ", ".join(known) if known else "none yet"
            raise NotFound(f"no silo named {name!r} is registered (registered: {listed})")
        return silo_from_row(rows[0])

    # --- anchor embeddings ----------------------------------------------------------------

    def store_anchor_embeddings(
        self, silo: str, anchor_set: str, version: str, space: SpaceDescriptor, vectors: FloatMatrix
    ) -> None:
        """Keep ``silo``'s embeddings of one anchor-set version, replacing what it sent before."""
        matrix = np.asarray(vectors)
        if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] != space.dimension:
            raise InvalidArgument(
                f"anchor embeddings from silo {silo!r} have shape {matrix.shape}; expected "
                f"(count >= 1, {space.dimension}) for space {space.space_id!r}"
            )
        if not np.all(np.isfinite(matrix)):
            raise InvalidArgument(
                f"anchor embeddings from silo {silo!r} for {anchor_set} {version} hold "
                "non-finite values (NaN or infinity)"
            )
        blob = np.ascontiguousarray(matrix, dtype="<f4").tobytes()
        with self._write() as conn:
            if conn.execute("SELECT 1 FROM silos WHERE name = ?", (silo,)).fetchone() is None:
                raise NotFound(
                    f"silo {silo!r} is not registered; register it before sending anchor embeddings"
                )
            conn.execute(
                "INSERT OR REPLACE INTO anchor_embeddings (silo, anchor_set, version, "
                "fingerprint, space, dim, count, vectors, stored_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    silo,
                    anchor_set,
                    version,
                    space.fingerprint,
                    space_to_json(space),
                    int(matrix.shape[1]),
                    int(matrix.shape[0]),
                    blob,
                    time.time(),
                ),
            )

    def anchor_embeddings(
        self, anchor_set: str, version: str, fingerprint: str, *, silo: str
    ) -> FloatMatrix | None:
        """The embeddings of this anchor-set version that ``silo`` sent in space ``fingerprint``.

        Kept per silo, never shared between silos of the same model: one silo's submission must
        not become another's training data (a silo can send whatever it likes about its own
        model). ``None`` when ``silo`` has not sent them in that space.
        """
        rows = self._read(
            "SELECT silo, dim, count, vectors FROM anchor_embeddings "
            "WHERE silo = ? AND anchor_set = ? AND version = ? AND fingerprint = ?",
            (silo, anchor_set, version, fingerprint),
        )
        if not rows:
            return None
        silo, dim, count, blob = rows[0]
        if len(blob) != int(dim) * int(count) * 4:
            raise FailedPrecondition(
                f"stored anchor embeddings of {anchor_set} {version} from silo {silo!r} are "
                f"corrupt ({len(blob)} bytes for {count} x {dim} float32); ask the silo to "
                "push its anchor embeddings again"
            )
        flat = np.frombuffer(blob, dtype="<f4")
        return flat.reshape(int(count), int(dim)).astype(np.float32)

    # --- adapters -------------------------------------------------------------------------

    def add_adapter(self, record: AdapterRecord) -> None:
        """Record an adapter, replacing any record with the same ``adapter_id``."""
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO adapters (adapter_id, kind, source, target, anchor_set, "
                "anchor_set_version, anchor_set_sha256, metrics, created_at, path) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                adapter_to_row(record, self.state_dir),
            )

    def adapters(self) -> list[AdapterRecord]:
        """Every adapter record, newest first."""
        sql = SELECT_ADAPTERS + " ORDER BY created_at DESC, adapter_id"
        return self._cached(
            "adapters",
            lambda: [adapter_from_row(row, self.state_dir) for row in self._read(sql, ())],
        )

    def adapter_for(self, source_space_id: str, target_space_id: str) -> AdapterRecord | None:
        """The newest adapter from ``source_space_id`` to ``target_space_id``, if any."""
        # Adapters are few (one per space pair and anchor set), so filtering here is cheap.
        for record in self.adapters():
            if (record.source.space_id, record.target.space_id) == (
                source_space_id,
                target_space_id,
            ):
                return record
        return None

    # --- internals ------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise FailedPrecondition(f"coordinator state {self.state_dir} is closed")
        return self._conn

    def _cached(self, key: str, load: Callable[[], list[T]]) -> list[T]:
        with self._lock:
            self._connection()  # a closed state refuses use, cached or not
            generation, hit = self._generation, self._cache.get(key)
        if hit is None:
            hit = load()
            with self._lock:
                if self._generation == generation:
                    self._cache[key] = hit
        return list(hit)

    def _read(self, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._connection().execute(sql, params).fetchall())

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            conn = self._connection()
            self._generation += 1
            self._cache.clear()
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                # SQLite may already have rolled back (e.g. disk full); a second ROLLBACK would
                # hide the real error behind "no transaction is active".
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
