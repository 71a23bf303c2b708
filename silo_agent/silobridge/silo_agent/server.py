"""Assembles and runs a silo agent: config, embedder, data, gRPC server, registration, shutdown."""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from silobridge.core.endpoints import endpoint_host
from silobridge.core.spaces import SpaceDescriptor
from silobridge.embedding.embedders import load_embedder
from silobridge.rpc.server_kit import RunningServer, serve_until_stopped, start_server
from silobridge.security.gatekeeper import Gatekeeper
from silobridge.silo_agent.adapter_fetch import AdapterFetcher
from silobridge.silo_agent.admin import IndexCompactor, SiloAdmin
from silobridge.silo_agent.audit_anchor import HeadAnchor
from silobridge.silo_agent.config import SiloConfig
from silobridge.silo_agent.handlers import SiloHandlers
from silobridge.silo_agent.migration.announce import announce_primary
from silobridge.silo_agent.migration.engine import MigrationEngine
from silobridge.silo_agent.migration.startup import models_for
from silobridge.silo_agent.receiving.local_fit import local_routes
from silobridge.silo_agent.registration import (
    advertise_address,
    register_with_coordinator,
    start_registration,
    stop_registration,
)
from silobridge.silo_agent.routes import Route
from silobridge.silo_agent.service import SiloService
from silobridge.silo_agent.servicer import SiloAdminServicer, SiloServicer
from silobridge.silo_agent.store.data import SiloData
from silobridge.silo_agent.store.index import pin_faiss_threads
from silobridge.silo_agent.telemetry import silo_metrics
from silobridge.v1 import silo_pb2, silo_pb2_grpc

log = logging.getLogger(__name__)
SERVICE_NAME = silo_pb2.DESCRIPTOR.services_by_name["SiloService"].full_name
ADMIN_SERVICE_NAME = silo_pb2.DESCRIPTOR.services_by_name["SiloAdminService"].full_name
# How often a serving silo looks for documents another process (`silo ingest`) wrote.
REFRESH_SECONDS = 1.0
# How long shutdown waits for a background index rebuild before closing the data directory.
REBUILD_JOIN_SECONDS = 120.0


def open_service(config: SiloConfig) -> SiloService:
    """Load the model(s) and open the data directory (refusing a mismatched index).

    A data directory in the middle of a migration names both models (``migration/startup``).
    """
    pin_faiss_threads(config.server.threads)
    source_model, target_model = models_for(config)
    embedder = load_embedder(source_model, threads=config.server.threads)
    data = SiloData.open(config.data_dir, embedder.space, config.index)
    service = SiloService(config, embedder, data)
    service.model_spec, service.migrating_to = source_model, target_model
    return service


@dataclass
class RunningSilo:
    """A started silo server and its servicer (whose call counters operators and tests read)."""

    server: RunningServer
    servicer: SiloServicer

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def metrics_port(self) -> int | None:
        return self.server.metrics_port

    async def stop(self, grace: float) -> None:
        await self.server.stop(grace)


async def start_silo(service: SiloService, *, listen: str | None = None) -> RunningSilo:
    """Start serving ``service``; ``listen`` overrides the config (tests pass ``127.0.0.1:0``)."""
    config = service.config
    executor = ThreadPoolExecutor(max_workers=config.server.workers, thread_name_prefix="silo-cpu")
    # Denylist, per-asker rate limit and the audit log of this silo.
    gatekeeper = Gatekeeper.open(
        denylist=config.access.denylist,
        rate_per_second=config.limits.rate_per_second,
        burst=config.limits.burst,
        audit=config.audit,
        peer_rate_per_second=config.limits.peer_rate_per_second,
        peer_burst=config.limits.peer_burst,
    )
    # Each signed audit checkpoint goes to the coordinator too: evidence outside this host.
    heads = HeadAnchor(config) if config.coordinator is not None else None
    if heads is not None and gatekeeper.audit is not None:
        gatekeeper.audit.on_checkpoint = heads.checkpointed
        latest = gatekeeper.audit.latest_head()
        if latest is not None:
            heads.checkpointed(latest)  # recorded already, or not yet if the last stop was hard
        heads.start()
    # A lambda, not the bound method: a migration swaps ``service.routes`` whole.
    adapters = AdapterFetcher(config, lambda space: service.routes.serves(space))  # noqa: PLW0108
    servicer = SiloServicer(SiloHandlers(service, executor, gatekeeper, adapters))
    compactor = IndexCompactor(service.data)
    loop = asyncio.get_running_loop()
    announcer = _Announcer(service, loop)
    migration = MigrationEngine(
        service,
        service.model_spec,
        after_batch=compactor.maybe_start,
        primary_changed=announcer.primary_changed,
    )
    target = service.migrating_to
    threads = config.server.threads
    target_model = (
        await asyncio.to_thread(load_embedder, target, threads=threads) if target else None
    )
    await asyncio.to_thread(migration.recover, target_model)
    announcer.previous = service.space  # as recovered (a restart in cut_over serves the new)
    admin = SiloAdminServicer(SiloAdmin(service, executor, gatekeeper, compactor, migration))
    refresher = asyncio.get_running_loop().create_task(
        _follow_other_writers(service.data, executor, compactor),
        name=f"silo-{config.name}-refresh",
    )

    # Local fits ([receiving] local_models) run in the background once the server is up.
    stop_fits = threading.Event()
    fits: set[asyncio.Task[None]] = set()

    def add_servicers(server: grpc.aio.Server) -> None:
        silo_pb2_grpc.add_SiloServiceServicer_to_server(servicer, server)
        silo_pb2_grpc.add_SiloAdminServiceServicer_to_server(admin, server)

    async def close_resources() -> None:
        stop_fits.set()
        if fits:
            await asyncio.wait(fits)
        refresher.cancel()
        await asyncio.wait({refresher})
        await asyncio.to_thread(migration.close)
        admin.admin.commands.shutdown(wait=False, cancel_futures=True)
        await announcer.close()
        executor.shutdown(wait=True)
        await asyncio.to_thread(compactor.join, REBUILD_JOIN_SECONDS)
        service.data.close()
        service.replay.close()
        gatekeeper.close()
        if heads is not None:
            await heads.close()  # after the log's last checkpoint
        log.info("silo %r stopped", config.name)

    running = await start_server(
        recorder_name=f"silo-{config.name}",
        add_servicer=add_servicers,
        service_names=[SERVICE_NAME, ADMIN_SERVICE_NAME],
        settings=config.server,
        tls=config.tls,
        close_resources=close_resources,
        listen=listen,
        metrics=silo_metrics(service, gatekeeper, admin.admin, migration, heads),
    )
    announcer.port = running.port
    if config.receiving.local_models:
        fits.add(loop.create_task(_local_fits(service, announcer, stop_fits), name="local-fit"))
    return RunningSilo(running, servicer)


async def _local_fits(service: SiloService, announcer: _Announcer, stop: threading.Event) -> None:
    config = service.config

    def add_route(route: Route) -> None:
        service.routes = service.routes.with_route(route)
        announcer.primary_changed()  # re-register: Describe now lists the space

    await asyncio.to_thread(
        local_routes,
        service.data,
        config.receiving.local_models,
        accepts=config.access.accepts_space,
        sample_size=config.receiving.local_fit_sample,
        batch_size=config.limits.batch_size,
        threads=config.server.threads,
        stop=stop,
        add_route=add_route,
    )


class _Announcer:
    """Re-registers with the coordinator when a cut-over changes the primary space (the engine
    calls from a worker thread; the calls run on the server's event loop)."""

    def __init__(self, service: SiloService, loop: asyncio.AbstractEventLoop) -> None:
        self.service = service
        self.loop = loop
        self.port = 0
        self.previous = service.space
        self.tasks: set[asyncio.Task[None]] = set()

    def primary_changed(self) -> None:
        self.loop.call_soon_threadsafe(self._schedule)

    def _schedule(self) -> None:
        old, self.previous = self.previous, self.service.space
        task = self.loop.create_task(self._announce(old), name="silo-reannounce")
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _announce(self, old: SpaceDescriptor) -> None:
        try:
            if old == self.service.space:  # the spaces served changed, not the primary one
                config = self.service.config
                await register_with_coordinator(config, advertise_address(config, self.port))
                return
            pushed = await announce_primary(
                self.service.config, self.port, old, self.service.embedder
            )
            log.info("re-registered in %s; anchors pushed: %s", self.service.space.space_id, pushed)
        except Exception:  # a background task: log, the status names what to do
            log.exception("re-registering after the primary space changed failed")

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(set(self.tasks))


async def _follow_other_writers(
    data: SiloData, executor: ThreadPoolExecutor, compactor: IndexCompactor
) -> None:
    """Serve what another process writes into the data directory, within a second, and fold
    it into the index once there is enough of it."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(REFRESH_SECONDS)
        try:
            await loop.run_in_executor(executor, data.refresh)
            compactor.maybe_start()
        except Exception:  # a background task: log and keep following
            log.exception("could not pick up changes to the data directory")


async def serve(
    config: SiloConfig, *, ready: asyncio.Event | None = None, stop: asyncio.Event | None = None
) -> None:
    """Run the silo until SIGTERM/SIGINT (or ``stop``), then shut down gracefully.

    With a ``[coordinator]`` section the silo registers itself in the background once serving.
    """
    service = open_service(config)
    silo = await start_silo(service)
    log.info(
        "silo %r serving %d documents in space %s on %s:%d",
        config.name,
        service.data.count(),
        service.space.space_id,
        endpoint_host(config.server.listen),
        silo.port,
    )
    # After the server started: the coordinator calls Describe back while registering. The
    # task first runs once the "listening on" line is printed.
    registration = start_registration(config, silo.port)
    try:
        await serve_until_stopped(
            silo.server, config.server, banner=f"silo {config.name}", ready=ready, stop=stop
        )
    finally:
        await stop_registration(registration)
