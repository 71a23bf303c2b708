"""Which spaces a silo answers queries in, and how: natively in a generation, or adapted first.

A silo that does not migrate answers in one space (plus those of its local fits,
``receiving/local_fit``). While it migrates it answers in both its
old and new spaces; after it finished, queries still in the old space are mapped by its local
adapter. The table is immutable and swapped whole (one reference), so a search in flight sees
one consistent set of routes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from silobridge.adapters import Adapter
from silobridge.core.spaces import SpaceDescriptor
from silobridge.silo_agent.store.generation import Generation


@dataclass(frozen=True)
class Route:
    """Search ``generation``; a query vector is first mapped by ``adapter`` when it has one."""

    space: SpaceDescriptor  # the space the query vector is in
    generation: Generation
    adapter: Adapter | None = None
    # A querying side's space the silo maps itself (``receiving/local_fit``), not its own: the
    # silo's ``accept_spaces`` policy applies to it as to a translated query.
    local: bool = False
    # A local route's hubness reference (its fit's own sample, mapped), if it has one.
    hubness_reference: npt.NDArray[np.generic] | None = None


@dataclass(frozen=True)
class RouteTable:
    """Routes by query space id; ``primary`` is the space the silo embeds and registers in."""

    primary: SpaceDescriptor
    routes: Mapping[str, Route]

    @classmethod
    def native(cls, *generations: Generation, primary: Generation) -> RouteTable:
        routes = {g.space.space_id: Route(g.space, g) for g in generations}
        return cls(primary.space, routes)

    def with_route(self, route: Route) -> RouteTable:
        return RouteTable(self.primary, {**self.routes, route.space.space_id: route})

    def of(self, space_id: str) -> Route | None:
        return self.routes.get(space_id)

    def is_local_fit(self, space_id: str) -> bool:
        route = self.routes.get(space_id)
        return route is not None and route.local

    def serves(self, space: SpaceDescriptor) -> bool:
        route = self.routes.get(space.space_id)
        return route is not None and route.space.fingerprint == space.fingerprint

    @property
    def also_serves(self) -> tuple[SpaceDescriptor, ...]:
        """Spaces answered beside the primary one (Describe lists them for the coordinator)."""
        return tuple(r.space for r in self.routes.values() if r.space != self.primary)
