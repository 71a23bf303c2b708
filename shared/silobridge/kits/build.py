"""``silobridge kit new``: a participant's kit, made on the participant's own machine.

The participant's key is made here (0600) with its certificate request; the request goes to
the CA operator and the certificate comes back (``install``). Keys never travel.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from silobridge.adapters.signing import generate_signing_key
from silobridge.client.config import load_client_config
from silobridge.coordinator.config import load_coordinator_config
from silobridge.core.durable import write_file_atomically
from silobridge.core.errors import ConfigError, InvalidArgument, SiloBridgeError
from silobridge.kits.client_config import client_tables
from silobridge.kits.coordinator_config import coordinator_tables
from silobridge.kits.party import TLS_DIR, KitManifest, Links, Party
from silobridge.kits.render import Table, render
from silobridge.kits.silo_config import silo_tables
from silobridge.kits.texts import readme, start_script
from silobridge.security.identity import Role
from silobridge.security.pki.ca import request_certificate
from silobridge.silo_agent.config import load_silo_config


@dataclass(frozen=True)
class NewKit:
    """What ``new_kit`` wrote."""

    directory: Path
    config: Path
    key: Path
    csr: Path
    adapter_public_key: Path | None


def config_tables(party: Party, links: Links) -> list[Table]:
    if party.role is Role.SILO:
        return silo_tables(party, links)
    if party.role is Role.COORDINATOR:
        return coordinator_tables(party, links)
    return client_tables(party, links)


def config_text(manifest: KitManifest) -> str:
    party = manifest.party
    header = (
        f"{party.config_name} of {party.spiffe_id} (organization {party.org}).\n"
        "Written by `silobridge kit new`. Paths are relative to this file. Every key is "
        "listed;\na commented key shows its default. Check it with `silobridge doctor "
        f"--config {party.config_name}`."
    )
    return render(header, config_tables(party, manifest.links), manifest.overrides)


def write_config(kit: Path, manifest: KitManifest) -> Path:
    """(Re)write the kit's config from its manifest; the manifest is saved beside it."""
    text = config_text(manifest)
    path = kit / manifest.party.config_name
    write_file_atomically(path, text.encode())
    manifest.write(kit)
    return path


def _refuse_used(directory: Path) -> None:
    if not directory.exists():
        return
    if any(directory.iterdir()):
        raise ConfigError(
            f"{directory} is not empty; a kit is made in a new directory (move the old one away)"
        )
    st = directory.stat()
    if st.st_uid != os.geteuid() or st.st_mode & 0o022:
        raise ConfigError(
            f"{directory} is not yours alone (owner uid {st.st_uid}, mode "
            f"{stat.S_IMODE(st.st_mode):04o}): whoever may write it could swap the kit's "
            "files; make the kit in a new directory"
        )


def check_loads(manifest: KitManifest, text: str) -> None:
    """The rendered config loads with its role's own loader: a bad value is refused now."""
    loaders: dict[Role, Callable[[Path], object]] = {
        Role.SILO: load_silo_config,
        Role.COORDINATOR: load_coordinator_config,
        Role.CLIENT: load_client_config,
    }
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / manifest.party.config_name
        path.write_text(text)
        try:
            loaders[manifest.party.role](path)
        except SiloBridgeError as err:
            raise InvalidArgument(
                err.message.replace(str(path), manifest.party.config_name)
            ) from None


def new_kit(
    directory: Path,
    party: Party,
    links: Links,
    *,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> NewKit:
    """Make ``directory`` a kit for ``party``: key and CSR, config, start script, README."""
    _refuse_used(directory)
    manifest = KitManifest(
        party, links, {table: dict(keys) for table, keys in (overrides or {}).items()}
    )
    # Render and load first: a bad override or value must leave nothing behind.
    check_loads(manifest, config_text(manifest))
    created = not directory.exists()
    try:
        return _write_kit(directory, manifest, dns_names, ip_addresses)
    except BaseException:
        if created:
            shutil.rmtree(directory, ignore_errors=True)
        else:
            for child in directory.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
                else:
                    child.unlink()
        raise


def _write_kit(
    directory: Path,
    manifest: KitManifest,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
) -> NewKit:
    party = manifest.party
    # Private: the config is the party's policy, data/ its documents, tls/ its key.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    directory.chmod(0o700)
    tls = directory / TLS_DIR
    tls.mkdir(mode=0o700)
    request = request_certificate(
        tls,
        consortium=party.consortium,
        role=party.role.value,
        name=party.name,
        org=party.org,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )
    public_key = None
    if party.role is Role.SILO:
        (directory / "data").mkdir(mode=0o700)
    if party.role is Role.COORDINATOR:
        state = directory / "state"
        state.mkdir(mode=0o700)
        public_key = generate_signing_key(state / "adapter-signing.key")
    config = write_config(directory, manifest)
    start = directory / "start.sh"
    write_file_atomically(start, start_script(party).encode(), mode=0o755)
    write_file_atomically(directory / "README.md", readme(party).encode())
    return NewKit(directory, config, request.key, request.csr, public_key)
