"""One bootstrap for both servers: gRPC server, wire recording, metrics, health, mTLS bind,
serve, stop.

The silo agent and the coordinator each say only what is theirs (which servicer, what to close);
the order of starting and of a graceful stop lives here once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health

from silobridge.audit.wire import recording_interceptors
from silobridge.core.config import ServerSettings, TlsFiles
from silobridge.core.endpoints import endpoint_host
from silobridge.core.stage_timer import start_writer
from silobridge.metrics.exporter import ServerMetrics
from silobridge.metrics.interceptor import RpcMetrics
from silobridge.rpc import transport

log = logging.getLogger(__name__)

CloseFn = Callable[[], Awaitable[None]]


@dataclass
class RunningServer:
    """A started server, the port it bound, and what frees its resources once stopped."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    close_resources: CloseFn  # stops the metrics endpoint too
    metrics: ServerMetrics | None = None

    @property
    def metrics_port(self) -> int | None:
        """Where ``/metrics`` is served (``None``: metrics are off)."""
        return self.metrics.port if self.metrics is not None else None

    async def stop(self, grace: float) -> None:
        """NOT_SERVING, let in-flight calls finish for ``grace`` seconds, then free resources."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        await self.close_resources()


async def start_server(
    *,
    recorder_name: str,
    add_servicer: Callable[[grpc.aio.Server], None],
    service_names: Sequence[str],
    settings: ServerSettings,
    tls: TlsFiles | None,
    close_resources: CloseFn,
    listen: str | None = None,
    metrics: ServerMetrics | None = None,
) -> RunningServer:
    """Build, bind and start a server; report it SERVING.

    ``listen`` overrides ``settings.listen`` (tests pass ``127.0.0.1:0``: the OS picks a port).
    ``metrics``: the server's metrics (its own collectors added already), counted per RPC here
    and served at its ``listen`` from now until the server's resources are closed.
    """
    interceptors = recording_interceptors(recorder_name)
    if metrics is not None:
        # Outermost: a call's time includes the recorder's work, its status is the final one.
        interceptors = [RpcMetrics(metrics.registry), *interceptors]
    server = transport.create_server(interceptors=interceptors)
    add_servicer(server)
    health_servicer = transport.add_health(server)

    async def release() -> None:
        if metrics is not None:
            metrics.stop()  # first: nothing to scrape from closed resources
        await close_resources()

    try:
        address = listen or settings.listen
        port = transport.bind_server(server, address, tls, insecure=settings.insecure)
        await server.start()
        if metrics is not None:
            metrics.start()
    except BaseException:
        await server.stop(None)
        await release()
        raise
    await transport.mark_serving(health_servicer, service_names)
    start_writer(recorder_name)  # only with $SILOBRIDGE_STAGE_TIMINGS (the live benchmark)
    return RunningServer(server, port, health_servicer, release, metrics)


async def serve_until_stopped(
    running: RunningServer,
    settings: ServerSettings,
    *,
    banner: str,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Print ``metrics on http://host:port/metrics`` when metrics are on, then ``<banner>
    listening on host:port`` (scripts wait for it), then serve until SIGTERM/SIGINT or
    ``stop``, and stop gracefully."""
    if running.metrics is not None:
        print(f"metrics on {running.metrics.url}", flush=True)
    print(f"{banner} listening on {endpoint_host(settings.listen)}:{running.port}", flush=True)
    if ready is not None:
        ready.set()
    await transport.serve_until_signal(
        running.server,
        running.health,
        grace_seconds=settings.grace_seconds,
        on_stopped=running.close_resources,
        stop_event=stop,
    )
