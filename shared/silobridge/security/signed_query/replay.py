"""The silo's memory of nonces: a signed query is answered once within its validity window."""

from __future__ import annotations

import heapq
import threading

from silobridge.core.errors import InvalidArgument, PermissionDenied, ResourceExhausted

DEFAULT_MAX_AGE_S = 120.0


class ReplayCache:
    """Nonces seen per signer, each kept until its query is older than the window. Thread-safe.

    Entries expire by the time the query was issued, not when it arrived, so a query signed
    slightly in the future is remembered until it would be refused as too old anyway. When the
    cache is full it refuses new queries (fail closed) rather than forgetting nonces early.
    """

    def __init__(self, window_s: float = DEFAULT_MAX_AGE_S, max_entries: int = 1_000_000) -> None:
        if not window_s > 0:
            raise InvalidArgument(f"the replay window must be positive, got {window_s} s")
        if max_entries < 1:
            raise InvalidArgument(f"the replay cache needs room for an entry, got {max_entries}")
        self.window_s = window_s
        self.max_entries = max_entries
        self._window_ms = window_s * 1000.0
        self._lock = threading.Lock()
        self._expiry_ms: dict[tuple[str, bytes], float] = {}
        # Every key in _expiry_ms has exactly one heap entry, so expiring is a pop from the front.
        self._heap: list[tuple[float, str, bytes]] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry_ms)

    def _forget_expired(self, now_ms: int) -> None:
        while self._heap and self._heap[0][0] < now_ms:
            _expiry, signer, nonce = heapq.heappop(self._heap)
            del self._expiry_ms[(signer, nonce)]

    def check_and_remember(self, signer: str, nonce: bytes, issued_ms: int, now_ms: int) -> None:
        """Record ``(signer, nonce)``; raise ``PermissionDenied`` if it was already used."""
        expiry_ms = issued_ms + self._window_ms
        if expiry_ms < now_ms:
            # Remembering it would be pointless; accepting it would leave replays unguarded.
            raise PermissionDenied(
                f"query issued {(now_ms - issued_ms) / 1000:.1f} s ago, beyond the replay "
                f"window of {self.window_s:g} s; sign a fresh query"
            )
        key = (signer, nonce)
        with self._lock:
            self._forget_expired(now_ms)
            if key in self._expiry_ms:
                raise PermissionDenied(
                    f"replayed query: nonce {nonce.hex()} was already used by {signer}"
                )
            if len(self._expiry_ms) >= self.max_entries:
                raise ResourceExhausted(
                    f"too many signed queries in the last {self.window_s:g} s "
                    f"(replay cache holds {self.max_entries}); try again shortly"
                )
            self._expiry_ms[key] = expiry_ms
            heapq.heappush(self._heap, (expiry_ms, signer, nonce))
