"""Ports this party listens on, and the peers it must reach over mTLS as who they should be."""

from __future__ import annotations

import asyncio
import errno
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass

from silobridge.core.config import TlsFiles
from silobridge.core.endpoints import validate_endpoint
from silobridge.core.errors import InvalidArgument, SiloBridgeError
from silobridge.doctor.report import Check, fail, ok, skip, warn
from silobridge.rpc.health_probe import SERVING, health_status

PROBE_SECONDS = 5.0


@dataclass(frozen=True)
class PeerLink:
    """A server this party calls: what it is called here, where, and the identity it must hold."""

    label: str
    target: str
    expect: str | None


def _bind(host: str, port: int) -> OSError | None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the servers bind: a port whose last connections linger in TIME_WAIT is free,
        # one with a listener is still refused.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as err:
            return err
    return None


def dial_target(listen: str) -> str:
    """Where this machine reaches its own server listening on ``listen``."""
    host, _, port = listen.rpartition(":")
    if host in ("0.0.0.0", "", "[::]"):  # noqa: S104 - a wildcard is reached on loopback
        host = "127.0.0.1" if host != "[::]" else "[::1]"
    return f"{host}:{port}"


def port_check(
    label: str, listen: str, *, own: PeerLink | None, tls: TlsFiles | None, online: bool
) -> tuple[Check, bool]:
    """``listen`` is free to bind, or this party's own server serves on it (the bool)."""
    name = f"{label} port"
    try:
        validate_endpoint(listen, allow_any_port=True)
    except InvalidArgument as err:
        return fail(name, err.message, "fix the listen address in the config"), False
    host, _, port_text = listen.rpartition(":")
    port = int(port_text)
    if port == 0:
        return ok(name, f"{listen}: the system picks a free port at start"), False
    problem = _bind(host.strip("[]"), port)
    if problem is None:
        return ok(name, f"{listen} can be bound"), False
    if problem.errno != errno.EADDRINUSE:
        hint = "listen on an address of this machine (0.0.0.0 for every interface)"
        return fail(name, f"cannot bind {listen}: {problem.strerror}", hint), False
    return _in_use(name, listen, own=own, tls=tls, online=online)


def _in_use(
    name: str, listen: str, *, own: PeerLink | None, tls: TlsFiles | None, online: bool
) -> tuple[Check, bool]:
    port = listen.rpartition(":")[2]
    stop = f"stop what listens on port {port} (`ss -ltnp 'sport = :{port}'`) or pick another port"
    if not online or own is None:
        detail = f"{listen} is in use (by another process, or by this party's server already up)"
        return fail(name, detail, f"{stop}; without --offline doctor asks who it is"), False
    status = _probe(own, tls)
    if status == SERVING:
        return ok(name, f"{listen} is in use by this party's own server (SERVING)"), True
    said = status if isinstance(status, str) else status.message
    return fail(name, f"{listen} is in use, and not by this party's server ({said})", stop), False


def _probe(peer: PeerLink, tls: TlsFiles | None) -> str | SiloBridgeError:
    try:
        return asyncio.run(
            health_status(peer.target, tls, expect=peer.expect, timeout=PROBE_SECONDS)
        )
    except SiloBridgeError as err:
        return err


def peer_check(peer: PeerLink, tls: TlsFiles | None, *, online: bool) -> Check:
    """``peer`` answers a health check over mTLS with the identity it must hold."""
    name = f"reach {peer.label}"
    if not online:
        return skip(name, f"{peer.target}: not tried (--offline)")
    outcome = _probe(peer, tls)
    who = peer.expect or "any consortium server"
    if outcome == SERVING:
        return ok(name, f"{peer.target} is {who}, SERVING")
    if isinstance(outcome, str):
        return warn(
            name,
            f"{peer.target} is {who} but reports {outcome}",
            "it is starting or shutting down: look at its log, then run doctor again",
        )
    if "is not" in outcome.message and "certificate names another identity" in outcome.message:
        return fail(
            name,
            outcome.message,
            f"point the config at {peer.label}'s own address, or fix its expected name",
        )
    return fail(
        name,
        f"{peer.target}: {outcome.message}",
        f"start {peer.label}, or fix its address in the config; check that a firewall lets "
        "this machine reach it",
    )


def _serves_metrics(listen: str) -> bool:
    url = f"http://{dial_target(listen)}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=PROBE_SECONDS) as reply:
            return bool(reply.status == 200 and b"silobridge_" in reply.read())
    except (urllib.error.URLError, OSError):
        return False


def metrics_port_check(listen: str | None, *, own_serving: bool) -> Check:
    """``[metrics] listen`` is free, or serves /metrics of this party's running server."""
    name = "metrics port"
    if listen is None:
        return skip(name, "no [metrics] table: metrics are off")
    host, _, port_text = listen.rpartition(":")
    port = int(port_text)
    if port == 0:
        return ok(name, f"{listen}: the system picks a free port at start")
    problem = _bind(host.strip("[]"), port)
    if problem is None:
        return ok(name, f"{listen} can be bound")
    # Another SiloBridge server's metrics look the same: only with this party's own server
    # answering on its gRPC port is the port taken to be its own.
    if problem.errno == errno.EADDRINUSE and own_serving and _serves_metrics(listen):
        return ok(name, f"{listen} serves /metrics (this party's server is up)")
    return fail(
        name,
        f"cannot bind {listen}: {problem.strerror}",
        f"free port {port} or set another [metrics] listen (each server on a host needs its own)",
    )
