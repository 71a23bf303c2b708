"""The registry: silos register (named by their certificate), are listed with a live probe, and
adapters are listed with their staleness and handed out as signed artifacts."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from pathlib import Path

from silobridge.adapters.artifact import MANIFEST_FILE, SIGNATURE_FILE, WEIGHTS_FILE
from silobridge.coordinator.search.translation import staleness
from silobridge.coordinator.silo_gateway import SiloGateway, outcome_of
from silobridge.coordinator.state.records import AdapterRecord, SiloRecord
from silobridge.coordinator.state.store import CoordinatorState
from silobridge.core.endpoints import validate_endpoint
from silobridge.core.errors import FailedPrecondition, NotFound, PermissionDenied
from silobridge.core.listings import AdapterFiles, AdapterListing, SiloDescription, SiloListing
from silobridge.core.offload import off_loop
from silobridge.security.identity import PeerIdentity, Role

log = logging.getLogger(__name__)
DESCRIBE_TIMEOUT_S = 5.0


def adapter_listing(record: AdapterRecord, stale_reason: str = "") -> AdapterListing:
    """A stored adapter as ListAdapters and the end of a training run show it."""
    return AdapterListing(
        adapter_id=record.adapter_id,
        kind=record.kind,
        source=record.source,
        target=record.target,
        anchor_set=record.anchor_set,
        version=record.anchor_set_version,
        anchor_set_sha256=record.anchor_set_sha256,
        metrics=record.metrics,
        created_unix=int(record.created_at),
        stale=bool(stale_reason),
        stale_reason=stale_reason,
    )


def read_artifact_files(directory: Path) -> AdapterFiles:
    try:
        return AdapterFiles(
            manifest=(directory / MANIFEST_FILE).read_bytes(),
            weights=(directory / WEIGHTS_FILE).read_bytes(),
            signature=(directory / SIGNATURE_FILE).read_bytes(),
        )
    except OSError as error:
        raise FailedPrecondition(f"adapter artifact {directory} is unreadable: {error}") from None


class SiloRegistry:
    """Registered silos and stored adapters; callers are authorized before they get here."""

    def __init__(self, state: CoordinatorState, gateway: SiloGateway, executor: Executor) -> None:
        self.state = state
        self.gateway = gateway
        self.executor = executor

    async def register(self, caller: PeerIdentity, endpoint: str) -> SiloRecord:
        """Record a silo at ``endpoint``; its name comes from its certificate, its space from it."""
        if caller.role != Role.SILO:
            raise PermissionDenied(
                f"only silo certificates may register; {caller.spiffe_id} is not"
            )
        validate_endpoint(endpoint)
        try:
            info = await self.gateway.describe(endpoint, timeout=DESCRIBE_TIMEOUT_S)
        except Exception as error:
            _state, why = outcome_of(error)
            raise FailedPrecondition(
                f"the coordinator could not call Describe on {endpoint}: {why}; check that the "
                "silo listens there and allows the coordinator to describe it"
            ) from None
        if info.name != caller.name:
            raise PermissionDenied(
                f"certificate {caller.spiffe_id} may register silo {caller.name!r} only, but the "
                f"silo at {endpoint} says it is {info.name!r}"
            )
        record = SiloRecord(
            name=info.name,
            endpoint=endpoint,
            spiffe_id=caller.spiffe_id,
            org=caller.org,
            space=info.space,
            document_count=info.document_count,
            registered_at=time.time(),
        )
        await off_loop(self.executor, lambda: self.state.upsert_silo(record))
        log.info("registered silo %s at %s (space %s)", info.name, endpoint, info.space.space_id)
        return record

    async def list_silos(self) -> list[SiloListing]:
        """Every registered silo, each probed with Describe just now (concurrently)."""
        records = await off_loop(self.executor, self.state.silos)
        return list(await asyncio.gather(*(self._probe(r) for r in records)))

    async def _probe(self, record: SiloRecord) -> SiloListing:
        try:
            info = await self.gateway.describe(record.endpoint, timeout=DESCRIBE_TIMEOUT_S)
        except Exception as error:
            state, why = outcome_of(error)
            return _listing(record, False, record.document_count, f"{state.value}: {why}")
        message = ""
        if info.space.fingerprint != record.space.fingerprint:
            message = (
                f"space changed since registration: fingerprint {record.space.fingerprint} "
                f"registered, {info.space.fingerprint} now; the silo must re-register"
            )
        return _listing(record, True, info.document_count, message, info)

    async def list_adapters(self) -> list[AdapterListing]:
        records, silos = await off_loop(
            self.executor, lambda: (self.state.adapters(), self.state.silos())
        )
        return [adapter_listing(r, staleness(r, silos)) for r in records]

    async def adapter_files(self, adapter_id: str) -> AdapterFiles:
        """The signed artifact of ``adapter_id``, byte for byte, for a silo to verify and use."""
        records = {r.adapter_id: r for r in await off_loop(self.executor, self.state.adapters)}
        record = records.get(adapter_id)
        if record is None:
            raise NotFound(f"no adapter {adapter_id!r} at this coordinator")
        return await off_loop(self.executor, lambda: read_artifact_files(record.path))


def _listing(
    record: SiloRecord,
    healthy: bool,
    document_count: int,
    message: str,
    described: SiloDescription | None = None,
) -> SiloListing:
    return SiloListing(
        silo=record.name,
        endpoint=record.endpoint,
        org=record.org,
        space=record.space,
        healthy=healthy,
        document_count=document_count,
        message=message,
        registered_unix=int(record.registered_at),
        policy=described.policy if described is not None else None,
    )
