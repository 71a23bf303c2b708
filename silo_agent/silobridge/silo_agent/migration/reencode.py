"""The background re-encode: batch after batch of documents embedded with the new model.

It runs in its own thread and takes only its share of the CPU: after a batch that took ``t``
seconds it sleeps ``t * (1 - share) / share``. Each batch is durable before the next one is
read (``store/journal``), so a stop, a pause or ``kill -9`` loses at most one batch, and the
next start picks up where the journal says.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from silobridge.embedding.embedders import Embedder
from silobridge.silo_agent.store import journal
from silobridge.silo_agent.store.data import SiloData

log = logging.getLogger(__name__)
# The rate is averaged over this many seconds of recent wall time (throttle sleeps included).
RATE_WINDOW_S = 30.0
RETRY_S = 5.0


@dataclass
class Progress:
    done: int = 0  # documents re-encoded by this run
    rate: float = 0.0  # documents per wall-clock second, recent
    finished: bool = False
    error: str = ""


class Reencoder:
    """One background re-encode run; ``stop`` ends it after the batch in hand."""

    def __init__(
        self,
        data: SiloData,
        embedder: Embedder,
        cpu_share: float,
        *,
        batch_size: int,
        after_batch: Callable[[], object],
    ) -> None:
        self.data = data
        self.embedder = embedder
        self.cpu_share = cpu_share
        self.batch_size = batch_size
        self.after_batch = after_batch
        self.progress = Progress()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="silo-reencode", daemon=True)
        self._window: list[tuple[float, int]] = []

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 60.0) -> None:
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        after = -1
        while not self._stop.is_set():
            try:
                batch = journal.pending(self.data.docstore, after, self.batch_size)
                if not batch:
                    if after == -1:  # a whole pass found nothing: done
                        self.progress.finished = True
                        log.info("re-encode finished")
                        return
                    after = -1  # once more from the start: writes may have landed behind us
                    continue
                started = time.perf_counter()
                vectors = self.embedder.embed(
                    [doc.text for doc in batch], batch_size=self.batch_size
                )
                kept = journal.record(self.data.docstore, batch, vectors)
                self.data.refresh()
                self.after_batch()
                after = batch[-1].key
                busy = time.perf_counter() - started
                self._account(kept)
                self._stop.wait(busy * (1.0 - self.cpu_share) / self.cpu_share)
            except Exception as error:  # a background thread: say why, retry later
                log.exception("re-encode batch failed; retrying in %.0f s", RETRY_S)
                self.progress.error = str(error)
                self._stop.wait(RETRY_S)

    def _account(self, kept: int) -> None:
        now = time.monotonic()
        self.progress.done += kept
        self._window.append((now, kept))
        self._window = [(t, n) for t, n in self._window if now - t <= RATE_WINDOW_S]
        span = now - self._window[0][0] if len(self._window) > 1 else 0.0
        if span > 0:
            self.progress.rate = sum(n for _, n in self._window[1:]) / span
        self.progress.error = ""
