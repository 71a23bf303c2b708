"""The coordinator's SQLite schema: its pragmas, its tables, upgrading an older file in place,
and refusing a newer one."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from silobridge.core.errors import FailedPrecondition

# Bumped whenever the tables change; an older coordinator refuses a newer file instead of
# misreading it (PRAGMA user_version, stored in the database header). A file of an older version
# is brought up to this one by the steps in ``_UPGRADES``, in the same transaction as the check.
#   1: the first schema.
#   2: silos.also_serves (the spaces a migrating silo answers in besides its own; JSON list).
#   3: silos.cert_serial, cert_fingerprint (the certificate it registered with),
#      server_serial, server_fingerprint (the one its endpoint presented then), disabled
#      (an admin's reason; empty: enabled): what revocation and `coordinator silo` act on.
SCHEMA_VERSION = 3

_SCHEMA = """
CREATE TABLE silos (
    name           TEXT PRIMARY KEY,
    endpoint       TEXT NOT NULL,
    spiffe_id      TEXT NOT NULL,
    org            TEXT NOT NULL,
    space          TEXT NOT NULL,
    document_count INTEGER NOT NULL,
    registered_at  REAL NOT NULL,
    also_serves    TEXT NOT NULL DEFAULT '[]',
    cert_serial        TEXT NOT NULL DEFAULT '',
    cert_fingerprint   TEXT NOT NULL DEFAULT '',
    server_serial      TEXT NOT NULL DEFAULT '',
    server_fingerprint TEXT NOT NULL DEFAULT '',
    disabled           TEXT NOT NULL DEFAULT ''
);
CREATE TABLE anchor_embeddings (
    silo        TEXT NOT NULL REFERENCES silos(name) ON DELETE CASCADE,
    anchor_set  TEXT NOT NULL,
    version     TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    space       TEXT NOT NULL,
    dim         INTEGER NOT NULL,
    count       INTEGER NOT NULL,
    vectors     BLOB NOT NULL,
    stored_at   REAL NOT NULL,
    PRIMARY KEY (silo, anchor_set, version)
);
CREATE INDEX anchor_embeddings_by_space
    ON anchor_embeddings (anchor_set, version, fingerprint, stored_at);
CREATE TABLE adapters (
    adapter_id         TEXT PRIMARY KEY,
    kind               TEXT NOT NULL,
    source             TEXT NOT NULL,
    target             TEXT NOT NULL,
    anchor_set         TEXT NOT NULL,
    anchor_set_version TEXT NOT NULL,
    anchor_set_sha256  TEXT NOT NULL,
    metrics            TEXT NOT NULL,
    created_at         REAL NOT NULL,
    path               TEXT NOT NULL
);
"""

# The statements that take a file of version ``v`` to ``v + 1``, keyed by ``v``. Each only adds
# (columns with defaults), so every row an older coordinator wrote reads the same afterwards.
_UPGRADES: dict[int, tuple[str, ...]] = {
    1: ("ALTER TABLE silos ADD COLUMN also_serves TEXT NOT NULL DEFAULT '[]'",),
    # Silos registered before version 3 have no certificate on record: only the live check of
    # their endpoint's certificate (and a re-registration) covers them.
    2: (
        "ALTER TABLE silos ADD COLUMN cert_serial TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE silos ADD COLUMN cert_fingerprint TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE silos ADD COLUMN server_serial TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE silos ADD COLUMN server_fingerprint TEXT NOT NULL DEFAULT ''",
        "ALTER TABLE silos ADD COLUMN disabled TEXT NOT NULL DEFAULT ''",
    ),
}


def prepare(conn: sqlite3.Connection, path: Path) -> None:
    """Set the pragmas and create or check the schema."""
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: the WAL is fsynced at every commit, so an acknowledged write survives kill -9.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("BEGIN IMMEDIATE")
        try:
            _create_or_check(conn, path)
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as err:
        raise FailedPrecondition(
            f"{path} is not a usable coordinator state database ({err}); "
            "point state_dir at the coordinator's own directory"
        ) from None


def _create_or_check(conn: sqlite3.Connection, path: Path) -> None:
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version > SCHEMA_VERSION:
        raise FailedPrecondition(
            f"coordinator state {path} has schema version {version}, newer than the "
            f"{SCHEMA_VERSION} this coordinator understands; upgrade silobridge or "
            "point state_dir elsewhere"
        )
    if version == 0:
        for statement in _SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return
    for step in range(version, SCHEMA_VERSION):
        for statement in _UPGRADES[step]:
            conn.execute(statement)
    if version < SCHEMA_VERSION:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
