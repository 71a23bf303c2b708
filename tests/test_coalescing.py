"""``CoalescingSearch``: concurrent queries to one silo share a call under load, each keeps its
own outcome, and a silo that refuses ``SearchMany`` gets single calls (a scripted gateway)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from silobridge.coordinator.config import load_coordinator_config
from silobridge.coordinator.search.coalesce import COALESCE_MAX, CoalescingSearch
from silobridge.core.errors import (
    ConfigError,
    DeadlineExceeded,
    PermissionDenied,
    SiloBridgeError,
)
from silobridge.core.hits import Hit
from silobridge.core.queries import SiloQuery
from silobridge.core.vectors import WireVector


def _query(number: int) -> SiloQuery:
    return SiloQuery(WireVector.of([float(number + 1), 0.0]), k=1)


def _number(query: SiloQuery) -> int:
    return int(query.vector.decode()[0]) - 1


class ScriptedGateway:
    """Answers query n with one hit "n"; single calls wait for ``release`` while it is unset."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.singles: list[int] = []
        self.many: list[list[int]] = []
        self.refuse: set[int] = set()  # these queries are refused (inside SearchMany too)
        self.many_fails: SiloBridgeError | None = None  # the whole SearchMany call fails so

    def _answer(self, query: SiloQuery) -> list[Hit]:
        number = _number(query)
        if number in self.refuse:
            raise PermissionDenied(f"query {number} is refused")
        return [Hit(str(number), 1.0)]

    async def search(
        self, endpoint: str, query: SiloQuery, *, expect: str, timeout: float
    ) -> list[Hit]:
        self.singles.append(_number(query))
        await self.release.wait()
        return self._answer(query)

    async def search_many(
        self, endpoint: str, queries: list[SiloQuery], *, expect: str, timeout: float
    ) -> list[list[Hit] | SiloBridgeError]:
        self.many.append([_number(query) for query in queries])
        if self.many_fails is not None:
            raise self.many_fails
        outcomes: list[list[Hit] | SiloBridgeError] = []
        for query in queries:
            try:
                outcomes.append(self._answer(query))
            except SiloBridgeError as error:
                outcomes.append(error)
        return outcomes


async def _search_all(
    calls: CoalescingSearch, gateway: ScriptedGateway, count: int, timeout: float = 5.0
) -> list[list[Hit] | BaseException]:
    tasks = [
        asyncio.create_task(calls.search("silo:1", _query(n), expect="id", timeout=timeout))
        for n in range(count)
    ]
    await asyncio.sleep(0.01)  # every query has arrived: the first is in flight, the rest wait
    gateway.release.set()
    return list(await asyncio.gather(*tasks, return_exceptions=True))


def test_queries_that_wait_go_in_one_call_and_each_gets_its_own_answer() -> None:
    async def run() -> tuple[ScriptedGateway, CoalescingSearch, list[list[Hit] | BaseException]]:
        gateway = ScriptedGateway()
        calls = CoalescingSearch(gateway, in_flight=1)
        return gateway, calls, await _search_all(calls, gateway, 6)

    gateway, calls, results = asyncio.run(run())
    assert gateway.singles == [0]
    assert gateway.many == [[1, 2, 3, 4, 5]]
    assert calls.coalesced_calls == 1
    assert [r[0].doc_id for r in results if isinstance(r, list)] == [str(n) for n in range(6)]


def test_a_refused_query_ends_alone_in_a_shared_call() -> None:
    async def run() -> list[list[Hit] | BaseException]:
        gateway = ScriptedGateway()
        gateway.refuse = {3}
        return await _search_all(CoalescingSearch(gateway, in_flight=1), gateway, 5)

    results = asyncio.run(run())
    assert isinstance(results[3], PermissionDenied)
    assert all(isinstance(r, list) for i, r in enumerate(results) if i != 3)


def test_a_silo_without_search_many_gets_single_calls_from_then_on() -> None:
    async def run() -> tuple[ScriptedGateway, list[list[Hit] | BaseException]]:
        gateway = ScriptedGateway()
        unimplemented = SiloBridgeError("method not found")
        unimplemented.status_name = "UNIMPLEMENTED"
        gateway.many_fails = unimplemented
        calls = CoalescingSearch(gateway, in_flight=1)
        first = await _search_all(calls, gateway, 4)
        gateway.release.clear()
        second = await _search_all(calls, gateway, 4)
        return gateway, first + second

    gateway, results = asyncio.run(run())
    assert all(isinstance(r, list) for r in results)
    assert len(gateway.many) == 1  # tried once, then never again
    assert sorted(gateway.singles) == sorted([0, 1, 2, 3, 0, 1, 2, 3])


def test_a_failed_shared_call_fails_each_of_its_queries() -> None:
    async def run() -> list[list[Hit] | BaseException]:
        gateway = ScriptedGateway()
        gateway.many_fails = SiloBridgeError("silo unavailable")
        gateway.many_fails.status_name = "UNAVAILABLE"
        return await _search_all(CoalescingSearch(gateway, in_flight=1), gateway, 3)

    results = asyncio.run(run())
    assert isinstance(results[0], list)
    assert all(isinstance(r, SiloBridgeError) for r in results[1:])


def test_a_query_whose_deadline_passed_while_waiting_is_not_sent() -> None:
    async def run() -> tuple[ScriptedGateway, list[list[Hit] | BaseException]]:
        gateway = ScriptedGateway()
        calls = CoalescingSearch(gateway, in_flight=1)
        first = asyncio.create_task(calls.search("silo:1", _query(0), expect="id", timeout=5))
        await asyncio.sleep(0.01)
        late = asyncio.create_task(calls.search("silo:1", _query(1), expect="id", timeout=0.02))
        await asyncio.sleep(0.05)
        gateway.release.set()
        return gateway, list(await asyncio.gather(first, late, return_exceptions=True))

    gateway, results = asyncio.run(run())
    assert isinstance(results[0], list)
    assert isinstance(results[1], DeadlineExceeded)
    assert gateway.many == [] and gateway.singles == [0]


@pytest.mark.parametrize("in_flight", [0, 3])
def test_below_the_limit_every_query_is_its_own_call(in_flight: int) -> None:
    async def run() -> ScriptedGateway:
        gateway = ScriptedGateway()
        await _search_all(CoalescingSearch(gateway, in_flight=in_flight), gateway, 3)
        return gateway

    gateway = asyncio.run(run())
    expected = [0, 1, 2]
    assert gateway.singles == expected and gateway.many == []


def test_a_shared_call_carries_at_most_coalesce_max_queries() -> None:
    async def run() -> ScriptedGateway:
        gateway = ScriptedGateway()
        await _search_all(CoalescingSearch(gateway, in_flight=1), gateway, COALESCE_MAX + 6)
        return gateway

    gateway = asyncio.run(run())
    assert [len(call) for call in gateway.many] == [COALESCE_MAX, 5]


def test_silo_calls_in_flight_is_read_from_the_config_and_never_negative(tmp_path: Path) -> None:
    path = tmp_path / "coordinator.toml"
    path.write_text("[server]\ninsecure = true\nsilo_calls_in_flight = 4\n")
    assert load_coordinator_config(path).server.silo_calls_in_flight == 4
    path.write_text("[server]\ninsecure = true\n")
    assert load_coordinator_config(path).server.silo_calls_in_flight == 2
    path.write_text("[server]\ninsecure = true\nsilo_calls_in_flight = -1\n")
    with pytest.raises(ConfigError, match="silo_calls_in_flight must not be negative"):
        load_coordinator_config(path)
