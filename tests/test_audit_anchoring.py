"""Issue 11, finding 2: audit checkpoints anchored outside the host, and the key kept apart.

A log cut back to an older checkpoint, with that checkpoint copied into its sidecar, verifies on
its own host; the silo has sent every checkpoint head to the coordinator, and checked against
those the cut is found. Real silo and coordinator servers over real mTLS.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from silobridge.adapters.signing import load_verify_key
from silobridge.audit.chain import sidecar_path
from silobridge.audit.heads import AuditHead, read_heads_file
from silobridge.audit.log import AuditLog
from silobridge.audit.verify import verify_log
from silobridge.core.config import TlsFiles
from silobridge.core.errors import FailedPrecondition, PermissionDenied
from silobridge.rpc.coordinator_client import CoordinatorClient
from silobridge.rpc.silo_client import SiloClient
from silobridge.silo_agent.config import load_silo_config
from silobridge.silo_agent.registration import register_with_coordinator

from .conftest import (
    CONSORTIUM,
    CoordinatorThread,
    Pki,
    ServerThread,
    ingest_kjv,
    run_cli,
    write_client_config,
    write_coordinator_config,
    write_silo_config,
)

pytestmark = pytest.mark.integration
SPIFFE = f"spiffe://{CONSORTIUM}"


def _cut_back(log: Path, to_checkpoint: int) -> int:
    """Cut ``log`` after its ``to_checkpoint``-th checkpoint line and make that the sidecar, as
    someone who can write the log's directory would; the number of lines left."""
    lines = log.read_bytes().splitlines(keepends=True)
    ends = [number for number, raw in enumerate(lines, 1) if b'"type":"checkpoint"' in raw]
    keep = ends[to_checkpoint - 1]
    log.write_bytes(b"".join(lines[:keep]))
    sidecar_path(log).write_bytes(lines[keep - 1])
    return keep


def test_a_cut_back_log_verifies_alone_but_not_against_its_recorded_heads(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    recorded: list[AuditHead] = []
    log = AuditLog.open(tmp_path / "audit.log", key, checkpoint_every=5)
    log.on_checkpoint = recorded.append
    for number in range(30):
        log.append({"who": "spiffe://t/client/a", "rpc": "Describe", "allowed": True, "n": number})
    log.close()
    assert len(recorded) == 6  # every fifth event, then nothing left to sign at close
    assert verify_log(log.path, key.public_key(), heads=recorded).ok

    kept = _cut_back(log.path, to_checkpoint=2)
    alone = verify_log(log.path, key.public_key())
    assert alone.ok, "the hole this fixes: the cut log is self-consistent"
    anchored = verify_log(log.path, key.public_key(), heads=recorded)
    assert not anchored.ok
    assert anchored.reason.startswith("cut back:"), anchored.reason
    assert f"ends at line {kept}" in anchored.reason


def test_heads_of_another_log_key_do_not_count_against_this_log(tmp_path: Path) -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    theirs: list[AuditHead] = []
    with AuditLog.open(tmp_path / "other.log", other, checkpoint_every=2) as foreign:
        foreign.on_checkpoint = theirs.append
        for number in range(10):
            foreign.append({"who": "x", "rpc": "Describe", "allowed": True, "n": number})
    with AuditLog.open(tmp_path / "audit.log", key, checkpoint_every=2) as log:
        for number in range(3):
            log.append({"who": "x", "rpc": "Describe", "allowed": True, "n": number})
    assert verify_log(tmp_path / "audit.log", key.public_key(), heads=theirs).ok


def test_the_default_audit_key_is_outside_the_directory_the_log_is_written_to(
    pki: Pki, tmp_path: Path
) -> None:
    config = load_silo_config(write_silo_config(tmp_path / "silo", pki.silo))
    assert config.audit is not None
    assert config.audit.key.parent != config.audit.log.parent
    assert not config.audit.key.is_relative_to(config.audit.log.parent)
    assert not config.audit.key.is_relative_to(config.data_dir)


@dataclass
class Anchored:
    silo_config: Path
    client_toml: Path
    coordinator: CoordinatorThread
    tls: TlsFiles


def _client_toml(directory: Path, tls: TlsFiles, coordinator: str) -> Path:
    return write_client_config(directory / "client.toml", tls, coordinator=coordinator)


@pytest.fixture
def anchored(pki: Pki, tmp_path: Path) -> Iterator[Anchored]:
    coordinator_toml = write_coordinator_config(
        tmp_path / "coordinator",
        pki.coordinator,
        f"""
[policy]
register = ["{SPIFFE}/silo/*"]
list = ["{SPIFFE}/client/*"]
""",
    )
    coordinator = CoordinatorThread(coordinator_toml)
    config = write_silo_config(tmp_path / "silo", pki.silo, model="static-64")
    with config.open("a") as toml:
        toml.write(
            f'\n[coordinator]\nendpoint = "{coordinator.target}"\nname = "hub"\n'
            "\n[audit]\ncheckpoint_every = 5\n"
        )
    ingest_kjv(config, 20)
    try:
        yield Anchored(
            config, _client_toml(tmp_path / "auditor", pki.home_client, coordinator.target),
            coordinator, pki.home_client,
        )  # fmt: skip
    finally:
        coordinator.stop()


async def _describe_many(target: str, tls: TlsFiles, times: int) -> None:
    async with SiloClient(target, tls, expect=f"{SPIFFE}/silo/kjv") as silo:
        for _ in range(times):
            await silo.describe(timeout=10)


def _register(silo: ServerThread) -> None:
    """Register the silo as `silo serve` does once it listens."""
    config = load_silo_config(silo.service.config.source)
    assert asyncio.run(register_with_coordinator(config, silo.target)) is not None


def test_a_silos_checkpoints_reach_the_coordinator_and_expose_a_cut_back_log(
    anchored: Anchored,
) -> None:
    silo = ServerThread(anchored.silo_config)
    try:
        _register(silo)
        asyncio.run(_describe_many(silo.target, anchored.tls, 23))
    finally:
        silo.stop()  # the final checkpoint is sent on the way out
    book = anchored.coordinator.service.audit_heads
    recorded = book.heads("kjv")
    assert recorded, "no audit head reached the coordinator"
    # Each head was accepted (not recorded and then failed): the coordinator audits it allowed.
    coordinator_log = anchored.coordinator.service.config.audit.log
    accepted = [
        json.loads(line)
        for line in coordinator_log.read_text().splitlines()
        if '"RecordAuditHead"' in line
    ]
    assert accepted and all(line["allowed"] for line in accepted), accepted[-1:]
    config = load_silo_config(anchored.silo_config)
    assert config.audit is not None
    log, pub = config.audit.log, Path(f"{config.audit.key}.pub")
    newest = max(head.covers for head in recorded)
    lines = len(log.read_bytes().splitlines())
    assert newest == lines - 1, "the last checkpoint (written at stop) was recorded"

    # An auditor fetches the heads over mTLS, as the CLI does, and keeps them.
    heads_file = anchored.client_toml.parent / "heads.json"
    fetched = run_cli("audit", "heads", "kjv", "--config", str(anchored.client_toml))
    assert fetched.returncode == 0, fetched.stderr
    heads_file.write_text(fetched.stdout)
    assert {h.covers for h in read_heads_file(heads_file)} == {h.covers for h in recorded}
    intact = run_cli("audit", "verify", str(log), "--key", str(pub), "--heads", str(heads_file))
    assert intact.returncode == 0, intact.stdout + intact.stderr

    _cut_back(log, to_checkpoint=2)
    assert verify_log(log, load_verify_key(pub)).ok  # on its own host, nothing shows
    cut = run_cli("audit", "verify", str(log), "--key", str(pub), "--heads", str(heads_file))
    assert cut.returncode == 1
    assert "TAMPERED" in cut.stdout and "cut back" in cut.stdout, cut.stdout

    # The coordinator itself refuses the older head the cut-back log would now send.
    older = min(recorded, key=lambda head: head.covers)
    with pytest.raises(FailedPrecondition, match="cut back or rewritten"):
        book.record("kjv", older)


def test_the_coordinator_refuses_heads_from_callers_that_are_not_registered_silos(
    anchored: Anchored,
) -> None:
    key = Ed25519PrivateKey.generate()
    heads: list[AuditHead] = []
    with AuditLog.open(anchored.client_toml.parent / "a.log", key, checkpoint_every=1) as log:
        log.on_checkpoint = heads.append
        log.append({"who": "x", "rpc": "Describe", "allowed": True})

    async def send() -> None:
        async with CoordinatorClient(
            anchored.coordinator.target, anchored.tls, expect=f"{SPIFFE}/coordinator/hub"
        ) as hub:
            await hub.record_audit_head(heads[0], timeout=10)

    with pytest.raises(PermissionDenied):
        asyncio.run(send())
