"""One live load session: a client's connections, its pre-embedded queries, and the runs.

``LiveBench`` opens the SDK client (and a direct channel to the home silo), embeds the query
texts once, builds one ``Call`` per path, loads every path once unmeasured (the silos'
first-query work), and runs closed loops at each concurrency and open loops at each rate.
Open-loop rates not given are derived from the path's best closed-loop QPS and raised until
the path saturates (it answers under 90 % of the offered rate).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from silobridge.client.api import FederatedClient
from silobridge.client.config import ClientConfig
from silobridge.core.errors import InvalidArgument
from silobridge.core.spaces import FloatMatrix
from silobridge.loadgen.paths import (
    batch_call,
    direct_call,
    embed_all,
    federated_call,
    time_signing,
)
from silobridge.loadgen.runner import Call, closed_loop, open_loop
from silobridge.loadgen.stats import RunRow, summarize
from silobridge.rpc.silo_client import SiloClient

# Multiples of the best closed-loop QPS tried when no rates are given, lowest first.
AUTO_RATE_STEPS = (0.25, 0.5, 0.75, 0.9, 1.1, 1.5)
SATURATED = 0.9
EXTRA_STEPS = 4
# Seconds left after the paths' warm-up for the silos' background work to finish.
SETTLE_S = 10.0
WARMUP_CONCURRENCY = 8
_WORDS = (  # noqa: SIM905 (a readable line of words)
    "light water king river law bread house mountain city voice fire shepherd path "
    "heart peace word night day stone tree seed field gate sea wind servant lord "
    "function module class list string error file thread socket import return value "
    "default argument object method type number dictionary iterator buffer stream"
).split()

# Called before and after each run: (path, mode, load, "before" | "after").
RunHook = Callable[[str, str, float, str], Awaitable[None]]


def synthetic_texts(count: int, seed: int = 0) -> list[str]:
    """``count`` short public word strings (no corpus needed to size a deployment)."""
    rng = random.Random(seed)  # noqa: S311 (query texts, not secrets)
    return [" ".join(rng.choices(_WORDS, k=rng.randint(3, 9))) for _ in range(count)]


def read_query_file(path: Path, limit: int = 0) -> list[str]:
    """The ``text`` of each line of a JSONL file (a plain string line is taken as it is)."""
    texts: list[str] = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        item = json.loads(line)
        texts.append(str(item["text"] if isinstance(item, dict) else item))
        if limit and len(texts) >= limit:
            break
    if not texts:
        raise InvalidArgument(f"{path} holds no query texts")
    return texts


@dataclass(frozen=True)
class Plan:
    concurrency: Sequence[int] = (1, 8, 32, 64)
    rates: Sequence[float] = ()  # empty: derived from the closed-loop runs
    duration: float = 10.0
    warmup: float = 1.0
    poisson: bool = True
    # Before any run, each path is loaded this long (not measured), then left ``settle`` s:
    # silos build their hubness corrections on a route's first query and compute the
    # documents' penalties in the background, which a measured run must not pay for.
    # ``settle``: seconds then left for that background work.
    path_warmup: float = 3.0
    settle: float = SETTLE_S


class LiveBench:
    """``async with LiveBench(config) as bench: await bench.prepare(texts, …)``."""

    def __init__(self, config: ClientConfig, *, k: int = 10) -> None:
        self.config = config
        self.k = k
        self.client = FederatedClient(config)
        self.signing = time_signing(self.client)
        self.home = SiloClient(
            config.home_silo,
            config.tls,
            insecure=config.insecure,
            expect=config.expected_home_silo(),
        )
        self.paths: dict[str, Call] = {}
        self._batches: tuple[FloatMatrix, str, list[str]] = (
            np.zeros((0, 0), dtype=np.float32),
            "",
            [],
        )
        self.signed_queries = 0
        self.signing_seconds = 0.0

    async def __aenter__(self) -> LiveBench:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.client.close()
        await self.home.close()

    async def prepare(self, texts: Sequence[str], *, silos: Sequence[str], direct: bool) -> None:
        """Embed ``texts`` at the home silo; one path per named silo, one to all, and direct."""
        vectors, space_id = await embed_all(self.client, texts)
        every = sorted({listing.silo for listing in await self.client.list_silos()})
        if direct:
            timeout = self.config.timeout_seconds
            self.paths["direct"] = direct_call(self.home, vectors, self.k, timeout)
        for silo in silos:
            if silo not in every:
                raise InvalidArgument(f"silo '{silo}' is not registered (listed: {every})")
            self.paths[f"federated:{silo}"] = federated_call(
                self.client, vectors, space_id, self.k, [silo]
            )
        self.paths[f"federated:all({len(every)})"] = federated_call(
            self.client, vectors, space_id, self.k, every
        )
        self._batches = (vectors, space_id, every)

    async def batches(
        self, size: int, concurrency: int, plan: Plan, silos: Sequence[str] = ()
    ) -> RunRow:
        """Closed loop of ``search_vectors`` calls of ``size`` queries each (to every silo
        unless named): the row counts queries, not calls; its latencies are per batch."""
        vectors, space_id, every = self._batches
        targets = tuple(silos) or tuple(every)
        call = batch_call(self.client, vectors, space_id, self.k, targets, size)
        outcome = await closed_loop(call, concurrency, plan.duration, plan.warmup)
        row = summarize(f"batch of {size}:{','.join(targets)}", "closed", concurrency, outcome)
        return dataclasses.replace(row, queries=row.queries * size, qps=row.qps * size)

    async def closed(self, path: str, concurrency: int, plan: Plan) -> RunRow:
        outcome = await closed_loop(self.paths[path], concurrency, plan.duration, plan.warmup)
        return summarize(path, "closed", concurrency, outcome)

    async def open(self, path: str, rate: float, plan: Plan) -> RunRow:
        outcome = await open_loop(self.paths[path], rate, plan.duration, poisson=plan.poisson)
        return summarize(path, "open", rate, outcome)

    async def run(self, plan: Plan, hook: RunHook | None = None) -> list[RunRow]:
        """Every path: closed loops at each concurrency, then open loops up to saturation."""
        rows: list[RunRow] = []
        if plan.path_warmup > 0:
            for call in self.paths.values():
                await closed_loop(call, WARMUP_CONCURRENCY, plan.path_warmup, 0.0)
            await asyncio.sleep(plan.settle)
        for path in self.paths:
            best = 0.0
            for concurrency in plan.concurrency:
                rows.append(await self._timed(hook, path, "closed", concurrency, plan))
                best = max(best, rows[-1].qps)
            rates = list(plan.rates) or [round(best * s, 1) for s in AUTO_RATE_STEPS if best]
            if not plan.rates and best:
                # Not saturated by 1.5x the closed-loop best: keep raising the rate a while.
                rates += [round(best * 1.5 * 1.4**n, 1) for n in range(1, EXTRA_STEPS + 1)]
            for rate in rates:
                rows.append(await self._timed(hook, path, "open", rate, plan))
                # Saturated: it answers fewer than 90 % of the queries actually sent per second.
                if rows[-1].qps < SATURATED * rows[-1].sent / plan.duration:
                    break
        return rows

    async def _timed(
        self, hook: RunHook | None, path: str, mode: str, load: float, plan: Plan
    ) -> RunRow:
        if hook is not None:
            await hook(path, mode, load, "before")
        self.signing.reset()
        if mode == "closed":
            row = await self.closed(path, int(load), plan)
        else:
            row = await self.open(path, load, plan)
        self.signed_queries += self.signing.count
        self.signing_seconds += self.signing.seconds
        if hook is not None:
            await hook(path, mode, load, "after")
        return row

    def signing_row(self) -> dict[str, Any]:
        """The client's own signing, over every federated query sent (warm-up included)."""
        count = self.signed_queries
        mean_us = self.signing_seconds / count * 1e6 if count else 0.0
        return {"stage": "client QuerySigner", "count": count, "mean_us": mean_us}
