"""Assembles and runs the coordinator: config, state, anchors, signing key, gRPC server, health,
metrics."""

from __future__ import annotations

import asyncio
import functools
import logging
from concurrent.futures import ThreadPoolExecutor

from silobridge.adapters.signing import generate_signing_key, load_signing_key
from silobridge.coordinator.anchors.catalogue import AnchorCatalogue
from silobridge.coordinator.config import CoordinatorConfig
from silobridge.coordinator.revocation import SiloRevocation
from silobridge.coordinator.service import CoordinatorService
from silobridge.coordinator.servicer import CoordinatorServicer
from silobridge.coordinator.silo_gateway import SiloGateway
from silobridge.coordinator.silo_links import GrpcSiloGateway
from silobridge.coordinator.state.store import CoordinatorState
from silobridge.metrics.exporter import ServerMetrics, open_metrics
from silobridge.metrics.refusals import observe_gatekeeper
from silobridge.metrics.search import CoalescedCalls, SearchMetrics
from silobridge.rpc.server_kit import RunningServer, serve_until_stopped, start_server
from silobridge.security.denylist import Denylist
from silobridge.security.gatekeeper import Gatekeeper
from silobridge.v1 import coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name
# What ``start_coordinator`` returns: the server, its port, and how to stop it.
RunningCoordinator = RunningServer


def open_gatekeeper(config: CoordinatorConfig) -> Gatekeeper:
    """Denylist, per-caller rate limit and the audit log of this coordinator."""
    return Gatekeeper.open(
        denylist=config.policy.denylist,
        rate_per_second=config.policy.rate_per_second,
        burst=config.policy.burst,
        audit=config.audit,
        peer_rate_per_second=config.policy.peer_rate_per_second,
        peer_burst=config.policy.peer_burst,
    )


def open_coordinator(
    config: CoordinatorConfig, *, gateway: SiloGateway | None = None
) -> CoordinatorService:
    """Open state and catalogue, load (or on first start create) the adapter signing key.

    Silos are reached over mTLS unless ``gateway`` says otherwise (tests pass a double).
    """
    config.state_dir.mkdir(parents=True, exist_ok=True)
    if not config.signing_key.exists():
        public = generate_signing_key(config.signing_key)
        log.warning(
            "generated the adapter signing key %s; silos verify artifacts with %s",
            config.signing_key,
            public,
        )
    signing_key = load_signing_key(config.signing_key)
    state = CoordinatorState.open(config.state_dir)
    catalogue = AnchorCatalogue(config.state_dir / "anchors")
    # The endpoints' certificates are fetched over TLS only for real links, never for a double.
    revocation = SiloRevocation(
        Denylist(config.policy.denylist), config.tls if gateway is None else None
    )
    if gateway is None:
        gateway = GrpcSiloGateway(config.tls, insecure=config.server.insecure)
    return CoordinatorService(
        config,
        state,
        catalogue,
        gateway,
        signing_key,
        ThreadPoolExecutor(config.server.workers, thread_name_prefix="coord-cpu"),
        ThreadPoolExecutor(config.server.train_workers, thread_name_prefix="coord-train"),
        revocation,
    )


async def start_coordinator(
    service: CoordinatorService, *, listen: str | None = None
) -> RunningCoordinator:
    """Start serving; ``listen`` overrides the config (tests pass ``127.0.0.1:0``)."""
    config = service.config
    gatekeeper = open_gatekeeper(config)
    servicer = CoordinatorServicer(service, gatekeeper)
    metrics = open_metrics(config.metrics)
    if metrics is not None:
        _observe(metrics, service, gatekeeper)

    async def close_resources() -> None:
        await service.close()
        gatekeeper.close()

    return await start_server(
        recorder_name=f"coordinator-{config.name}",
        add_servicer=functools.partial(
            coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server, servicer
        ),
        service_names=[SERVICE_NAME],
        settings=config.server,
        tls=config.tls,
        close_resources=close_resources,
        listen=listen,
        metrics=metrics,
    )


def _observe(metrics: ServerMetrics, service: CoordinatorService, gatekeeper: Gatekeeper) -> None:
    """What the coordinator's metrics are told and read: refusals and audit, the fan-out."""
    observe_gatekeeper(metrics.registry, gatekeeper)
    service.search.observer = SearchMetrics(metrics.registry)
    calls = service.search.silo_calls
    metrics.registry.register(
        CoalescedCalls(lambda: (calls.coalesced_calls, calls.coalesced_queries))
    )


async def serve(
    config: CoordinatorConfig,
    *,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the coordinator until SIGTERM/SIGINT (or ``stop``), then shut down gracefully."""
    service = open_coordinator(config)
    running = await start_coordinator(service)
    log.info(
        "coordinator %r: %d silos, %d adapters, state in %s",
        config.name,
        len(service.state.silos()),
        len(service.state.adapters()),
        config.state_dir,
    )
    await serve_until_stopped(
        running, config.server, banner=f"coordinator {config.name}", ready=ready, stop=stop
    )
