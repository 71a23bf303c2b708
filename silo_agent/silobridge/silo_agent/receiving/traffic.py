"""The traffic pool: translated queries a silo has answered, kept (opt-in) as a hubness reference.

Translated queries are the best reference for hubness correction (they are what the silo is
asked), but they are the callers' queries: a vector can be inverted. So the pool is off unless
``[receiving] traffic_pool`` sets its size; it lives in memory only (gone at restart), each entry
is dropped after ``traffic_lifetime_s``, and one signer holds at most ``traffic_max_share`` of
it, so no single caller can fill (or steer) the reference. What is kept is the vector as the
silo translated it, in its own space, never text.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

FloatVector = npt.NDArray[np.float32]


@dataclass
class _Entry:
    at: float
    signer: str
    vector: FloatVector


@dataclass
class TrafficPool:
    """At most ``capacity`` vectors, a signer at most ``max_share`` of them, for ``lifetime_s``."""

    capacity: int
    max_share: float
    lifetime_s: float
    clock: Callable[[], float] = time.monotonic
    _entries: deque[_Entry] = field(default_factory=deque)
    _per_signer: Counter[str] = field(default_factory=Counter)
    _added: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def per_signer(self) -> int:
        return max(1, math.floor(self.capacity * self.max_share))

    def add(self, signer: str, vector: FloatVector) -> bool:
        """Keep ``vector``; False when its signer already holds its share (nothing kept)."""
        with self._lock:
            self._expire()
            if self._per_signer[signer] >= self.per_signer:
                return False
            if len(self._entries) >= self.capacity:
                self._drop_oldest()
            self._entries.append(_Entry(self.clock(), signer, np.array(vector, dtype=np.float32)))
            self._per_signer[signer] += 1
            self._added += 1
            return True

    @property
    def added(self) -> int:
        """Vectors kept since the start (a correction is rebuilt as this grows)."""
        return self._added

    def __len__(self) -> int:
        with self._lock:
            self._expire()
            return len(self._entries)

    def snapshot(self) -> npt.NDArray[np.float32]:
        with self._lock:
            self._expire()
            if not self._entries:
                return np.zeros((0, 0), dtype=np.float32)
            return np.stack([entry.vector for entry in self._entries])

    def _expire(self) -> None:
        horizon = self.clock() - self.lifetime_s
        while self._entries and self._entries[0].at < horizon:
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        entry = self._entries.popleft()
        self._per_signer[entry.signer] -= 1
        if self._per_signer[entry.signer] <= 0:
            del self._per_signer[entry.signer]


class TrafficPools:
    """One pool per (source space, the silo's space it was translated into): ``traffic_key``."""

    def __init__(self, capacity: int, max_share: float, lifetime_s: float) -> None:
        self.capacity = capacity
        self.max_share = max_share
        self.lifetime_s = lifetime_s
        self._pools: OrderedDict[str, TrafficPool] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.capacity > 0

    def pool(self, key: str) -> TrafficPool:
        with self._lock:
            found = self._pools.get(key)
            if found is None:
                found = TrafficPool(self.capacity, self.max_share, self.lifetime_s)
                self._pools[key] = found
            return found

    def get(self, key: str) -> TrafficPool | None:
        with self._lock:
            return self._pools.get(key)
