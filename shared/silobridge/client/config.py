"""The client's configuration (``client.toml``): the coordinator, the home silo, TLS.

::

    [client]
    coordinator = "coordinator.example.org:50050"
    home_silo = "silo.bible.example.org:50051"   # your own organization's silo: embeds queries
    timeout_seconds = 30.0
    # insecure = true                            # plaintext, no [tls]: throwaway local tests only

    [tls]                                        # relative paths are relative to this file
    cert = "certs/alice.crt"
    key = "certs/alice.key"
    ca = "certs/ca.crt"
"""

from __future__ import annotations

import ipaddress
import math
import re
from dataclasses import dataclass
from pathlib import Path

from silobridge.shared.config_io import Section, load_toml, refuse_unknown_sections
from silobridge.shared.errors import ConfigError, InvalidArgument
from silobridge.shared.transport import TlsFiles, tls_from_config

DEFAULT_TIMEOUT_SECONDS = 30.0

# One DNS label (RFC 1123: letters, digits, inner hyphens; at most 63 characters), plus the
# underscores that container service names (docker compose) use and resolvers accept.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_MAX_HOSTNAME = 253


def validate_endpoint(value: str) -> str:
    """Check a ``host:port`` address (DNS name, IPv4, or ``[IPv6]``) and return it unchanged.

    Raises InvalidArgument saying what is wrong; schemes (``https://``), paths and spaces are
    refused because gRPC would otherwise fail later with a much less helpful message.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise InvalidArgument(f"{value!r} is not host:port (for example 127.0.0.1:50050)")
    if not _PORT.match(port) or not 1 <= int(port) <= 65535:
        raise InvalidArgument(f"{value!r}: port {port!r} must be a number from 1 to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidArgument(f"{value!r}: {host} is not an IPv6 address") from None
        return value
    labels = host.split(".")
    if len(host) > _MAX_HOSTNAME or not all(_LABEL.match(label) for label in labels):
        raise InvalidArgument(
            f"{value!r}: host {host!r} must be a DNS name, an IPv4 address or [IPv6]"
        )
    if all(label.isdigit() for label in labels):
        # All-numeric hosts are meant as IPv4; "300.1.1.1" would otherwise be taken as a name.
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise InvalidArgument(f"{value!r}: {host} is not an IPv4 address") from None
    return value


@dataclass(frozen=True)
class ClientConfig:
    source: Path
    coordinator: str
    home_silo: str
    timeout_seconds: float
    insecure: bool
    tls: TlsFiles | None


def _endpoint(section: Section, key: str) -> str:
    value = section.require(key, str)
    try:
        return validate_endpoint(value)
    except InvalidArgument as error:
        raise ConfigError(f"{section.source}: [{section.name}] {key}: {error.message}") from None


def load_client_config(path: Path) -> ClientConfig:
    """Read and check ``client.toml``; every problem is a ConfigError naming the key."""
    path = path.resolve()
    doc = load_toml(path)
    refuse_unknown_sections(path, doc, {"client", "tls"})

    client = Section.of(path, doc, "client")
    coordinator = _endpoint(client, "coordinator")
    home_silo = _endpoint(client, "home_silo")
    timeout = client.get("timeout_seconds", float, DEFAULT_TIMEOUT_SECONDS)
    if not math.isfinite(timeout) or timeout <= 0:
        raise ConfigError(
            f"{path}: [client] timeout_seconds must be a positive number, got {timeout}"
        )
    insecure = client.get("insecure", bool, False)
    client.finish()

    tls = tls_from_config(path, doc, insecure=insecure, insecure_key="[client] insecure")

    return ClientConfig(
        source=path,
        coordinator=coordinator,
        home_silo=home_silo,
        timeout_seconds=timeout,
        insecure=insecure,
        tls=tls,
    )
