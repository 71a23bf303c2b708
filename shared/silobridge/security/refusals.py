"""Summarised refusal lines: a flood of identical refusals becomes one audit line with a count.

The first refusal of a (peer, RPC, reason) is written at once. Identical ones within the next
``interval`` seconds are only counted; when the interval ends (or at ``close``) one line says how
many there were (``repeated``) and over how long. A refusal flood therefore adds a bounded number
of lines per interval whatever its rate, every refusal is still accounted for, and every line is
an ordinary event of the hash-chained log.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from silobridge.core.errors import ConfigError, SiloBridgeError

log = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 10.0
# Distinct (peer, RPC, reason) keys held at once; beyond it the oldest is written out early.
DEFAULT_MAX_KEYS = 10_000

Event = dict[str, object]
SummaryKey = tuple[tuple[str, str], ...]


@dataclass
class _Window:
    event: Event
    opened: float
    repeated: int = 0


class RefusalSummary:
    """Writes refusal events through ``write``, collapsing repeats (thread-safe)."""

    def __init__(
        self,
        write: Callable[[Mapping[str, object]], None],
        *,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        if not interval > 0:
            raise ConfigError(f"the refusal summary interval must be positive, got {interval!r}")
        self._write = write
        self._interval = interval
        self._max_keys = max_keys
        self._clock = clock
        self._windows: OrderedDict[SummaryKey, _Window] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(
                target=self._flush_periodically, name="audit-refusals", daemon=True
            )
            self._thread.start()

    def record(self, event: Mapping[str, object]) -> None:
        """Write ``event`` now if it starts a window, else count it in the open window."""
        key: SummaryKey = tuple(sorted((name, repr(value)) for name, value in event.items()))
        with self._lock:
            now = self._clock()
            self._flush_due_locked(now)
            window = self._windows.get(key)
            if window is not None:
                window.repeated += 1
                return
            self._windows[key] = _Window(dict(event), now)
            while len(self._windows) > self._max_keys:
                _old_key, oldest = self._windows.popitem(last=False)
                self._summarise_locked(oldest, now)
            self._write(event)

    def flush(self, *, everything: bool = False) -> None:
        """Write the summaries of windows that have ended (``everything``: of all of them)."""
        with self._lock:
            now = self._clock()
            if everything:
                windows, self._windows = list(self._windows.values()), OrderedDict()
                for window in windows:
                    self._summarise_locked(window, now)
            else:
                self._flush_due_locked(now)

    def close(self) -> None:
        """Stop the timer and write every pending summary."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self.flush(everything=True)

    def _flush_due_locked(self, now: float) -> None:
        # Windows are opened in order, so the ended ones are at the front.
        while self._windows:
            key, window = next(iter(self._windows.items()))
            if now - window.opened < self._interval:
                return
            del self._windows[key]
            if window.repeated:
                self._summarise_locked(window, now)
                # The flood goes on: keep counting into a new window rather than writing the
                # next refusal in full again.
                self._windows[key] = _Window(window.event, now)

    def _summarise_locked(self, window: _Window, now: float) -> None:
        if not window.repeated:
            return
        summary = {
            **window.event,
            "repeated": window.repeated,
            "window_seconds": round(now - window.opened, 3),
        }
        self._write(summary)

    def _flush_periodically(self) -> None:
        while not self._stop.wait(self._interval / 2):
            try:
                self.flush()
            except SiloBridgeError as err:  # a closed or broken log: nothing more to write
                log.error("could not write refusal summaries: %s", err.message)
                return
