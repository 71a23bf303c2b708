"""The silo's memory of nonces: a signed query is answered once, across restarts too."""

from __future__ import annotations

import heapq
import sqlite3
import threading
from pathlib import Path

from silobridge.core.errors import ConfigError, InvalidArgument, PermissionDenied, ResourceExhausted

DEFAULT_MAX_AGE_S = 120.0
# How far ahead of the verifier's clock a query may have been signed (a fast client clock).
# Small on purpose: a query from the future stays valid for its age window plus this much.
DEFAULT_MAX_SKEW_S = 5.0
# Per signer, not in total: one signer filling its share refuses only its own queries.
DEFAULT_MAX_PER_SIGNER = 100_000
# Expired rows are deleted from the nonce file once per this many new nonces.
_PURGE_EVERY = 1024


class NonceStore:
    """Nonces on disk: SQLite in WAL mode with ``synchronous=NORMAL``. Each nonce is in the WAL
    (the OS's page cache) before its query is answered, so a silo killed or restarted still
    refuses the replay; only an OS crash or power loss can lose the newest nonces (no fsync per
    query: it would cost more than the query). Not thread-safe on its own: ``ReplayCache``
    calls it under its lock."""

    def __init__(self, path: Path) -> None:
        try:
            self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS nonces (signer TEXT NOT NULL, nonce BLOB NOT NULL, "
                "expiry_ms REAL NOT NULL, PRIMARY KEY (signer, nonce))"
            )
        except sqlite3.Error as error:
            raise ConfigError(
                f"cannot open the replay nonce file {path}: {error}; the silo refuses to serve "
                "signed queries without it (check the data directory's permissions and disk)"
            ) from None
        self.path = path

    def unexpired(self, now_ms: float) -> list[tuple[str, bytes, float]]:
        rows = self._conn.execute(
            "SELECT signer, nonce, expiry_ms FROM nonces WHERE expiry_ms >= ?", (now_ms,)
        ).fetchall()
        return [(str(signer), bytes(nonce), float(expiry)) for signer, nonce, expiry in rows]

    def add(self, signer: str, nonce: bytes, expiry_ms: float) -> None:
        # REPLACE: an expired row not purged yet may hold the same key.
        self._conn.execute(
            "INSERT OR REPLACE INTO nonces (signer, nonce, expiry_ms) VALUES (?, ?, ?)",
            (signer, nonce, expiry_ms),
        )

    def forget_before(self, now_ms: float) -> None:
        self._conn.execute("DELETE FROM nonces WHERE expiry_ms < ?", (now_ms,))

    def close(self) -> None:
        self._conn.close()


class ReplayCache:
    """Nonces seen per signer, each kept until its query is older than the window. Thread-safe.

    Entries expire by the time the query was issued, not when it arrived, so a query signed
    slightly in the future (the verifier bounds how far) is remembered until it would be refused
    as too old anyway. A signer with ``max_per_signer`` live nonces is refused (fail closed, its
    own queries only) rather than have nonces forgotten early. With a ``store`` every nonce is
    written to disk before it counts as seen, and the unexpired ones are read back at start.
    """

    def __init__(
        self,
        window_s: float = DEFAULT_MAX_AGE_S,
        max_per_signer: int = DEFAULT_MAX_PER_SIGNER,
        *,
        store: NonceStore | None = None,
        now_ms: int = 0,
    ) -> None:
        if not window_s > 0:
            raise InvalidArgument(f"the replay window must be positive, got {window_s} s")
        if max_per_signer < 1:
            raise InvalidArgument(
                f"the replay cache needs room for an entry per signer, got {max_per_signer}"
            )
        self.window_s = window_s
        self.max_per_signer = max_per_signer
        self._window_ms = window_s * 1000.0
        self._lock = threading.Lock()
        self._by_signer: dict[str, dict[bytes, float]] = {}
        # Every remembered nonce has exactly one heap entry, so expiring is a pop from the front.
        self._heap: list[tuple[float, str, bytes]] = []
        self._store = store
        self._added = 0
        if store is not None:
            for signer, nonce, expiry_ms in store.unexpired(now_ms):
                self._by_signer.setdefault(signer, {})[nonce] = expiry_ms
                self._heap.append((expiry_ms, signer, nonce))
            heapq.heapify(self._heap)

    def __len__(self) -> int:
        with self._lock:
            return sum(len(nonces) for nonces in self._by_signer.values())

    def _forget_expired(self, now_ms: int) -> None:
        while self._heap and self._heap[0][0] < now_ms:
            _expiry, signer, nonce = heapq.heappop(self._heap)
            nonces = self._by_signer[signer]
            del nonces[nonce]
            if not nonces:
                del self._by_signer[signer]

    def check_and_remember(self, signer: str, nonce: bytes, issued_ms: int, now_ms: int) -> None:
        """Record ``(signer, nonce)``; raise ``PermissionDenied`` if it was already used."""
        expiry_ms = issued_ms + self._window_ms
        if expiry_ms < now_ms:
            # Remembering it would be pointless; accepting it would leave replays unguarded.
            raise PermissionDenied(
                f"query issued {(now_ms - issued_ms) / 1000:.1f} s ago, beyond the replay "
                f"window of {self.window_s:g} s; sign a fresh query"
            )
        with self._lock:
            self._forget_expired(now_ms)
            nonces = self._by_signer.get(signer, {})
            if nonce in nonces:
                raise PermissionDenied(
                    f"replayed query: nonce {nonce.hex()} was already used by {signer}"
                )
            if len(nonces) >= self.max_per_signer:
                raise ResourceExhausted(
                    f"too many signed queries from {signer} in the last {self.window_s:g} s "
                    f"(this silo remembers at most {self.max_per_signer} per signer); "
                    "try again shortly"
                )
            if self._store is not None:
                # Durable first: a crash right after answering must not forget the nonce.
                self._store.add(signer, nonce, expiry_ms)
                self._added += 1
                if self._added % _PURGE_EVERY == 0:
                    self._store.forget_before(now_ms)
            self._by_signer.setdefault(signer, nonces)[nonce] = expiry_ms
            heapq.heappush(self._heap, (expiry_ms, signer, nonce))

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None
