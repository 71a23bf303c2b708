"""Domain-aware anchors for one training run: a pair's anchor set chosen from a public pool.

With ``prefer = N`` the source and target silos each rank the pool (a catalogue anchor set)
against their own corpus (PreferAnchors: they fetch and check it themselves) and name their N
preferred positions; the lists are interleaved into N texts (``interleave_preferences``) that
the catalogue stores as a new anchor set, named after the pool and a hash of the two spaces
and the pool, which the run then trains on. Only positions travel; what they reveal is in
SECURITY.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from dataclasses import dataclass

from silobridge.adapters.anchor_preference import interleave_preferences
from silobridge.coordinator.anchors.catalogue import AnchorCatalogue, AnchorSet
from silobridge.coordinator.silo_gateway import SiloGateway, outcome_of
from silobridge.coordinator.state.records import SiloRecord
from silobridge.core.errors import FailedPrecondition, InvalidArgument
from silobridge.core.listings import PreferenceRequest, TrainProgress
from silobridge.core.offload import off_loop

STAGE = "prefer anchors"


def preferred_set_name(pool: AnchorSet, source: SiloRecord, target: SiloRecord) -> str:
    """``<pool>-pref-<8 hex>``: one name per pool version and pair of spaces."""
    digest = hashlib.sha256(
        (source.space.fingerprint + target.space.fingerprint + pool.info.sha256).encode()
    ).hexdigest()
    # Anchor set names have at most 63 characters.
    return f"{pool.info.name[:49]}-pref-{digest[:8]}"


@dataclass
class PreferredAnchors:
    """Builds the pair's anchor set; ``anchors`` holds it once ``build`` has run to its end."""

    catalogue: AnchorCatalogue
    gateway: SiloGateway
    executor: Executor
    anchors: AnchorSet | None = None

    async def build(
        self, pool: AnchorSet, source: SiloRecord, target: SiloRecord, count: int
    ) -> AsyncIterator[TrainProgress]:
        """Ask both silos for their ``count`` preferred texts of ``pool``; store their
        interleaving as a new anchor set (``anchors``), with progress for each stage."""
        info = pool.info
        if not 1 <= count <= info.count:
            raise InvalidArgument(
                f"prefer must be between 1 and the {info.count} texts of anchor set "
                f"{info.name} {info.version}, got {count}"
            )
        request = PreferenceRequest(info.name, info.version, info.sha256, count)
        lists: list[list[int]] = []
        for silo in (source, target):
            yield TrainProgress(
                STAGE,
                f"asking silo {silo.name} for its {count} preferred of the {info.count} texts "
                f"of {info.name} {info.version}",
            )
            lists.append(await self._ask(silo, request, info.count))
        chosen = interleave_preferences(lists, count, info.count)
        texts = [pool.texts[position] for position in chosen]
        name = preferred_set_name(pool, source, target)
        origin = f"preferred:{info.name}@{info.version}:{source.name}+{target.name}:{count}"
        built, new = await off_loop(
            self.executor, lambda: self.catalogue.build(name, texts, source=origin)
        )
        self.anchors = await off_loop(
            self.executor, lambda: self.catalogue.get(built.name, built.version)
        )
        shared = len(set(lists[0]) & set(lists[1]))
        yield TrainProgress(
            STAGE,
            f"anchor set {built.name} {built.version} "
            f"({'new' if new else 'unchanged'}): {built.count} texts, {shared} preferred by both",
        )

    def result(self) -> AnchorSet:
        """The anchor set ``build`` stored."""
        if self.anchors is None:
            raise FailedPrecondition("the preferred anchor set was not built")
        return self.anchors

    async def _ask(self, silo: SiloRecord, request: PreferenceRequest, pool_size: int) -> list[int]:
        try:
            positions = await self.gateway.prefer_anchors(
                silo.endpoint, request, expect=silo.spiffe_id, timeout=None
            )
        except Exception as error:
            state, why = outcome_of(error)
            raise FailedPrecondition(
                f"silo {silo.name} named no preferred anchors ({state.value}: {why}); each silo "
                "must set [receiving] anchor_preferences = true"
            ) from None
        if not positions:
            raise FailedPrecondition(f"silo {silo.name} named no preferred anchors")
        # interleave_preferences refuses a position outside the pool or a repeated one.
        try:
            interleave_preferences([positions], len(positions), pool_size)
        except InvalidArgument as error:
            raise FailedPrecondition(f"silo {silo.name}: {error.message}") from None
        return positions
