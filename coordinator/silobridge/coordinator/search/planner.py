"""Planning a federated query: its source space, which silos the caller may query, and the route
(adapter and calibration) to each; silos that cannot be reached this way get a status instead."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from silobridge.coordinator.config import CoordinatorPolicy
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
        self, state: CoordinatorState, policy: CoordinatorPolicy, translator: Translator
    ) -> None:
        self.state = state
        self.policy = policy
        self.translator = translator

    def plan(
        self, caller: PeerIdentity, source_space: str, silos: Sequence[str], *, reranked: bool
    ) -> SearchPlan:
        """Which silos to ask, and how: policy per silo, then a route (adapter) for each."""
        source = self.source_space(source_space)
        registered = self.state.silos()
        by_name = {s.name: s for s in registered}
        unknown = [name for name in silos if name not in by_name]
        if unknown:
            raise NotFound(
                f"unknown silo(s) {', '.join(unknown)}; registered: {', '.join(sorted(by_name))}"
            )
        targets = [by_name[n] for n in dict.fromkeys(silos)] if silos else registered
        allowed = [s for s in targets if self.policy.may_query(caller, s.name)]
        if not allowed:
            raise PermissionDenied(
                f"the consortium policy does not allow {caller.spiffe_id or 'this caller'} to "
                f"query any of: {', '.join(s.name for s in targets) or 'no silos registered'}"
            )
        denied = [
            SiloStatus(s.name, SiloOutcome.DENIED, "the consortium policy denies this caller")
            for s in targets
            if s not in allowed
        ]
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
            calibration = self.translator.identity_calibration(silo.space)
            route = replace(route, calibration=calibration)
        return route
