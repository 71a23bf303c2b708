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
from silobridge.core.errors import ConfigError

DEFAULT_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class ClientConfig:
    source: Path
    coordinator: str
    home_silo: str
    timeout_seconds: float
    insecure: bool
    tls: TlsFiles | None


def load_client_config(path: Path) -> ClientConfig:
    """Read and check ``client.toml``; every problem is a ConfigError naming the key."""
    path = path.resolve()
    doc = load_toml(path)
    refuse_unknown_sections(path, doc, {"client", "tls"})

    client = Section.of(path, doc, "client")
    coordinator = client.endpoint("coordinator")
    home_silo = client.endpoint("home_silo")
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
