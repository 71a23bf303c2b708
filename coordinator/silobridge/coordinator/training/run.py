"""One training run as an admin asks for it: both spaces' anchor vectors (stored, or asked of the
silos), then the fit off the event loop, with progress streamed back as it happens.

An adapter source -> target is fitted on the anchor vectors of two silos only: the source
space's silo and the target space's silo (the first enabled one of each space, by name), each
its own submission. Vectors another silo of the same model sent are never used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from silobridge.adapters import KINDS, FitConfig
from silobridge.coordinator.anchors.catalogue import AnchorCatalogue, AnchorSet
from silobridge.coordinator.anchors.exchange import AnchorExchange
from silobridge.coordinator.config import TrainingSettings
from silobridge.coordinator.registry import adapter_listing
from silobridge.coordinator.state.records import AdapterRecord, SiloRecord
from silobridge.coordinator.state.store import CoordinatorState
from silobridge.coordinator.training.fit import train_adapter
from silobridge.coordinator.training.preferred import PreferredAnchors
from silobridge.core.errors import InvalidArgument, NotFound
from silobridge.core.listings import TrainProgress
from silobridge.core.offload import off_loop
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor

log = logging.getLogger(__name__)


class AdapterTrainer:
    """Trains adapters between registered spaces; fits run in their own pool, one at a time."""

    def __init__(
        self,
        settings: TrainingSettings,
        state: CoordinatorState,
        catalogue: AnchorCatalogue,
        exchange: AnchorExchange,
        signing_key: Ed25519PrivateKey,
        executor: Executor,
        train_executor: Executor,
    ) -> None:
        self.settings = settings
        self.state = state
        self.catalogue = catalogue
        self.exchange = exchange
        self.signing_key = signing_key
        self.executor = executor
        self.train_executor = train_executor

    async def train(
        self,
        *,
        source_space: str,
        target_space: str,
        anchor_set: str,
        version: str = "",
        kind: str = "",
        prefer: int = 0,
    ) -> AsyncIterator[TrainProgress]:
        """Fit, calibrate, sign and store an adapter; yields progress, the adapter last.

        ``prefer`` > 0: ``anchor_set`` is a pool, and the adapter is trained on the ``prefer``
        texts of it the two silos prefer (``preferred``)."""
        kind = kind or self.settings.kind
        if kind not in KINDS:
            raise InvalidArgument(f"unknown adapter kind {kind!r}; choose one of {KINDS}")
        if source_space == target_space:
            raise InvalidArgument("source and target are the same space: no adapter is needed")
        source, target = await off_loop(
            self.executor,
            lambda: (self._silo_in_space(source_space), self._silo_in_space(target_space)),
        )
        anchors = await off_loop(self.executor, lambda: self.catalogue.get(anchor_set, version))
        if prefer:
            chooser = PreferredAnchors(self.catalogue, self.exchange.gateway, self.executor)
            async for step in chooser.build(anchors, source, target, prefer):
                yield step
            anchors = chooser.result()
        matrices = []
        for silo in (source, target):
            vectors = await self.exchange.stored(silo, anchors)
            if vectors is None:
                yield TrainProgress(
                    "collect anchors",
                    f"asking silo {silo.name} to embed {anchors.info.count} anchors of "
                    f"{anchors.info.name} {anchors.info.version}",
                )
                vectors = await self.exchange.collect(silo, anchors)
            else:
                yield TrainProgress(
                    "collect anchors",
                    f"using the vectors silo {silo.name} stored in {silo.space.space_id}",
                )
            matrices.append(vectors)
        fit_config = FitConfig(
            kind=kind, seed=self.settings.seed, mlp_epochs=self.settings.mlp_epochs
        )
        async for progress in self._fit(source.space, target.space, matrices, anchors, fit_config):
            yield progress

    def _silo_in_space(self, space_id: str) -> SiloRecord:
        silos = self.state.silos()
        for silo in silos:
            # A disabled silo receives nothing, so it is not asked for anchors either.
            if silo.space.space_id == space_id and not silo.disabled:
                return silo
        known = ", ".join(sorted({s.space.space_id for s in silos})) or "none"
        raise NotFound(f"no registered silo has space {space_id!r}; registered spaces: {known}")

    async def _fit(
        self,
        source: SpaceDescriptor,
        target: SpaceDescriptor,
        matrices: list[FloatMatrix],
        anchors: AnchorSet,
        fit_config: FitConfig,
    ) -> AsyncIterator[TrainProgress]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[TrainProgress] = asyncio.Queue()

        def progress(stage: str, message: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, TrainProgress(stage, message))

        def work() -> AdapterRecord:
            return train_adapter(
                self.state,
                source=source,
                target=target,
                source_vectors=matrices[0],
                target_vectors=matrices[1],
                anchor_set=anchors.info,
                fit_config=fit_config,
                signing_key=self.signing_key,
                progress=progress,
                quality_floor=self.settings.min_heldout_ndcg,
            )

        # Fitting runs in its own pool, off the event loop: queries keep flowing meanwhile.
        future: asyncio.Future[AdapterRecord] = loop.run_in_executor(self.train_executor, work)
        while not future.done() or not queue.empty():
            getter: asyncio.Future[TrainProgress] = asyncio.ensure_future(queue.get())
            waiting: set[asyncio.Future[Any]] = {getter, future}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            if getter in done:
                yield getter.result()
            else:
                getter.cancel()
        record = future.result()
        log.info("trained adapter %s (%s)", record.adapter_id, record.kind)
        done_message = f"adapter {record.adapter_id} ({record.kind})"
        yield TrainProgress("done", done_message, adapter_listing(record))
