"""Answering a federated query: check it (and its signature), plan it, ask every routed silo at
once under the caller's deadline, and merge what came back; a slow or failing silo never hangs it.

A signed query goes to each silo as the client's own bytes: vector, claims, signature and
certificate are forwarded untouched, and each silo verifies them and translates the vector itself
with the adapter named here. An unsigned one (only where the policy allows it) is translated here.
"""

from __future__ import annotations

import asyncio
import math
import time
from concurrent.futures import Executor

from silobridge.coordinator.config import CoordinatorConfig
from silobridge.coordinator.search.coalesce import CoalescingSearch
from silobridge.coordinator.search.merge import SiloResult, merge
from silobridge.coordinator.search.observe import SEARCH, SearchObserver, Unobserved, tell
from silobridge.coordinator.search.planner import SearchPlan, SearchPlanner
from silobridge.coordinator.search.translation import NotInMemory, Route, from_memory
from silobridge.coordinator.silo_gateway import SiloGateway, outcome_of
from silobridge.core.config import TrustedCa
from silobridge.core.errors import PermissionDenied
from silobridge.core.federation import FederatedAnswer, SiloOutcome, SiloStatus
from silobridge.core.offload import off_loop
from silobridge.core.queries import FederatedQuery, SignedQuery, SiloQuery
from silobridge.core.stage_timer import TIMINGS
from silobridge.core.vectors import FloatVector, WireVector, validate_k, validate_query_vector
from silobridge.security.identity import PeerIdentity, identity_from_certificate_file
from silobridge.security.signed_query.verify import verify_signed_query

# Time kept back from the caller's deadline for merging and replying once the slowest silo has
# timed out. 50 ms proved too thin on a loaded 2-core machine: the partial answer then arrived
# after the caller had given up, and a slow silo cost the whole answer.
REPLY_MARGIN_S = 0.3
# How long past its gRPC deadline a silo call may take before it is abandoned (a hung
# transport); inside the reply margin, so even then the caller gets its partial answer.
TRANSPORT_GUARD_S = 0.1


class FederatedSearch:
    """Fans one federated query out to the silos and merges their hits."""

    def __init__(
        self,
        config: CoordinatorConfig,
        planner: SearchPlanner,
        gateway: SiloGateway,
        executor: Executor,
    ) -> None:
        self.config = config
        self.planner = planner
        self.gateway = gateway
        # Concurrent queries to one silo share a call under load (one query: its own call).
        self.silo_calls = CoalescingSearch(gateway, in_flight=config.server.silo_calls_in_flight)
        self.executor = executor
        self.trusted_ca = TrustedCa(
            config.tls, "this coordinator cannot verify signed queries without TLS"
        )
        # Read once: a renewed certificate keeps the identity.
        self._own_id: str | None = None
        # Told each silo's outcome and each fan-out's time (the server's metrics, when on).
        self.observer: SearchObserver = Unobserved()

    async def answer(
        self, caller: PeerIdentity, query: FederatedQuery, *, time_remaining: float | None = None
    ) -> FederatedAnswer:
        """Check, route, fan out concurrently under the caller's deadline, merge; never hang."""
        started = time.monotonic()
        vector = query.vector.decode()
        validate_k(query.k, self.config.server.max_k)
        targets = query.silos
        if query.signed is not None:
            with TIMINGS.stage("coordinator: signature check"):
                targets = self._check_signature(caller, query, query.signed)
        elif self.config.policy.require_signed:
            raise PermissionDenied(
                "this coordinator forwards only queries the client signed; sign the query with "
                "the key of your certificate (the silobridge client does this)"
            )
        with TIMINGS.stage("coordinator: plan (policy, routes)"):
            plan = await self._plan(caller, query, targets)
        normalised = validate_query_vector(vector, plan.source.dimension)
        budget = self.config.server.silo_timeout_seconds
        if time_remaining is not None:
            budget = min(budget, time_remaining - (time.monotonic() - started) - REPLY_MARGIN_S)
        fanning_out = time.monotonic()
        with TIMINGS.stage("coordinator: fan-out, until the last silo answered"):
            results = await asyncio.gather(
                *(self._search_one(route, query, normalised, budget) for route in plan.routes)
            )
        answered = [result for result, _status in results if result is not None]
        statuses = [*plan.denied, *(status for _result, status in results)]
        tell(self.observer, SEARCH, time.monotonic() - fanning_out, statuses)
        with TIMINGS.stage("coordinator: merge"):
            hits = merge(query.merge, answered, query.k) if answered else []
        order = {s.name: i for i, s in enumerate(plan.targets)}
        statuses.sort(key=lambda s: order.get(s.silo, len(order)))
        return FederatedAnswer(hits=hits, statuses=statuses, source_space=query.source_space)

    async def _plan(
        self, caller: PeerIdentity, query: FederatedQuery, targets: tuple[str, ...]
    ) -> SearchPlan:
        """The plan, on the event loop from what is in memory (the usual case: a thread hop
        cost more CPU than the planning); in a worker thread when an adapter or anchors must
        be read from disk first."""

        def plan() -> SearchPlan:
            reranked = bool(query.rerank_text)
            return self.planner.plan(caller, query.source_space, targets, reranked=reranked)

        try:
            with from_memory():
                return plan()
        except NotInMemory:
            return await off_loop(self.executor, plan)

    def _check_signature(
        self, caller: PeerIdentity, query: FederatedQuery, signed: SignedQuery
    ) -> tuple[str, ...]:
        """The caller signed this very query (the silos check it again, and for replays).

        Returns the silos to ask: the request's, all of them signed, or else the signed list.
        """
        verified = verify_signed_query(
            signed,
            ca_certificate_pem=self.trusted_ca.pem(),
            vector=query.vector,
            source_space=query.source_space,
            silo=None,
            # Refused when signed for another coordinator (and captured on its way there).
            audience=self._own_identity(),
            replay=None,
            rerank_text=query.rerank_text,
        )
        if verified.signer.spiffe_id != caller.spiffe_id:
            raise PermissionDenied(
                f"the query is signed by {verified.signer.spiffe_id} but sent by "
                f"{caller.spiffe_id}; a client sends only its own signed queries"
            )
        if query.k > verified.claims.k:
            raise PermissionDenied(
                f"k={query.k} exceeds the k={verified.claims.k} the client signed"
            )
        addressed = set(verified.claims.silos)
        if not set(query.silos) <= addressed:
            raise PermissionDenied("the request names silos the client's signature does not")
        # The signature always names its targets (verify refuses an empty list), so an empty
        # request list means exactly the silos signed, never "any silo".
        return query.silos or verified.claims.silos

    def _own_identity(self) -> str:
        """This coordinator's SPIFFE id, from its own certificate (the audience it accepts)."""
        if self._own_id is None:
            tls = self.config.tls
            if tls is None:
                raise PermissionDenied("this coordinator cannot verify signed queries without TLS")
            self._own_id = identity_from_certificate_file(tls.cert).spiffe_id
        return self._own_id

    async def _search_one(
        self,
        route: Route | SiloStatus,
        query: FederatedQuery,
        normalised: FloatVector,
        budget: float,
    ) -> tuple[SiloResult | None, SiloStatus]:
        if isinstance(route, SiloStatus):
            return None, route
        name = route.silo.name
        if budget <= 0:
            return None, SiloStatus(name, SiloOutcome.TIMEOUT, "no time left in the deadline")
        started = time.monotonic()
        try:
            # The gRPC deadline ends the call; wait_for guards against a transport that hangs.
            hits = await asyncio.wait_for(
                self.silo_calls.search(
                    route.silo.endpoint,
                    _silo_query(route, query, normalised),
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
        if not all(math.isfinite(h.score) for h in hits):
            # One misbehaving silo must not break the merge of everyone else's hits.
            message = "the silo returned a non-finite score; its hits were dropped"
            return None, SiloStatus(name, SiloOutcome.ERROR, message, route.adapter_id, 0, elapsed)
        status = SiloStatus(name, SiloOutcome.OK, "", route.adapter_id, len(hits), elapsed)
        return SiloResult(name, hits, route.calibration), status


def _silo_query(route: Route, query: FederatedQuery, normalised: FloatVector) -> SiloQuery:
    """What one silo is asked: the signed query as the client sent it, or a translated vector."""
    if query.signed is not None:
        # The silo verifies the signature over this very vector and translates it itself.
        return SiloQuery(
            query.vector,
            query.k,
            rerank_text=query.rerank_text,
            rerank_depth=query.rerank_depth,
            signed=query.signed,
            source_space=query.source_space,
            adapter_id=route.adapter_id,
        )
    translated = normalised if route.adapter is None else route.adapter.apply_one(normalised)
    return SiloQuery(
        WireVector.of(translated),
        query.k,
        rerank_text=query.rerank_text,
        rerank_depth=query.rerank_depth,
        # Always named: a silo that just cut over reads "" as its new primary space, while
        # this route was planned from what the coordinator has on record.
        source_space=route.target.space_id,
    )
