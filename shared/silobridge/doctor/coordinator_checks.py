"""The coordinator's own state: its signing key, its state readable, each adapter's signature.

The state is opened read-only: doctor can run beside a serving coordinator.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from silobridge.adapters.artifact import load_adapter
from silobridge.adapters.signing import load_signing_key, load_verify_key, public_key_path
from silobridge.coordinator.config import CoordinatorConfig
from silobridge.coordinator.state.records import (
    SELECT_ADAPTERS,
    SELECT_SILOS,
    AdapterRecord,
    SiloRecord,
    adapter_from_row,
    silo_from_row,
)
from silobridge.coordinator.state.store import STATE_FILE
from silobridge.core.errors import SiloBridgeError
from silobridge.doctor.report import Check, fail, ok, warn
from silobridge.doctor.tls_checks import key_private


@dataclass(frozen=True)
class StateRead:
    silos: list[SiloRecord]
    adapters: list[AdapterRecord]


def signing_key_checks(config: CoordinatorConfig) -> list[Check]:
    name = "adapter signing key"
    path = config.signing_key
    if not path.is_file():
        return [
            fail(
                name,
                f"{path} is missing: no adapter could be signed",
                "a kit makes it (`silobridge kit new --role coordinator`); restore it from a "
                "backup, or set [coordinator] signing_key",
            )
        ]
    checks = [key_private(name, path)]
    try:
        key = load_signing_key(path)
    except SiloBridgeError as err:
        checks.append(fail(name, err.message, "restore the key from a backup"))
        return checks
    checks.append(ok(name, f"{path} (Ed25519)"))
    checks.append(_public_half(path, key.public_key()))
    return checks


def _public_half(path: Path, public: Ed25519PublicKey) -> Check:
    """The ``.pub`` beside the key, which silos pin, must be this key's."""
    name = "adapter key for silos"
    pub = public_key_path(path)
    if not pub.is_file():
        return warn(name, f"no {pub}: silos need it to verify adapters", "restore it from a backup")
    try:
        pinned = load_verify_key(pub)
    except SiloBridgeError as err:
        return fail(name, err.message, "restore it from a backup")
    raw = serialization.PublicFormat.Raw
    encoding = serialization.Encoding.Raw
    if pinned.public_bytes(encoding, raw) != public.public_bytes(encoding, raw):
        return fail(
            name,
            f"{pub} is not the public half of {path}: silos that pinned it refuse every adapter "
            "this key signs",
            "restore the key and its .pub from one backup (or re-pin every silo)",
        )
    return ok(name, f"{pub} is the signing key's public half")


def read_state(config: CoordinatorConfig) -> StateRead | None:
    """The registry and adapter records, or None before the coordinator first ran."""
    path = config.state_dir / STATE_FILE
    if not path.is_file():  # PermissionError on an unreadable state directory, not "absent"
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        silos = [silo_from_row(row) for row in conn.execute(SELECT_SILOS).fetchall()]
        adapters = [
            adapter_from_row(row, config.state_dir)
            for row in conn.execute(SELECT_ADAPTERS).fetchall()
        ]
    finally:
        conn.close()
    return StateRead(silos, adapters)


def state_checks(config: CoordinatorConfig) -> tuple[list[Check], StateRead | None]:
    name = "state readable"
    try:
        state = read_state(config)
    except (sqlite3.Error, ValueError, KeyError, TypeError, OSError) as err:
        hint = "check the state directory's owner and mode; restore it from a backup"
        return [fail(name, f"{config.state_dir / STATE_FILE}: {err}", hint)], None
    except SiloBridgeError as err:
        return [fail(name, err.message, "restore the state directory from a backup")], None
    if state is None:
        return [ok(name, f"no {STATE_FILE} yet in {config.state_dir}: made at first start")], None
    found = f"{len(state.silos)} silos registered, {len(state.adapters)} adapters"
    return [ok(name, found)], state


def adapter_checks(config: CoordinatorConfig, state: StateRead) -> list[Check]:
    """Each recorded adapter's artifact is present and verifies with the signing key."""
    name = "adapter signatures"
    if not state.adapters:
        return [ok(name, "no adapters trained yet")]
    try:
        verify_key = load_signing_key(config.signing_key).public_key()
    except SiloBridgeError as err:
        return [fail(name, err.message, "restore the signing key")]
    bad = []
    for adapter in state.adapters:
        try:
            load_adapter(adapter.path, verify_key=verify_key)
        except SiloBridgeError as err:
            bad.append(f"{adapter.adapter_id}: {err.message}")
    if bad:
        return [
            fail(
                name,
                "; ".join(bad),
                "silos refuse these: train them again (`silobridge train`) and restore the "
                "signing key they were signed with if it changed",
            )
        ]
    return [ok(name, f"{len(state.adapters)} adapters verify with {config.signing_key}")]
