"""Closed and open load loops on asyncio around one query call.

A call takes the query's sequence number and returns whether the answer was complete (False: a
partial answer); an exception is an error. Closed loop: ``concurrency`` workers, each sends its
next query when the last one is answered. Open loop: queries are sent on a schedule (Poisson or
fixed interval) whatever the answers do, and each latency is measured from the *scheduled* send
time, so a server that falls behind shows it (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from silobridge.loadgen.stats import Outcome

Call = Callable[[int], Awaitable[bool]]


@dataclass
class _Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    partial: int = 0
    first_error: str = ""
    sent: int = 0

    async def one(self, call: Call, number: int, since: float, record: bool) -> None:
        self.sent += record
        try:
            complete = await call(number)
        except Exception as exc:  # every failure counts, whatever raised it
            if record:
                self.errors += 1
                self.first_error = self.first_error or f"{type(exc).__name__}: {exc}"[:200]
            return
        if record:
            self.latencies.append(time.perf_counter() - since)
            if not complete:
                self.partial += 1

    def outcome(self, elapsed: float) -> Outcome:
        return Outcome(
            self.latencies, self.errors, self.partial, elapsed, self.first_error, self.sent
        )


async def closed_loop(call: Call, concurrency: int, duration: float, warmup: float) -> Outcome:
    """``concurrency`` workers for ``warmup`` + ``duration`` seconds; only the latter counts."""
    if concurrency < 1 or duration <= 0:
        raise ValueError("concurrency must be ≥ 1 and duration > 0")
    tally = _Tally()
    counter = iter(range(1 << 62))
    start = time.perf_counter()
    measure_from = start + warmup
    end = measure_from + duration

    async def worker() -> None:
        while (now := time.perf_counter()) < end:
            await tally.one(call, next(counter), now, record=now >= measure_from)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tally.outcome(time.perf_counter() - measure_from)


async def open_loop(
    call: Call,
    rate: float,
    duration: float,
    *,
    poisson: bool = True,
    seed: int = 0,
    max_in_flight: int = 10_000,
) -> Outcome:
    """Send at ``rate`` queries per second for ``duration`` seconds, then wait for the answers.

    A send that would exceed ``max_in_flight`` outstanding queries is counted as an error
    (the generator itself is saturated) instead of growing memory without bound.
    """
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be > 0")
    tally = _Tally()
    rng = random.Random(seed)  # noqa: S311 (arrival times, not secrets)
    in_flight: set[asyncio.Task[None]] = set()
    start = time.perf_counter()
    end = start + duration
    scheduled = start
    number = 0
    while scheduled < end:
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:
            tally.sent += 1
            tally.errors += 1
            tally.first_error = tally.first_error or "load generator: too many in flight"
        else:
            task = asyncio.create_task(tally.one(call, number, scheduled, record=True))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        number += 1
        scheduled += rng.expovariate(rate) if poisson else 1 / rate
    if in_flight:
        await asyncio.gather(*in_flight)
    # Throughput over the sending window: answers still arriving after it count too.
    return tally.outcome(max(time.perf_counter() - start, duration))
