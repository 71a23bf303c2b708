"""The one ``host:port`` parser: DNS names, IPv4 and ``[IPv6]``, checked before gRPC sees them."""

from __future__ import annotations

import ipaddress
import re

from silobridge.core.errors import InvalidArgument

# One DNS label (RFC 1123: letters, digits, inner hyphens; at most 63 characters), plus the
# underscores that container service names (docker compose) use and resolvers accept.
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")
_PORT = re.compile(r"^[0-9]{1,5}$")
_MAX_HOSTNAME = 253


def validate_endpoint(value: str, *, allow_any_port: bool = False) -> str:
    """Check a ``host:port`` address (DNS name, IPv4, or ``[IPv6]``) and return it unchanged.

    ``allow_any_port`` admits port 0 (a listen address that lets the OS pick). Raises
    InvalidArgument saying what is wrong; schemes (``https://``), paths and spaces are refused
    because gRPC would otherwise fail later with a much less helpful message.
    """
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise InvalidArgument(f"{value!r} is not host:port (for example 127.0.0.1:50050)")
    lowest = 0 if allow_any_port else 1
    if not _PORT.match(port) or not lowest <= int(port) <= 65535:
        raise InvalidArgument(f"{value!r}: port {port!r} must be a number from {lowest} to 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidArgument(f"{value!r}: {host} is not an IPv6 address") from None
        return value
    if ":" in host:
        raise InvalidArgument(f"{value!r}: write an IPv6 host in brackets, e.g. [::1]:50051")
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


def endpoint_host(value: str) -> str:
    """The host part of a checked ``host:port`` (brackets of an IPv6 address kept)."""
    return value.rpartition(":")[0]
