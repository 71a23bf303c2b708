"""Assembles and runs a silo agent: config, embedder, data, gRPC server, health, shutdown."""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health

from silobridge.audit.wire import recording_interceptors
from silobridge.embedding.embedders import load_embedder
from silobridge.rpc import transport
from silobridge.security.gatekeeper import Gatekeeper
from silobridge.silo_agent.adapter_fetch import AdapterFetcher
from silobridge.silo_agent.config import SiloConfig
from silobridge.silo_agent.registration import start_registration, stop_registration
from silobridge.silo_agent.service import SiloService
from silobridge.silo_agent.servicer import SiloServicer
from silobridge.silo_agent.store.data import SiloData
from silobridge.silo_agent.store.index import pin_faiss_threads
from silobridge.v1 import silo_pb2, silo_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = silo_pb2.DESCRIPTOR.services_by_name["SiloService"].full_name


def open_gatekeeper(config: SiloConfig) -> Gatekeeper:
    """Denylist, per-asker rate limit and the audit log of this silo."""
    return Gatekeeper.open(
        denylist=config.access.denylist,
        rate_per_second=config.limits.rate_per_second,
        burst=config.limits.burst,
        audit=config.audit,
    )


def open_service(config: SiloConfig) -> SiloService:
    """Load the model and open the data directory (refusing a mismatched index)."""
    pin_faiss_threads(config.server.threads)
    embedder = load_embedder(config.model, threads=config.server.threads)
    data = SiloData.open(config.data_dir, embedder.space, config.index)
    return SiloService(config, embedder, data)


@dataclass
class RunningSilo:
    """A started server and what it needs to stop cleanly."""

    server: grpc.aio.Server
    port: int
    servicer: SiloServicer
    health: health.aio.HealthServicer
    executor: ThreadPoolExecutor

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.close_resources()

    def close_resources(self) -> None:
        self.executor.shutdown(wait=True)
        self.servicer.service.data.close()
        self.servicer.gatekeeper.close()


async def start_silo(service: SiloService, *, listen: str | None = None) -> RunningSilo:
    """Start serving ``service``; ``listen`` overrides the config (tests pass ``127.0.0.1:0``)."""
    config = service.config
    executor = ThreadPoolExecutor(max_workers=config.server.workers, thread_name_prefix="silo-cpu")
    server = transport.create_server(interceptors=recording_interceptors(f"silo-{config.name}"))
    servicer = SiloServicer(
        service, executor, open_gatekeeper(config), AdapterFetcher(config, service.embedder.space)
    )
    silo_pb2_grpc.add_SiloServiceServicer_to_server(servicer, server)
    health_servicer = transport.add_health(server)
    address = listen or config.server.listen
    port = transport.bind_server(server, address, config.tls, insecure=config.server.insecure)
    await server.start()
    await transport.mark_serving(health_servicer, [SERVICE_NAME])
    return RunningSilo(server, port, servicer, health_servicer, executor)


async def serve(
    config: SiloConfig, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run the silo until SIGTERM/SIGINT (or ``stop``), then shut down gracefully.

    With a ``[coordinator]`` section the silo registers itself in the background once serving.
    """
    service = open_service(config)
    running = await start_silo(service)
    host = config.server.listen.rsplit(":", 1)[0]
    log.info(
        "silo %r serving %d documents in space %s on %s:%d",
        config.name,
        service.data.count(),
        service.embedder.space.space_id,
        host,
        running.port,
    )
    print(f"silo {config.name} listening on {host}:{running.port}", flush=True)
    # After the server started: the coordinator calls Describe back while registering.
    registration = start_registration(config, running.port)
    if ready is not None:
        ready.set()

    async def flush() -> None:
        running.close_resources()
        log.info("silo %r stopped", config.name)

    try:
        await transport.serve_until_signal(
            running.server,
            running.health,
            grace_seconds=config.server.grace_seconds,
            on_stopped=flush,
            stop_event=stop,
        )
    finally:
        await stop_registration(registration)
