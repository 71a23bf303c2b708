"""Sending the silo's audit checkpoint heads to its coordinator, which keeps them.

The audit log calls ``HeadAnchor.checkpointed`` (any thread, under the log's lock) with each new
signed checkpoint head; a task on the server's event loop sends the newest one to the
coordinator (``RecordAuditHead``), retrying with back-off while the coordinator is unreachable or
the silo not yet registered. Only the newest head matters for what the coordinator proves (a log
cut back below it), so heads that queue up while the coordinator is away are sent as one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from silobridge.audit.heads import AuditHead
from silobridge.core.errors import SiloBridgeError
from silobridge.silo_agent.config import SiloConfig
from silobridge.silo_agent.registration import coordinator_client

log = logging.getLogger(__name__)

SEND_TIMEOUT_SECONDS = 10.0
INITIAL_BACKOFF_SECONDS = 1.0
MAX_BACKOFF_SECONDS = 60.0
# On shutdown, how long the last head (written by closing the log) may take to reach the
# coordinator before the silo stops anyway; the next start sends it.
FLUSH_SECONDS = 3.0


class HeadAnchor:
    """Construct on the server's event loop, then ``start``; ``close`` flushes the last head."""

    def __init__(self, config: SiloConfig) -> None:
        self.config = config
        self._loop = asyncio.get_running_loop()
        self._latest: AuditHead | None = None
        self._sent: AuditHead | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.recorded = 0  # how many heads the coordinator said it holds, after the last send

    @property
    def recorded_covers(self) -> int:
        """The line that the newest head the coordinator acknowledged covers (0: none yet)."""
        sent = self._sent
        return sent.covers if sent is not None else 0

    def checkpointed(self, head: AuditHead) -> None:
        """The audit log's listener: hand the head to the event loop and return at once."""
        # A closed loop (stopping): the next start sends the newest head.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._offer, head)

    def _offer(self, head: AuditHead) -> None:
        if self._latest is None or head.covers > self._latest.covers:
            self._latest = head
        self._wake.set()

    def start(self) -> None:
        self._task = self._loop.create_task(self._run(), name=f"silo-{self.config.name}-heads")

    async def _run(self) -> None:
        backoff = INITIAL_BACKOFF_SECONDS
        while True:
            await self._wake.wait()
            self._wake.clear()
            if await self._send_latest():
                backoff = INITIAL_BACKOFF_SECONDS
                continue
            self._wake.set()  # still to send: try again after the back-off
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)

    async def _send_latest(self) -> bool:
        head = self._latest
        if head is None or head == self._sent:
            return True
        try:
            async with coordinator_client(self.config) as hub:
                self.recorded = await hub.record_audit_head(head, timeout=SEND_TIMEOUT_SECONDS)
        except SiloBridgeError as err:
            log.warning(
                "audit checkpoint of line %d not recorded at the coordinator yet: %s",
                head.covers,
                err.message,
            )
            return False
        self._sent = head
        return True

    async def close(self) -> None:
        """Stop the sender, then try once more to send the newest head (the log's last)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.wait({self._task})
        try:
            await asyncio.wait_for(self._send_latest(), FLUSH_SECONDS)
        except TimeoutError:
            log.warning("the last audit checkpoint did not reach the coordinator before stopping")
