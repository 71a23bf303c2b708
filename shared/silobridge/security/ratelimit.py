"""Per-identity rate limits: a token bucket per key, bounded in memory, safe across threads.

Each key (a caller's SPIFFE id) owns a bucket of ``burst`` tokens refilled at ``rate_per_second``;
a call spends one token or is refused with ``ResourceExhausted``. Over any window of ``T`` seconds
a key is therefore allowed at most ``burst + rate_per_second * T`` calls.

There is no "unlimited" limiter: a server always has one, so a missing setting can never turn
limits off. Configuration picks the numbers (``DEFAULT_RATE_PER_SECOND``, ``DEFAULT_BURST``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from silobridge.core.errors import ConfigError, ResourceExhausted

DEFAULT_RATE_PER_SECOND = 50.0
DEFAULT_BURST = 100
# Every call of one peer (its TLS identity), before authorization. A coordinator's calls to a
# silo carry every client's queries, so this is far above one asker's budget.
DEFAULT_PEER_RATE_PER_SECOND = 1000.0
DEFAULT_PEER_BURST = 2000
# Callers are certificate holders of one consortium, far fewer than this; the cap only bounds
# memory if something (a bug, a huge consortium) produces many keys.
DEFAULT_MAX_KEYS = 10_000


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per key; ``check`` spends a token or raises ``ResourceExhausted``."""

    def __init__(
        self,
        rate_per_second: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DEFAULT_MAX_KEYS,
    ) -> None:
        if not (math.isfinite(rate_per_second) and rate_per_second > 0):
            raise ConfigError(
                f"rate_per_second must be a positive number, got {rate_per_second!r}; "
                "a limiter cannot be switched off, pick a high rate instead"
            )
        if isinstance(burst, bool) or not isinstance(burst, int) or burst < 1:
            raise ConfigError(f"burst must be a whole number of at least 1, got {burst!r}")
        if max_keys < 1:
            raise ConfigError(f"max_keys must be at least 1, got {max_keys!r}")
        self.rate_per_second = float(rate_per_second)
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        # Least recently used first, so eviction pops from the front.
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        """How many keys are tracked now (at most ``max_keys``)."""
        return len(self._buckets)

    def check(self, key: str, cost: int = 1) -> None:
        """Spend ``cost`` of ``key``'s tokens (one per query: a batch costs its size), or raise
        ``ResourceExhausted`` saying when to retry; all or nothing."""
        if cost < 1:
            raise ConfigError(f"a rate-limited call costs at least 1 token, got {cost}")
        if cost > self.burst:
            raise ResourceExhausted(
                f"{cost} queries in one call exceed the rate limit's burst of {self.burst} for "
                f"{key}; send smaller batches"
            )
        with self._lock:
            now = self._clock()
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = _Bucket(tokens=float(self.burst), updated=now)
                self._buckets[key] = bucket
                if len(self._buckets) > self._max_keys:
                    # The least recently used key has usually refilled already, so forgetting
                    # it loses nothing; only a flood of distinct keys could reset a live bucket.
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
                # A clock that steps backwards (an injected one) must not mint tokens.
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(
                    float(self.burst), bucket.tokens + elapsed * self.rate_per_second
                )
                bucket.updated = max(bucket.updated, now)
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                return
            # Rounded up so the advice is never "retry in 0.0 s".
            wait = math.ceil((cost - bucket.tokens) / self.rate_per_second * 10) / 10
        raise ResourceExhausted(
            f"rate limit of {self.rate_per_second:g}/s (burst {self.burst}) exceeded for {key}; "
            f"retry in {wait:.1f} s"
        )
