"""The client's configuration (``client.toml``): the coordinator, the home silo, TLS.

::

    [client]
    coordinator = "coordinator.example.org:50050"
    coordinator_name = "hub"                     # its certificate's name (default "hub")
    home_silo = "silo.bible.example.org:50051"   # your own organization's silo: embeds queries
    home_silo_name = "bible"                     # its certificate's name: required with [tls]
    timeout_seconds = 30.0
    # insecure = true                            # plaintext, no [tls]: throwaway local tests only

    [tls]                                        # relative paths are relative to this file
    cert = "certs/alice.crt"
    key = "certs/alice.key"
    ca = "certs/ca.crt"

The two names say who must answer at each endpoint: the client connects expecting
``spiffe://<consortium>/silo/<home_silo_name>`` and ``spiffe://<consortium>/coordinator/
<coordinator_name>`` (the consortium is the client certificate's own), so a server holding any
other consortium certificate is refused before the query text or vector is sent.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from silobridge.core.config import (
    Section,
    TlsFiles,
    load_toml,
    refuse_unknown_sections,
    tls_from_config,
)
from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.security.identity import Role, expected_peer, validate_component

DEFAULT_TIMEOUT_SECONDS = 30.0
# What the consortium's coordinator is conventionally called (its certificate's name).
DEFAULT_COORDINATOR_NAME = "hub"


@dataclass(frozen=True)
class ClientConfig:
    source: Path
    coordinator: str
    home_silo: str
    timeout_seconds: float
    insecure: bool
    tls: TlsFiles | None
    # Certificate names (SPIFFE names) the two servers must hold; "" only when insecure.
    home_silo_name: str = ""
    coordinator_name: str = DEFAULT_COORDINATOR_NAME

    def expected_home_silo(self) -> str | None:
        """The SPIFFE id the home silo must hold (None without TLS: nothing to check)."""
        if self.tls is None:
            return None
        return expected_peer(self.tls.cert, Role.SILO, self.home_silo_name)

    def expected_coordinator(self) -> str | None:
        """The SPIFFE id the coordinator must hold (None without TLS); the signed audience."""
        if self.tls is None:
            return None
        return expected_peer(self.tls.cert, Role.COORDINATOR, self.coordinator_name)


def load_client_config(path: Path) -> ClientConfig:
    """Read and check ``client.toml``; every problem is a ConfigError naming the key."""
    path = path.resolve()
    doc = load_toml(path)
    refuse_unknown_sections(path, doc, {"client", "tls"})

    client = Section.of(path, doc, "client")
    coordinator = client.endpoint("coordinator")
    home_silo = client.endpoint("home_silo")
    coordinator_name = client.get("coordinator_name", str, DEFAULT_COORDINATOR_NAME)
    home_silo_name = client.get("home_silo_name", str, "")
    timeout = client.get("timeout_seconds", float, DEFAULT_TIMEOUT_SECONDS)
    if not math.isfinite(timeout) or timeout <= 0:
        raise ConfigError(
            f"{path}: [client] timeout_seconds must be a positive number, got {timeout}"
        )
    insecure = client.get("insecure", bool, False)
    client.finish()

    tls = tls_from_config(path, doc, insecure=insecure, insecure_key="[client] insecure")
    if tls is not None and not home_silo_name:
        raise ConfigError(
            f"{path}: [client] home_silo_name is required: the name in your home silo's "
            'certificate (spiffe://<consortium>/silo/<name>), e.g. home_silo_name = "bible"; '
            "the client refuses a home silo holding any other certificate"
        )
    for key, value in (("home_silo_name", home_silo_name), ("coordinator_name", coordinator_name)):
        if value:
            try:
                validate_component(value, key)
            except InvalidArgument as error:
                raise ConfigError(f"{path}: [client] {error.message}") from None

    return ClientConfig(
        source=path,
        coordinator=coordinator,
        home_silo=home_silo,
        timeout_seconds=timeout,
        insecure=insecure,
        tls=tls,
        home_silo_name=home_silo_name,
        coordinator_name=coordinator_name,
    )
