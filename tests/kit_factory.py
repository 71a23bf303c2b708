"""Startup kits made the way a consortium makes them: ``new_kit``, the CA's approval, install."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from silobridge.kits.build import new_kit
from silobridge.kits.install import install_kit
from silobridge.kits.party import KitManifest, Links, Party
from silobridge.security.identity import Role
from silobridge.security.pki.approve import CertificateAuthority, approve_request
from silobridge.security.pki.ca import init_ca, load_ca

CONSORTIUM = "kitnet"
PASSPHRASE = b"kit-test-passphrase"


@dataclass(frozen=True)
class KitCa:
    """A consortium CA on disk: what the CA operator holds."""

    directory: Path
    ca: CertificateAuthority

    @property
    def cert(self) -> Path:
        return self.directory / "ca.crt"

    @classmethod
    def create(cls, directory: Path) -> KitCa:
        init_ca(directory, CONSORTIUM, PASSPHRASE)
        return cls(directory, load_ca(directory, PASSPHRASE))

    def sign(
        self, csr: Path, *, not_before: datetime | None = None, not_after: datetime | None = None
    ) -> bytes:
        return approve_request(
            self.ca, csr.read_bytes(), not_before=not_before, not_after=not_after
        )


def make_kit(
    ca: KitCa,
    directory: Path,
    role: Role,
    name: str,
    org: str,
    links: Links,
    *,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    adapter_key: Path | None = None,
) -> KitManifest:
    """A kit, its CSR signed by ``ca`` and installed (a silo's with the coordinator's key)."""
    party = Party(role=role, name=name, org=org, consortium=CONSORTIUM)
    server = role is not Role.CLIENT
    made = new_kit(
        directory,
        party,
        links,
        dns_names=["localhost"] if server else [],
        ip_addresses=["127.0.0.1"] if server else [],
        overrides=overrides,
    )
    signed = directory.parent / f"{name}-signed.crt"
    signed.write_bytes(ca.sign(made.csr))
    install_kit(directory, signed, ca.cert, adapter_key_file=adapter_key)
    return KitManifest.read(directory)
