"""Answering a batch of federated queries under one client signature: check it once, plan it
once, send the whole batch to every routed silo in one call (concurrently, under the caller's
deadline), and merge each query's hits on its own. A slow or failing silo never hangs it: its
status, once for the batch, says why, and every query is answered by the others.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Sequence

from silobridge.coordinator.search.fanout import (
    REPLY_MARGIN_S,
    TRANSPORT_GUARD_S,
    FederatedSearch,
)
from silobridge.coordinator.search.merge import SiloResult, merge
from silobridge.coordinator.search.observe import BATCH, tell
from silobridge.coordinator.search.translation import Route
from silobridge.coordinator.silo_gateway import outcome_of
from silobridge.core.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from silobridge.core.federation import FederatedBatchAnswer, SiloOutcome, SiloStatus
from silobridge.core.hits import Hit
from silobridge.core.offload import off_loop
from silobridge.core.queries import FederatedBatch, SignedQuery, SiloBatch
from silobridge.core.vectors import FloatVector, WireVector, validate_k, validate_query_vector
from silobridge.security.identity import PeerIdentity
from silobridge.security.signed_query.verify import verify_signed_query

# Per routed silo: its hit lists (one per query) or None, and its status for the batch.
SiloBatchResult = tuple[list[SiloResult] | None, SiloStatus]


def check_batch_size(count: int, max_batch: int) -> None:
    """At least one query, at most ``max_batch`` (``ResourceExhausted`` naming the limit)."""
    if count < 1:
        raise InvalidArgument("a batch holds at least one query vector")
    if count > max_batch:
        raise ResourceExhausted(
            f"{count} queries in one batch; this coordinator accepts at most {max_batch} "
            "([server] max_batch): split the batch"
        )


class BatchSearch:
    """Fans a batch out with the single-query search's parts (planner, gateway, identity)."""

    def __init__(self, single: FederatedSearch) -> None:
        self.single = single

    async def answer(
        self, caller: PeerIdentity, batch: FederatedBatch, *, time_remaining: float | None = None
    ) -> FederatedBatchAnswer:
        started = time.monotonic()
        config = self.single.config
        check_batch_size(len(batch.vectors), config.server.max_batch)
        vectors = [vector.decode() for vector in batch.vectors]
        validate_k(batch.k, config.server.max_k)
        targets = batch.silos
        if batch.signed is not None:
            targets = self._check_signature(caller, batch, batch.signed)
        elif config.policy.require_signed:
            raise PermissionDenied(
                "this coordinator forwards only queries the client signed; sign the batch with "
                "the key of your certificate (the silobridge client does this)"
            )
        planner = self.single.planner
        plan = await off_loop(
            self.single.executor,
            lambda: planner.plan(caller, batch.source_space, targets, reranked=False),
        )
        normalised = [validate_query_vector(v, plan.source.dimension) for v in vectors]
        budget = config.server.silo_timeout_seconds
        if time_remaining is not None:
            budget = min(budget, time_remaining - (time.monotonic() - started) - REPLY_MARGIN_S)
        fanning_out = time.monotonic()
        results = await asyncio.gather(
            *(self._search_one(route, batch, normalised, budget) for route in plan.routes)
        )
        fan_out_seconds = time.monotonic() - fanning_out
        answered = [result for result, _status in results if result is not None]
        answers: list[list[Hit]] = []
        for position in range(len(batch.vectors)):
            per_silo = [silo_results[position] for silo_results in answered]
            answers.append(merge(batch.merge, per_silo, batch.k) if per_silo else [])
        statuses = [*plan.denied, *(status for _result, status in results)]
        tell(self.single.observer, BATCH, fan_out_seconds, statuses)
        order = {s.name: i for i, s in enumerate(plan.targets)}
        statuses.sort(key=lambda s: order.get(s.silo, len(order)))
        return FederatedBatchAnswer(
            answers=answers, statuses=statuses, source_space=batch.source_space
        )

    def _check_signature(
        self, caller: PeerIdentity, batch: FederatedBatch, signed: SignedQuery
    ) -> tuple[str, ...]:
        """The caller signed this very batch, in this order (the silos check it again)."""
        verified = verify_signed_query(
            signed,
            ca_certificate_pem=self.single.trusted_ca.pem(),
            vector=batch.vectors,
            source_space=batch.source_space,
            silo=None,
            audience=self.single._own_identity(),
            replay=None,
        )
        if verified.signer.spiffe_id != caller.spiffe_id:
            raise PermissionDenied(
                f"the batch is signed by {verified.signer.spiffe_id} but sent by "
                f"{caller.spiffe_id}; a client sends only its own signed queries"
            )
        if batch.k > verified.claims.k:
            raise PermissionDenied(
                f"k={batch.k} exceeds the k={verified.claims.k} the client signed"
            )
        if not set(batch.silos) <= set(verified.claims.silos):
            raise PermissionDenied("the request names silos the client's signature does not")
        return batch.silos or verified.claims.silos

    async def _search_one(
        self,
        route: Route | SiloStatus,
        batch: FederatedBatch,
        normalised: Sequence[FloatVector],
        budget: float,
    ) -> SiloBatchResult:
        if isinstance(route, SiloStatus):
            return None, route
        name = route.silo.name
        if budget <= 0:
            return None, SiloStatus(name, SiloOutcome.TIMEOUT, "no time left in the deadline")
        started = time.monotonic()
        try:
            hit_lists = await asyncio.wait_for(
                self.single.gateway.search_batch(
                    route.silo.endpoint,
                    _silo_batch(route, batch, normalised),
                    expect=route.silo.spiffe_id,
                    timeout=budget,
                ),
                timeout=budget + TRANSPORT_GUARD_S,
            )
        except Exception as error:
            outcome, why = outcome_of(error)
            elapsed = (time.monotonic() - started) * 1000
            return None, SiloStatus(name, outcome, why, route.adapter_id, 0, elapsed)
        elapsed = (time.monotonic() - started) * 1000
        wrong_count = len(hit_lists) != len(batch.vectors)
        if wrong_count or not all(math.isfinite(h.score) for hits in hit_lists for h in hits):
            message = (
                "the silo answered another number of queries than the batch holds"
                if wrong_count
                else "the silo returned a non-finite score; its hits were dropped"
            )
            return None, SiloStatus(name, SiloOutcome.ERROR, message, route.adapter_id, 0, elapsed)
        count = sum(len(hits) for hits in hit_lists)
        status = SiloStatus(name, SiloOutcome.OK, "", route.adapter_id, count, elapsed)
        return [SiloResult(name, hits, route.calibration) for hits in hit_lists], status


def _silo_batch(
    route: Route, batch: FederatedBatch, normalised: Sequence[FloatVector]
) -> SiloBatch:
    """What one silo is asked: the signed batch as the client sent it, or translated vectors."""
    if batch.signed is not None:
        return SiloBatch(
            batch.vectors,
            batch.k,
            signed=batch.signed,
            source_space=batch.source_space,
            adapter_id=route.adapter_id,
        )
    adapter = route.adapter
    translated = [v if adapter is None else adapter.apply_one(v) for v in normalised]
    return SiloBatch(
        tuple(WireVector.of(vector) for vector in translated),
        batch.k,
        source_space=route.target.space_id,
    )
