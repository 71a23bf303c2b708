"""The silos' audit checkpoint heads, kept at the coordinator: evidence outside each silo's host.

A registered silo sends every signed checkpoint of its audit log (``RecordAuditHead``). The book
keeps them per silo and per log key in ``state_dir/audit_heads.sqlite`` (its own file: the
registry's schema does not change for it). A head must verify with the key it names, and within
one key the lines it covers only grow: a silo that sends an older head than one already recorded
(its log was cut back) is refused, and the refusal is audited. The first head of a key pins it;
a new key (a new log) starts a new sequence beside the old one, whose heads stay.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

from silobridge.audit.heads import AuditHead, check_head
from silobridge.core.errors import FailedPrecondition, InvalidArgument

HEADS_FILE = "audit_heads.sqlite"
# A silo checkpoints every 100 lines by default; far more heads than that is a flood.
MAX_HEADS_PER_SILO = 1_000_000
# A listing holds the newest heads only (one reply stays far below the message size limit); the
# newest is what shows a cut-back log.
MAX_LISTED_HEADS = 10_000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_heads (
    silo        TEXT NOT NULL,
    public_key  BLOB NOT NULL,
    covers      INTEGER NOT NULL,
    head        TEXT NOT NULL,
    signature   BLOB NOT NULL,
    recorded_at INTEGER NOT NULL,
    PRIMARY KEY (silo, public_key, covers)
)
"""


class AuditHeadBook:
    """Thread-safe: one connection behind a lock (a head every hundred audit lines is little)."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.Lock()

    @classmethod
    def open(cls, state_dir: Path) -> AuditHeadBook:
        path = Path(state_dir) / HEADS_FILE
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as err:
            raise FailedPrecondition(f"cannot open the audit head book {path}: {err}") from None
        return cls(path, conn)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise FailedPrecondition(f"the audit head book {self.path} is closed")
        return self._conn

    def record(self, silo: str, head: AuditHead) -> int:
        """Keep ``head`` for ``silo``; how many heads the book holds for it afterwards.

        Raises ``InvalidArgument``/``PermissionDenied`` for a malformed or badly signed head and
        ``FailedPrecondition`` for one older than a head already recorded under its key.
        """
        check_head(head)
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                count = self._record_locked(conn, silo, head)
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        return count

    def _record_locked(self, conn: sqlite3.Connection, silo: str, head: AuditHead) -> int:
        latest = conn.execute(
            "SELECT covers, head FROM audit_heads WHERE silo = ? AND public_key = ? "
            "ORDER BY covers DESC LIMIT 1",
            (silo, head.public_key),
        ).fetchone()
        if latest is not None:
            covers, digest = int(latest[0]), str(latest[1])
            if head.covers == covers and head.head == digest:
                return self._count(conn, silo)  # sent again after a lost reply: nothing new
            if head.covers <= covers:
                raise FailedPrecondition(
                    f"silo {silo!r} sent an audit checkpoint of line {head.covers}, but one of "
                    f"line {covers} of the same log was recorded already: its audit log was "
                    "cut back or rewritten; keep it as evidence"
                )
        count = self._count(conn, silo)
        if count >= MAX_HEADS_PER_SILO:
            raise InvalidArgument(
                f"silo {silo!r} has {count} audit heads recorded, the most kept; an operator "
                f"must archive {self.path}"
            )
        conn.execute(
            "INSERT INTO audit_heads VALUES (?, ?, ?, ?, ?, ?)",
            (silo, head.public_key, head.covers, head.head, head.signature, int(time.time())),
        )
        return count + 1

    @staticmethod
    def _count(conn: sqlite3.Connection, silo: str) -> int:
        row = conn.execute("SELECT count(*) FROM audit_heads WHERE silo = ?", (silo,)).fetchone()
        return int(row[0])

    def heads(self, silo: str, limit: int = MAX_LISTED_HEADS) -> list[AuditHead]:
        """The newest ``limit`` heads recorded for ``silo``, oldest first within each key."""
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT covers, head, signature, public_key, recorded_at FROM ("
                    " SELECT * FROM audit_heads WHERE silo = ? ORDER BY recorded_at DESC, "
                    " covers DESC LIMIT ?) ORDER BY public_key, covers",
                    (silo, limit),
                )
                .fetchall()
            )
        return [
            AuditHead(int(covers), str(head), bytes(sig), bytes(key), int(at))
            for covers, head, sig, key, at in rows
        ]
