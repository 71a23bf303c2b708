"""Who a kit is for and where it listens: what ``silobridge kit new`` is told."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from silobridge.core.durable import write_file_atomically
from silobridge.core.errors import ConfigError
from silobridge.security.identity import Role, make_spiffe_id

MANIFEST = "kit.json"
CONFIG_NAMES = {
    Role.SILO: "silo.toml",
    Role.COORDINATOR: "coordinator.toml",
    Role.CLIENT: "client.toml",
}
TLS_DIR = "tls"
ADAPTER_KEY = "tls/adapter-signing.pub"


@dataclass(frozen=True)
class Party:
    """A participant: its role, its name in its certificate, its organization, its consortium."""

    role: Role
    name: str
    org: str
    consortium: str

    @property
    def spiffe_id(self) -> str:
        return make_spiffe_id(self.consortium, self.role.value, self.name)

    def spiffe(self, role: Role, name: str) -> str:
        """Another participant's SPIFFE id, or a rule matching all of a role (``name="*"``)."""
        if name == "*":
            return f"{make_spiffe_id(self.consortium, role.value, 'x')[:-1]}*"
        return make_spiffe_id(self.consortium, role.value, name)

    @property
    def config_name(self) -> str:
        return CONFIG_NAMES[self.role]

    @property
    def cert(self) -> str:
        return f"{TLS_DIR}/{self.name}.crt"

    @property
    def key(self) -> str:
        return f"{TLS_DIR}/{self.name}.key"

    @property
    def csr(self) -> str:
        return f"{TLS_DIR}/{self.name}.csr"

    @property
    def ca(self) -> str:
        return f"{TLS_DIR}/ca.crt"


@dataclass(frozen=True)
class Links:
    """Addresses a kit's config is filled in with (empty where the role has no such link)."""

    listen: str = ""
    advertise: str = ""
    coordinator: str = ""
    coordinator_name: str = "hub"
    home_silo: str = ""
    home_silo_name: str = ""
    model: str = ""
    metrics: str = ""
    admin: str = "admin"


@dataclass(frozen=True)
class KitManifest:
    """``kit.json``: what the kit is for, written by ``kit new`` and read by ``install``."""

    party: Party
    links: Links
    # ``{"table": {"key": value}}`` the kit's config sets beyond its defaults.
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def write(self, kit: Path) -> None:
        body: dict[str, Any] = {"party": {**asdict(self.party), "role": self.party.role.value}}
        body["links"] = asdict(self.links)
        body["overrides"] = self.overrides
        write_file_atomically(kit / MANIFEST, (json.dumps(body, indent=2) + "\n").encode())

    @classmethod
    def read(cls, kit: Path) -> KitManifest:
        path = kit / MANIFEST
        try:
            body = json.loads(path.read_text())
            party = dict(body["party"])
            party["role"] = Role(party["role"])
            return cls(
                party=Party(**party),
                links=Links(**body["links"]),
                overrides={str(k): dict(v) for k, v in body.get("overrides", {}).items()},
            )
        except FileNotFoundError:
            raise ConfigError(
                f"{kit} is not a startup kit (no {MANIFEST}); make one with `silobridge kit new`"
            ) from None
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path} is damaged: {err}") from None
