"""The anchor exchange with silos: anchor texts streamed out, each silo's vectors of them taken in
(pushed by the silo, or asked for while training), checked like query vectors, and stored per
silo: one silo's vectors are never used as another's, even of the same model."""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import AsyncIterator
from concurrent.futures import Executor

import numpy as np

from silobridge.coordinator.anchors.catalogue import AnchorCatalogue, AnchorSet
from silobridge.coordinator.anchors.manifest import AnchorSetInfo
from silobridge.coordinator.silo_gateway import SiloGateway, outcome_of
from silobridge.coordinator.state.records import SiloRecord
from silobridge.coordinator.state.store import CoordinatorState
from silobridge.core.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from silobridge.core.listings import AnchorChunk, AnchorSetRef, AnchorVectors
from silobridge.core.offload import off_loop
from silobridge.core.spaces import FloatMatrix
from silobridge.core.vectors import validate_unit_rows
from silobridge.security.identity import PeerIdentity, Role

log = logging.getLogger(__name__)
ANCHOR_CHUNK = 1_000
# How long a whole SubmitAnchorEmbeddings stream may take unless configured otherwise (a silo
# embeds while it streams, so this covers embedding a large set on a slow CPU).
DEFAULT_STREAM_SECONDS = 1800.0


class AnchorExchange:
    """Moves anchors between the catalogue, the silos and the stored embeddings."""

    def __init__(
        self,
        state: CoordinatorState,
        catalogue: AnchorCatalogue,
        gateway: SiloGateway,
        executor: Executor,
        *,
        stream_seconds: float = DEFAULT_STREAM_SECONDS,
    ) -> None:
        self.state = state
        self.catalogue = catalogue
        self.gateway = gateway
        self.executor = executor
        self.stream_seconds = stream_seconds

    async def chunks(self, name: str, version: str) -> AsyncIterator[AnchorChunk]:
        """The texts of an anchor set version (``""``: the newest), in order, in chunks."""
        anchors = await off_loop(self.executor, lambda: self.catalogue.get(name, version))
        info = anchors.info
        for offset in range(0, len(anchors.texts), ANCHOR_CHUNK):
            texts = anchors.texts[offset : offset + ANCHOR_CHUNK]
            yield AnchorChunk(info.name, info.version, info.sha256, texts, offset, info.count)

    async def submit(self, caller: PeerIdentity, chunks: AsyncIterator[AnchorVectors]) -> int:
        """Store a silo's vectors of a whole anchor set, sent in order; returns how many.

        Bounded: every chunk carries rows (so there are at most as many chunks as anchors), no
        more rows than the set has are read, and the whole stream must end within
        ``stream_seconds`` (``DeadlineExceeded``): a stalled or trickling stream is cut off.
        """
        silo = await off_loop(self.executor, lambda: self._registered(caller))
        try:
            async with asyncio.timeout(self.stream_seconds):
                info, parts = await self._read_submission(silo, chunks)
        except TimeoutError:
            raise DeadlineExceeded(
                f"the anchor vectors did not arrive within {self.stream_seconds:g} s "
                "([server] anchor_stream_seconds); send them again, in fewer, fuller chunks"
            ) from None
        expected = int(sum(part.shape[0] for part in parts))
        matrix = np.concatenate(parts).astype(np.float32)
        validate_unit_rows(
            matrix,
            silo.space.dimension,
            f"anchor vectors of {info.name} {info.version} from silo {silo.name}",
        )
        await off_loop(
            self.executor,
            lambda: self.state.store_anchor_embeddings(
                silo.name, info.name, info.version, silo.space, matrix
            ),
        )
        log.info(
            "stored %d anchor vectors of %s %s from %s",
            expected,
            info.name,
            info.version,
            silo.name,
        )
        return expected

    async def _read_submission(
        self, silo: SiloRecord, chunks: AsyncIterator[AnchorVectors]
    ) -> tuple[AnchorSetInfo, list[FloatMatrix]]:
        """The set a submission is for and its chunks of rows, each chunk checked as it comes."""
        parts: list[FloatMatrix] = []
        expected = 0
        first: AnchorVectors | None = None
        info: AnchorSetInfo | None = None
        count = 0  # the set's anchors, once the first chunk named it
        async for chunk in chunks:
            if first is None:
                first = chunk
                info = await off_loop(
                    self.executor,
                    functools.partial(self.catalogue.info, chunk.anchor_set, chunk.version),
                )
                count = info.count
                if chunk.space.fingerprint != silo.space.fingerprint:
                    raise FailedPrecondition(
                        f"vectors are in space {chunk.space.space_id} (fingerprint "
                        f"{chunk.space.fingerprint}) but silo {silo.name} is registered with "
                        f"fingerprint {silo.space.fingerprint}; re-register first"
                    )
            elif (chunk.anchor_set, chunk.version) != (first.anchor_set, first.version):
                raise InvalidArgument("one submission must carry one anchor set version")
            if chunk.offset != expected:
                raise InvalidArgument(f"chunk offset {chunk.offset}, expected {expected}")
            if chunk.vectors.shape[0] == 0:
                raise InvalidArgument(
                    f"chunk at offset {chunk.offset} is empty; every chunk must carry vectors"
                )
            if chunk.vectors.shape[1] != silo.space.dimension:
                raise InvalidArgument(
                    f"vectors have dimension {chunk.vectors.shape[1]}, the silo's space "
                    f"{silo.space.dimension}"
                )
            if expected + chunk.vectors.shape[0] > count:
                raise InvalidArgument(f"more vectors than the {count} anchors of the set")
            parts.append(chunk.vectors)
            expected += chunk.vectors.shape[0]
        if first is None or info is None:
            raise InvalidArgument("no vectors submitted")
        if expected != info.count:
            raise InvalidArgument(f"{expected} vectors submitted for {info.count} anchors")
        return info, parts

    def _registered(self, caller: PeerIdentity) -> SiloRecord:
        if caller.role != Role.SILO:
            raise PermissionDenied(
                f"only silos submit anchor embeddings; {caller.spiffe_id} is not"
            )
        try:
            return self.state.silo(caller.name)
        except NotFound:
            raise FailedPrecondition(
                f"silo {caller.name!r} is not registered; register before submitting"
            ) from None

    async def stored(self, silo: SiloRecord, anchors: AnchorSet) -> FloatMatrix | None:
        """The vectors of ``anchors`` in ``silo``'s space stored so far, if any."""
        info = anchors.info
        return await off_loop(
            self.executor,
            lambda: self.state.anchor_embeddings(
                info.name, info.version, silo.space.fingerprint, silo=silo.name
            ),
        )

    async def collect(self, silo: SiloRecord, anchors: AnchorSet) -> FloatMatrix:
        """Ask ``silo`` to embed the anchors, check and store what it returns."""
        try:
            # The silo fetches the texts from us and checks them by this hash itself.
            info = anchors.info
            vectors = await self.gateway.embed_anchors(
                silo.endpoint,
                AnchorSetRef(info.name, info.version, info.sha256, info.count),
                expect=silo.spiffe_id,
                timeout=None,
            )
        except Exception as error:
            state, why = outcome_of(error)
            raise FailedPrecondition(
                f"silo {silo.name} did not embed the anchors ({state.value}: {why})"
            ) from None
        if vectors.shape != (anchors.info.count, silo.space.dimension):
            raise FailedPrecondition(
                f"silo {silo.name} returned {vectors.shape} for {anchors.info.count} anchors"
            )
        try:
            validate_unit_rows(
                vectors, silo.space.dimension, f"anchor vectors returned by silo {silo.name}"
            )
        except InvalidArgument as error:
            raise FailedPrecondition(f"{error.message}; nothing was stored") from None
        await off_loop(
            self.executor,
            lambda: self.state.store_anchor_embeddings(
                silo.name, anchors.info.name, anchors.info.version, silo.space, vectors
            ),
        )
        return vectors
