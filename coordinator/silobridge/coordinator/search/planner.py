"""Planning a federated query: its source space, which silos the caller may query, and the route
(adapter and calibration) to each; silos that cannot be reached this way get a status instead."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from silobridge.coordinator.config import CoordinatorPolicy
from silobridge.coordinator.revocation import SiloRevocation
from silobridge.coordinator.search.translation import Route, Translator
from silobridge.coordinator.state.records import SiloRecord
from silobridge.coordinator.state.store import CoordinatorState
from silobridge.core.errors import NotFound, PermissionDenied, SiloBridgeError
from silobridge.core.federation import SiloOutcome, SiloStatus
from silobridge.core.spaces import SpaceDescriptor
from silobridge.security.identity import PeerIdentity


@dataclass(frozen=True)
class SearchPlan:
    """The silos asked, in answer order; a route to each allowed one, a status for the rest."""

    source: SpaceDescriptor
    targets: list[SiloRecord]
    routes: list[Route | SiloStatus]
    denied: list[SiloStatus]


class SearchPlanner:
    """Reads state and loads adapters: call it from a worker thread, not the event loop."""

    def __init__(
        self,
        state: CoordinatorState,
        policy: CoordinatorPolicy,
        translator: Translator,
        revocation: SiloRevocation | None = None,
    ) -> None:
        self.state = state
        self.policy = policy
        self.translator = translator
        self.revocation = revocation

    def plan(
        self, caller: PeerIdentity, source_space: str, silos: Sequence[str], *, reranked: bool
    ) -> SearchPlan:
        """Which silos to ask, and how: policy per silo, then a route (adapter) for each."""
        source = self.source_space(source_space)
        registered = self.state.silos()
        by_name = {s.name: s for s in registered}
        unknown = [name for name in silos if name not in by_name]
        if unknown:
            # Only the names this caller may query: the others are not its business.
            may = sorted(s.name for s in registered if self.policy.may_query(caller, s.name))
            raise NotFound(
                f"unknown silo(s) {', '.join(unknown)}; silos you may query: "
                f"{', '.join(may) or 'none'}"
            )
        targets = [by_name[n] for n in dict.fromkeys(silos)] if silos else registered
        allowed = [s for s in targets if self.policy.may_query(caller, s.name)]
        if not allowed:
            # Named by the caller, or none at all: the policy then allows it no silo.
            named = ", ".join(s.name for s in targets) if silos else "the registered silos"
            raise PermissionDenied(
                f"the consortium policy does not allow {caller.spiffe_id or 'this caller'} to "
                f"query any of: {named or 'no silos registered'}"
            )
        denied = [
            SiloStatus(s.name, SiloOutcome.DENIED, "the consortium policy denies this caller")
            for s in targets
            if s not in allowed
        ]
        if self.revocation is not None:
            # A disabled or revoked silo receives nothing: no vector, no signed claims.
            revoked = {s.name: self.revocation.denied_reason(s) for s in allowed}
            denied += [
                SiloStatus(name, SiloOutcome.DENIED, reason)
                for name, reason in revoked.items()
                if reason
            ]
            allowed = [s for s in allowed if not revoked[s.name]]
        routes = [self._route(source, s, reranked=reranked) for s in allowed]
        return SearchPlan(source, targets, routes, denied)

    def source_space(self, space_id: str) -> SpaceDescriptor:
        """A space some registered silo or stored adapter knows, by its id.

        A silo's own space comes first, then stored adapters' sources, then the spaces migrating
        silos also serve (a client's home silo may embed in the new space before re-registering).
        """
        silos = self.state.silos()
        spaces = {s.space.space_id: s.space for s in silos}
        for record in self.state.adapters():
            spaces.setdefault(record.source.space_id, record.source)
        for silo in silos:
            for space in silo.also_serves:
                spaces.setdefault(space.space_id, space)
        if space_id not in spaces:
            known = ", ".join(sorted(spaces)) or "none"
            raise NotFound(f"unknown source space {space_id!r}; known spaces: {known}")
        return spaces[space_id]

    def _route(
        self, source: SpaceDescriptor, silo: SiloRecord, *, reranked: bool
    ) -> Route | SiloStatus:
        try:
            route = self.translator.route(source, silo)
        except SiloBridgeError as error:
            return SiloStatus(silo.name, SiloOutcome.ERROR, error.message)
        if reranked and (route.adapter is not None or route.target != silo.space):
            # A re-ranking silo returns native scores of its own space (its own model's), not
            # adapter scores nor those of a space it also serves while it migrates.
            calibration = self.translator.identity_calibration(silo.space, silo.name)
            route = replace(route, calibration=calibration)
        return route
