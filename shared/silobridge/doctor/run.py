"""Which checks a config file gets: its role is read from its tables, then each check runs."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from silobridge.client.config import ClientConfig, load_client_config
from silobridge.coordinator.config import CoordinatorConfig, load_coordinator_config
from silobridge.core.config import TlsFiles, load_toml
from silobridge.core.errors import SiloBridgeError
from silobridge.doctor import coordinator_checks, silo_checks
from silobridge.doctor.network_checks import (
    PeerLink,
    dial_target,
    metrics_port_check,
    peer_check,
    port_check,
)
from silobridge.doctor.report import Check, Report, fail, guarded, ok, report, warn
from silobridge.doctor.tls_checks import Expected, key_private, tls_checks
from silobridge.security.identity import (
    Role,
    expected_peer,
    identity_from_certificate_file,
    make_spiffe_id,
)
from silobridge.silo_agent.config import SiloConfig, load_silo_config


def role_of(path: Path) -> Role:
    """A config's role from its tables: ``[silo]``, ``[client]``, else a coordinator's."""
    doc = load_toml(path)
    if "silo" in doc:
        return Role.SILO
    if "client" in doc:
        return Role.CLIENT
    return Role.COORDINATOR


@dataclass(frozen=True)
class ServerSide:
    """What a server's checks share: its TLS files, listen address and its own identity."""

    tls: TlsFiles | None
    listen: str
    name: str
    role: Role

    def expected(self) -> Expected:
        return Expected(self.role, self.name, server=True)

    def own(self) -> PeerLink | None:
        if self.tls is None:
            return None
        consortium = identity_from_certificate_file(self.tls.cert).consortium
        expect = make_spiffe_id(consortium, self.role.value, self.name)
        return PeerLink(f"this {self.role.value}", dial_target(self.listen), expect)


def _tls(tls: TlsFiles | None, expected: Expected) -> list[Check]:
    if tls is None:
        return [
            warn(
                "mutual TLS",
                "insecure: plaintext, no peer is authenticated",
                "only for a throwaway local test: give the config a [tls] table from a kit",
            )
        ]
    return tls_checks(tls, expected)


def _tls_usable(checks: list[Check]) -> bool:
    return not any(c.status.value == "fail" for c in checks)


@dataclass(frozen=True)
class ServerRows:
    """A server's TLS rows, its port rows, and whether its own server answers already."""

    tls: list[Check]
    ports: list[Check]


def _server(side: ServerSide, metrics: str | None, online: bool) -> ServerRows:
    tls = guarded("TLS files", "reinstall the kit", lambda: _tls(side.tls, side.expected()))
    own = side.own() if side.tls is not None and _tls_usable(tls) else None
    grpc_row, serving = port_check("gRPC", side.listen, own=own, tls=side.tls, online=online)
    return ServerRows(tls, [grpc_row, metrics_port_check(metrics, own_serving=serving)])


def _peer(label: str, target: str, expect: Callable[[], str | None]) -> Callable[[], PeerLink]:
    return lambda: PeerLink(label, target, expect())


def _known(label: str, target: str, expect: str) -> Callable[[], PeerLink]:
    return lambda: PeerLink(label, target, expect)


def _peers(
    tls: TlsFiles | None, checks: list[Check], links: list[Callable[[], PeerLink]], online: bool
) -> list[Check]:
    out: list[Check] = []
    for link in links:
        try:
            peer = link()
        except SiloBridgeError as err:
            out.append(fail("reach peer", err.message, "fix the peer's name in the config"))
            continue
        if tls is not None and not _tls_usable(checks) and online:
            out.append(
                fail(
                    f"reach {peer.label}",
                    "not tried: this party's own TLS files failed their checks",
                    "fix the TLS rows above first",
                )
            )
            continue
        out.append(peer_check(peer, tls, online=online))
    return out


def _secret_files(files: Mapping[str, Path | None]) -> list[Check]:
    """Other private keys the server reads: 0600 where present (made at first start if not)."""
    return [key_private(label, path) for label, path in files.items() if path and path.exists()]


def silo_report(config: SiloConfig, online: bool) -> list[Check]:
    side = ServerSide(config.tls, config.server.listen, config.name, Role.SILO)
    rows = _server(side, config.metrics.listen, online)
    links = []
    link = config.coordinator
    if link is not None and config.tls is not None:
        tls = config.tls
        links.append(
            _peer(
                f"coordinator {link.name}",
                link.endpoint,
                lambda: expected_peer(tls.cert, Role.COORDINATOR, link.name),
            )
        )
    checks = [*rows.tls, *rows.ports, *_peers(config.tls, rows.tls, links, online)]
    milvus = config.index.milvus
    secrets = {
        "audit key": config.audit.key if config.audit else None,
        "Milvus token": milvus.token_file if milvus else None,
    }
    checks += guarded("secret files", "chmod 600 them", lambda: _secret_files(secrets))
    checks += guarded(
        "adapter key pinned",
        "pin the coordinator's key",
        lambda: [silo_checks.adapter_key_check(config)],
    )
    checks += guarded(
        "documents", "restore the data directory", lambda: silo_checks.data_checks(config, online)
    )
    return checks


def coordinator_report(config: CoordinatorConfig, online: bool) -> list[Check]:
    side = ServerSide(config.tls, config.server.listen, config.name, Role.COORDINATOR)
    rows = _server(side, config.metrics.listen, online)
    checks = [*rows.tls, *rows.ports]
    audit_key = {"audit key": config.audit.key}
    checks += guarded("secret files", "chmod 600 them", lambda: _secret_files(audit_key))
    hint = "restore it from a backup"
    checks += guarded(
        "adapter signing key", hint, lambda: coordinator_checks.signing_key_checks(config)
    )
    state_rows, state = coordinator_checks.state_checks(config)
    checks += state_rows
    if state is not None:
        checks += guarded(
            "adapter signatures", hint, lambda: coordinator_checks.adapter_checks(config, state)
        )
        silos = [s for s in state.silos if not s.disabled]
        links = [_known(f"silo {s.name}", s.endpoint, s.spiffe_id) for s in silos]
        checks += _peers(config.tls, rows.tls, links, online)
    return checks


def client_report(config: ClientConfig, online: bool) -> list[Check]:
    expected = Expected(Role.CLIENT, "", server=False)
    checks = guarded("TLS files", "reinstall the kit", lambda: _tls(config.tls, expected))
    links = [
        _peer(
            f"coordinator {config.coordinator_name}",
            config.coordinator,
            config.expected_coordinator,
        ),
        _peer(f"home silo {config.home_silo_name}", config.home_silo, config.expected_home_silo),
    ]
    return checks + _peers(config.tls, checks, links, online)


def _checks(role: Role, path: Path, online: bool) -> list[Check]:
    """The config's own row, then (once it loads) every check of its role."""
    loaded = ok("config", f"{path.name} loads as a {role.value}'s config")
    if role is Role.SILO:
        silo = load_silo_config(path)
        return [loaded, *silo_report(silo, online)]
    if role is Role.COORDINATOR:
        coordinator = load_coordinator_config(path)
        return [loaded, *coordinator_report(coordinator, online)]
    client = load_client_config(path)
    return [loaded, *client_report(client, online)]


def diagnose(path: Path, *, online: bool = True) -> Report:
    """Every check for the config file at ``path``; a config that does not load is one row."""
    role_name = "unknown"
    try:
        role = role_of(path)
        role_name = role.value
        checks = _checks(role, path, online)
    except SiloBridgeError as err:
        return report(str(path), role_name, [fail("config", err.message, f"fix {path.name}")])
    return report(str(path), role_name, checks)
