"""One server's metrics: its own registry and the plain-HTTP ``/metrics`` endpoint serving it.

Each server gets a ``CollectorRegistry`` of its own, never the process-global one, so that
several servers in one process (the tests run a silo and a coordinator side by side) keep their
counts apart. The endpoint is plain HTTP: what it serves is counts, sizes and timings, never a
document, a vector, a query or a caller's identity; still, keep it on an internal interface.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.exposition import start_http_server

from silobridge.core.config import MetricsSettings
from silobridge.core.endpoints import endpoint_host
from silobridge.core.errors import ConfigError, FailedPrecondition

log = logging.getLogger(__name__)

# How long stopping waits for the HTTP thread (it ends within one poll interval, 0.5 s).
STOP_JOIN_SECONDS = 5.0


class ServerMetrics:
    """A registry to add metrics to, then ``start`` to serve it at ``listen``; ``stop`` ends it."""

    def __init__(self, listen: str) -> None:
        self.listen = listen
        self.registry = CollectorRegistry()
        # CPU, memory and open files of the process, as every Prometheus exporter has them.
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        self._http: WSGIServer | None = None
        self._thread: threading.Thread | None = None
        self.port: int | None = None  # the bound port once started (``listen`` may say 0)

    @property
    def url(self) -> str:
        if self.port is None:
            raise FailedPrecondition("the metrics endpoint is not started")
        return f"http://{endpoint_host(self.listen)}:{self.port}/metrics"

    def start(self) -> int:
        """Serve ``/metrics`` on a thread of its own; returns the bound port."""
        host, _sep, port = self.listen.rpartition(":")
        bare = host[1:-1] if host.startswith("[") else host
        try:
            self._http, self._thread = start_http_server(
                int(port), addr=bare, registry=self.registry
            )
        except OSError as error:
            raise ConfigError(
                f"cannot serve metrics on {self.listen} ([metrics] listen): {error.strerror}"
            ) from None
        self.port = int(self._http.server_port)
        if not _is_loopback(bare):
            log.warning(
                "metrics are served over plain HTTP on %s; keep the port on an internal network",
                self.url,
            )
        return self.port

    def stop(self) -> None:
        """Stop serving (idempotent); a scrape in progress finishes first."""
        http, thread = self._http, self._thread
        self._http = self._thread = None
        if http is None:
            return
        http.shutdown()
        http.server_close()
        if thread is not None:
            thread.join(STOP_JOIN_SECONDS)


def open_metrics(settings: MetricsSettings) -> ServerMetrics | None:
    """The server's metrics when its config has ``[metrics] listen``, else ``None`` (off)."""
    return ServerMetrics(settings.listen) if settings.listen is not None else None


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
