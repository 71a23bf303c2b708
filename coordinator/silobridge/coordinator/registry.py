"""The registry: silos register (named by their certificate), are listed with a live probe, and
adapters are listed with their staleness and handed out as signed artifacts."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from concurrent.futures import Executor
from pathlib import Path

from silobridge.adapters.artifact import MANIFEST_FILE, SIGNATURE_FILE, WEIGHTS_FILE
from silobridge.coordinator.revocation import SiloRevocation
from silobridge.coordinator.search.translation import staleness
from silobridge.coordinator.silo_gateway import SiloGateway, outcome_of
from silobridge.coordinator.state.records import AdapterRecord, SiloRecord
from silobridge.coordinator.state.store import CoordinatorState
from silobridge.core.endpoints import validate_endpoint
from silobridge.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from silobridge.core.listings import (
    AdapterFiles,
    AdapterListing,
    SiloAction,
    SiloDescription,
    SiloListing,
    SiloState,
)
from silobridge.core.offload import off_loop
from silobridge.core.spaces import SpaceDescriptor
from silobridge.security.identity import PeerIdentity, Role

log = logging.getLogger(__name__)
DESCRIBE_TIMEOUT_S = 5.0
# An admin's reason for disabling a silo is shown in listings and every query's status.
MAX_REASON_CHARS = 500
# How long one Describe of a silo answers every ListSilos (issue 11: each listing probed every
# silo, so listing in a loop made the coordinator flood the silos). 0: probe every time.
DEFAULT_PROBE_CACHE_SECONDS = 5.0
# A probe's cache key: the silo record as registered; re-registering starts a fresh probe.
_ProbeKey = tuple[str, str, str, float, str]


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

    def __init__(
        self,
        state: CoordinatorState,
        gateway: SiloGateway,
        executor: Executor,
        revocation: SiloRevocation | None = None,
        *,
        probe_cache_seconds: float = DEFAULT_PROBE_CACHE_SECONDS,
    ) -> None:
        self.state = state
        self.gateway = gateway
        self.executor = executor
        self.revocation = revocation
        self.probe_cache_seconds = probe_cache_seconds
        # Per silo: when its probe started, and the probe (shared while in flight, then reused
        # until it is probe_cache_seconds old).
        self._probes: dict[_ProbeKey, tuple[float, asyncio.Task[SiloListing]]] = {}

    async def register(self, caller: PeerIdentity, endpoint: str) -> SiloRecord:
        """Record a silo at ``endpoint``; its name comes from its certificate, its space from it."""
        if caller.role != Role.SILO:
            raise PermissionDenied(
                f"only silo certificates may register; {caller.spiffe_id} is not"
            )
        validate_endpoint(endpoint)
        try:
            # Whoever answers there must hold the registering silo's own certificate.
            info = await self.gateway.describe(
                endpoint, expect=caller.spiffe_id, timeout=DESCRIBE_TIMEOUT_S
            )
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
        server_cert = None
        if self.revocation is not None:
            try:
                server_cert = await self.revocation.server_certificate(
                    endpoint, timeout=DESCRIBE_TIMEOUT_S, refresh=True
                )
            except Unavailable as error:
                raise FailedPrecondition(f"{error.message}; registration refused") from None
            refused = self.revocation.refused_certificate(server_cert, endpoint)
            if refused:
                raise PermissionDenied(f"{refused}; silo {info.name!r} cannot register")
        record = SiloRecord(
            name=info.name,
            endpoint=endpoint,
            spiffe_id=caller.spiffe_id,
            org=caller.org,
            space=info.space,
            document_count=info.document_count,
            registered_at=time.time(),
            also_serves=_besides(info.space, info) or (),  # never None for its own space
            cert_serial=caller.serial,
            cert_fingerprint=caller.fingerprint,
            server_serial=server_cert.serial if server_cert is not None else "",
            server_fingerprint=server_cert.fingerprint if server_cert is not None else "",
        )
        await off_loop(self.executor, lambda: self.state.upsert_silo(record))
        log.info("registered silo %s at %s (space %s)", info.name, endpoint, info.space.space_id)
        return record

    async def list_silos(self) -> list[SiloListing]:
        """Every registered silo, each probed with Describe just now (concurrently)."""
        records = await off_loop(self.executor, self.state.silos)
        # Probes and certificate checks side by side: a slow silo costs one timeout, not two.
        listings, reasons = await asyncio.gather(
            asyncio.gather(*(self._cached_probe(r) for r in records)),
            asyncio.gather(*(self._denied_reason(r) for r in records)),
        )
        return [
            dataclasses.replace(listing, denied_reason=reason)
            for listing, reason in zip(listings, reasons, strict=True)
        ]

    async def _denied_reason(self, record: SiloRecord) -> str:
        """Why queries skip ``record``'s silo, its endpoint's certificate checked again."""
        if self.revocation is None:
            return record.disabled and f"disabled by a consortium admin: {record.disabled}"
        try:
            await self.revocation.server_certificate(record.endpoint, timeout=DESCRIBE_TIMEOUT_S)
        except Unavailable as error:
            # An unreachable silo is shown unhealthy by its probe; routing uses what was seen.
            log.info("%s", error.message)
        return self.revocation.denied_reason(record)

    async def _cached_probe(self, record: SiloRecord) -> SiloListing:
        """``_probe``'s answer, shared with concurrent callers and reused for a few seconds."""
        if self.probe_cache_seconds <= 0:
            return await self._probe(record)
        key: _ProbeKey = (
            record.name,
            record.endpoint,
            record.spiffe_id,
            record.registered_at,
            record.space.fingerprint,
        )
        now = time.monotonic()
        ttl = self.probe_cache_seconds
        for stale in [k for k, (at, _task) in self._probes.items() if now - at >= ttl]:
            del self._probes[stale]
        cached = self._probes.get(key)
        if cached is None:
            task = asyncio.get_running_loop().create_task(
                self._probe(record), name=f"probe-{record.name}"
            )
            cached = self._probes[key] = (now, task)
        # Shielded: a caller that goes away does not cancel the probe others wait for.
        return await asyncio.shield(cached[1])

    async def _probe(self, record: SiloRecord) -> SiloListing:
        try:
            info = await self.gateway.describe(
                record.endpoint, expect=record.spiffe_id, timeout=DESCRIBE_TIMEOUT_S
            )
        except Exception as error:
            state, why = outcome_of(error)
            return _listing(record, False, record.document_count, f"{state.value}: {why}")
        # What the silo serves besides its registered space, as it says now (None: it no longer
        # serves the registered space at all).
        besides = _besides(record.space, info)
        message = ""
        if info.space.fingerprint != record.space.fingerprint:
            then = (
                "the silo must re-register"
                if besides is None
                else "it still answers in the registered space while it migrates, but the silo "
                "should re-register"
            )
            message = (
                f"space changed since registration: fingerprint {record.space.fingerprint} "
                f"registered, {info.space.fingerprint} now; {then}"
            )
        if besides is not None and besides != record.also_serves:
            # A silo starts (or ends) serving another space while it migrates, without
            # re-registering: routing follows from the next probe on.
            spaces = besides
            updated = await off_loop(
                self.executor,
                lambda: self.state.update_also_serves(record.name, record.space, spaces),
            )
            if updated:
                log.info(
                    "silo %s now also serves %s",
                    record.name,
                    ", ".join(s.space_id for s in spaces) or "no other space",
                )
                record = dataclasses.replace(record, also_serves=spaces)
        return _listing(record, True, info.document_count, message, info)

    async def manage(
        self, caller: PeerIdentity, name: str, action: SiloAction, reason: str
    ) -> SiloState:
        """Disable (routing it nothing), enable or remove silo ``name``; its state afterwards."""
        if len(reason) > MAX_REASON_CHARS or not reason.isprintable():
            raise InvalidArgument(
                f"the reason must be printable text of at most {MAX_REASON_CHARS} characters"
            )
        if action is SiloAction.REMOVE:
            await off_loop(self.executor, lambda: self.state.remove_silo(name))
            log.warning("silo %s removed by %s: %s", name, caller.spiffe_id, reason or "-")
            return SiloState(name, "removed", reason)
        if action is SiloAction.DISABLE:
            why = f"{reason.strip() or 'no reason given'} ({caller.spiffe_id or 'an admin'})"
        else:
            why = ""
        record = await off_loop(self.executor, lambda: self.state.set_silo_disabled(name, why))
        log.warning("silo %s %sd by %s: %s", name, action.value, caller.spiffe_id, why or "-")
        return SiloState(record.name, "disabled" if record.disabled else "enabled", why)

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


def _besides(space: SpaceDescriptor, info: SiloDescription) -> tuple[SpaceDescriptor, ...] | None:
    """The spaces a silo described by ``info`` answers in besides ``space``, each once and in its
    order (its own first); ``None`` when it does not answer in ``space`` at all."""
    served: dict[str, SpaceDescriptor] = {}
    for candidate in (info.space, *info.also_serves):
        served.setdefault(candidate.fingerprint, candidate)
    if space.fingerprint not in served:
        return None
    return tuple(s for fingerprint, s in served.items() if fingerprint != space.fingerprint)


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
        also_serves=record.also_serves,
    )
