"""Searches to silos, coalesced under load: concurrent queries to one silo share one call.

Up to ``[server] silo_calls_in_flight`` Search calls run to a silo at once. A query that arrives
while that many are in flight waits; when one ends, every query waiting for that silo (at most
``COALESCE_MAX``) goes in one ``SearchMany`` call. At low load nothing waits and nothing changes;
under load a silo receives a few calls carrying many queries instead of many calls, which is
where the CPU went (the per-call cost of gRPC on both sides, measured at ~1 ms per hop).

Nothing about a query changes on the way: each keeps its own signature, and the silo admits,
answers and audits it exactly as if it had come alone; a refusal ends only its own query. A silo
that does not know ``SearchMany`` (older) gets the same queries as single calls from then on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Protocol

from silobridge.core.errors import DeadlineExceeded, SiloBridgeError
from silobridge.core.hits import Hit
from silobridge.core.queries import SiloQuery

log = logging.getLogger(__name__)

# Queries in one coalesced call: below every silo's default [limits] max_batch (256), and a
# call this size is already a few tens of milliseconds of one silo's event loop.
COALESCE_MAX = 32
# A silo that answers SearchMany with these codes gets single calls from then on.
SINGLE_CALLS_ONLY = frozenset({"UNIMPLEMENTED", "RESOURCE_EXHAUSTED"})


class SiloSearches(Protocol):
    """What coalescing needs of a ``SiloGateway``: its two ways to send queries to a silo."""

    async def search(
        self, endpoint: str, query: SiloQuery, *, expect: str, timeout: float
    ) -> list[Hit]: ...

    async def search_many(
        self, endpoint: str, queries: list[SiloQuery], *, expect: str, timeout: float
    ) -> list[list[Hit] | SiloBridgeError]: ...


@dataclasses.dataclass
class _Waiting:
    query: SiloQuery
    deadline: float  # time.monotonic()
    answer: asyncio.Future[list[Hit]]


@dataclasses.dataclass
class _Lane:
    """One silo (endpoint and the identity it must hold): its calls in flight, its queue."""

    endpoint: str
    expect: str
    busy: int = 0
    waiting: list[_Waiting] = dataclasses.field(default_factory=list)
    many: bool = True  # whether the silo takes SearchMany


class CoalescingSearch:
    """``search`` as ``SiloGateway.search``, coalescing concurrent queries to a silo."""

    def __init__(self, gateway: SiloSearches, *, in_flight: int) -> None:
        self.gateway = gateway
        self.in_flight = in_flight  # 0: never coalesce
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.coalesced_calls = 0  # SearchMany calls sent: an operator metric, and for tests
        self.coalesced_queries = 0  # the queries those calls carried

    async def search(
        self, endpoint: str, query: SiloQuery, *, expect: str, timeout: float
    ) -> list[Hit]:
        """The hits of one query; raises what ``SiloGateway.search`` raises for it."""
        if self.in_flight <= 0:
            return await self.gateway.search(endpoint, query, expect=expect, timeout=timeout)
        lane = self._lanes.get((endpoint, expect))
        if lane is None:
            lane = self._lanes[(endpoint, expect)] = _Lane(endpoint, expect)
        if lane.busy < self.in_flight and not lane.waiting:
            lane.busy += 1
            try:
                return await self.gateway.search(endpoint, query, expect=expect, timeout=timeout)
            finally:
                lane.busy -= 1
                self._drain(lane)
        answer: asyncio.Future[list[Hit]] = asyncio.get_running_loop().create_future()
        lane.waiting.append(_Waiting(query, time.monotonic() + timeout, answer))
        # Cancelled by the caller's own deadline: the future is then done, and skipped.
        return await answer

    def _drain(self, lane: _Lane) -> None:
        """Send what waits for ``lane`` while it has calls to spare."""
        while lane.busy < self.in_flight and lane.waiting:
            now = time.monotonic()
            taken: list[_Waiting] = []
            while lane.waiting and len(taken) < COALESCE_MAX:
                waiting = lane.waiting.pop(0)
                if waiting.answer.done():
                    continue  # its caller gave up
                if waiting.deadline <= now:
                    waiting.answer.set_exception(DeadlineExceeded("no time left in the deadline"))
                    continue
                taken.append(waiting)
            if not taken:
                continue
            lane.busy += 1
            task = asyncio.get_running_loop().create_task(self._send(lane, taken))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, lane: _Lane, taken: list[_Waiting]) -> None:
        try:
            if len(taken) == 1 or not lane.many:
                await asyncio.gather(*(self._single(lane, waiting) for waiting in taken))
            else:
                await self._many(lane, taken)
        finally:
            lane.busy -= 1
            self._drain(lane)

    async def _single(self, lane: _Lane, waiting: _Waiting) -> None:
        timeout = waiting.deadline - time.monotonic()
        try:
            hits = await self.gateway.search(
                lane.endpoint, waiting.query, expect=lane.expect, timeout=timeout
            )
        except Exception as error:
            _settle(waiting, error)
        else:
            _settle(waiting, hits)

    async def _many(self, lane: _Lane, taken: list[_Waiting]) -> None:
        timeout = max(waiting.deadline for waiting in taken) - time.monotonic()
        self.coalesced_calls += 1
        self.coalesced_queries += len(taken)
        try:
            outcomes = await self.gateway.search_many(
                lane.endpoint, [w.query for w in taken], expect=lane.expect, timeout=timeout
            )
        except SiloBridgeError as error:
            if error.status_name not in SINGLE_CALLS_ONLY:
                for waiting in taken:
                    _settle(waiting, error)
                return
            log.info(
                "silo at %s refused SearchMany (%s); it gets single calls from now on",
                lane.endpoint,
                error.status_name,
            )
            lane.many = False
            await asyncio.gather(*(self._single(lane, waiting) for waiting in taken))
            return
        except Exception as error:
            for waiting in taken:
                _settle(waiting, error)
            return
        for waiting, outcome in zip(taken, outcomes, strict=True):
            _settle(waiting, outcome)

    async def close(self) -> None:
        """Cancel the coalesced calls still running (at shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


def _settle(waiting: _Waiting, outcome: list[Hit] | BaseException) -> None:
    if waiting.answer.done():
        return  # its caller gave up (deadline): nobody to tell
    if isinstance(outcome, BaseException):
        waiting.answer.set_exception(outcome)
    else:
        waiting.answer.set_result(outcome)
