"""One bootstrap for both servers: gRPC server, wire recording, health, mTLS bind, serve, stop.

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
from silobridge.rpc import transport

log = logging.getLogger(__name__)

CloseFn = Callable[[], Awaitable[None]]


@dataclass
class RunningServer:
    """A started server, the port it bound, and what frees its resources once stopped."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    close_resources: CloseFn

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
) -> RunningServer:
    """Build, bind and start a server; report it SERVING.

    ``listen`` overrides ``settings.listen`` (tests pass ``127.0.0.1:0``: the OS picks a port).
    """
    server = transport.create_server(interceptors=recording_interceptors(recorder_name))
    add_servicer(server)
    health_servicer = transport.add_health(server)
    try:
        address = listen or settings.listen
        port = transport.bind_server(server, address, tls, insecure=settings.insecure)
        await server.start()
    except BaseException:
        await server.stop(None)
        await close_resources()
        raise
    await transport.mark_serving(health_servicer, service_names)
    start_writer(recorder_name)  # only with $SILOBRIDGE_STAGE_TIMINGS (the live benchmark)
    return RunningServer(server, port, health_servicer, close_resources)


async def serve_until_stopped(
    running: RunningServer,
    settings: ServerSettings,
    *,
    banner: str,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Print ``<banner> listening on host:port`` (scripts wait for it), then serve until
    SIGTERM/SIGINT or ``stop``, and stop gracefully."""
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
