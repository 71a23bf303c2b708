"""Assembles and runs the coordinator: config, state, anchors, signing key, gRPC server, health."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health

from silobridge.adapters.signing import generate_signing_key, load_signing_key
from silobridge.audit.wire import recording_interceptors
from silobridge.coordinator.anchors.catalogue import AnchorCatalogue
from silobridge.coordinator.config import CoordinatorConfig
from silobridge.coordinator.service import CoordinatorService
from silobridge.coordinator.servicer import CoordinatorServicer
from silobridge.coordinator.silo_links import GrpcSiloGateway
from silobridge.coordinator.state.store import CoordinatorState
from silobridge.rpc import transport
from silobridge.security.gatekeeper import Gatekeeper
from silobridge.v1 import coordinator_pb2, coordinator_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = coordinator_pb2.DESCRIPTOR.services_by_name["CoordinatorService"].full_name


def open_gatekeeper(config: CoordinatorConfig) -> Gatekeeper:
    """Denylist, per-caller rate limit and the audit log of this coordinator."""
    return Gatekeeper.open(
        denylist=config.policy.denylist,
        rate_per_second=config.policy.rate_per_second,
        burst=config.policy.burst,
        audit=config.audit,
    )


def open_coordinator(config: CoordinatorConfig) -> CoordinatorService:
    """Open state and catalogue, load (or on first start create) the adapter signing key."""
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
    gateway = GrpcSiloGateway(config.tls, insecure=config.server.insecure)
    return CoordinatorService(
        config,
        state,
        catalogue,
        gateway,
        signing_key,
        ThreadPoolExecutor(config.server.workers, thread_name_prefix="coord-cpu"),
        ThreadPoolExecutor(config.server.train_workers, thread_name_prefix="coord-train"),
    )


@dataclass
class RunningCoordinator:
    server: grpc.aio.Server
    port: int
    service: CoordinatorService
    health: health.aio.HealthServicer
    gatekeeper: Gatekeeper

    async def close_resources(self) -> None:
        await self.service.gateway.close()
        for pool in (self.service.executor, self.service.train_executor):
            pool.shutdown(wait=True, cancel_futures=True)
        self.service.state.close()
        self.gatekeeper.close()

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.close_resources()


async def start_coordinator(
    service: CoordinatorService, *, listen: str | None = None
) -> RunningCoordinator:
    """Start serving; ``listen`` overrides the config (tests pass ``127.0.0.1:0``)."""
    config = service.config
    server = transport.create_server(
        interceptors=recording_interceptors(f"coordinator-{config.name}")
    )
    gatekeeper = open_gatekeeper(config)
    coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(
        CoordinatorServicer(service, gatekeeper), server
    )
    health_servicer = transport.add_health(server)
    address = listen or config.server.listen
    port = transport.bind_server(server, address, config.tls, insecure=config.server.insecure)
    await server.start()
    await transport.mark_serving(health_servicer, [SERVICE_NAME])
    return RunningCoordinator(server, port, service, health_servicer, gatekeeper)


async def serve(config: CoordinatorConfig, *, ready: asyncio.Event | None = None) -> None:
    """Run the coordinator until SIGTERM/SIGINT, then shut down gracefully."""
    service = open_coordinator(config)
    running = await start_coordinator(service)
    host = config.server.listen.rsplit(":", 1)[0]
    log.info(
        "coordinator %r: %d silos, %d adapters, state in %s",
        config.name,
        len(service.state.silos()),
        len(service.state.adapters()),
        config.state_dir,
    )
    print(f"coordinator {config.name} listening on {host}:{running.port}", flush=True)
    if ready is not None:
        ready.set()
    await transport.serve_until_signal(
        running.server,
        running.health,
        grace_seconds=config.server.grace_seconds,
        on_stopped=running.close_resources,
    )
