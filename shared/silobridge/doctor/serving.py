"""``silobridge health``: a server's own health, asked over mTLS as the identity it holds."""

from __future__ import annotations

from pathlib import Path

from silobridge.coordinator.config import load_coordinator_config
from silobridge.core.config import TlsFiles
from silobridge.core.errors import ConfigError
from silobridge.doctor.network_checks import dial_target
from silobridge.doctor.run import role_of
from silobridge.rpc.health_probe import health_status
from silobridge.security.identity import Role, identity_from_certificate_file, make_spiffe_id
from silobridge.silo_agent.config import load_silo_config


def _server_of(path: Path) -> tuple[Role, str, str, TlsFiles | None]:
    role = role_of(path)
    if role is Role.SILO:
        silo = load_silo_config(path)
        return role, silo.name, silo.server.listen, silo.tls
    if role is Role.COORDINATOR:
        hub = load_coordinator_config(path)
        return role, hub.name, hub.server.listen, hub.tls
    raise ConfigError(f"{path} is a client's config: a client runs no server to ask")


async def own_health(path: Path, *, timeout: float) -> tuple[str, str]:
    """(the address asked, its health status name) for the server ``path`` configures."""
    role, name, listen, tls = _server_of(path)
    if listen.endswith(":0"):
        raise ConfigError(
            f"{path}: [server] listen = {listen!r} picks a port at start; health needs a fixed port"
        )
    target = dial_target(listen)
    expect = None
    if tls is not None:
        consortium = identity_from_certificate_file(tls.cert).consortium
        expect = make_spiffe_id(consortium, role.value, name)
    status = await health_status(target, tls, expect=expect, timeout=timeout, insecure=tls is None)
    return target, status
