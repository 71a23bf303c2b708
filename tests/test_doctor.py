"""``silobridge doctor`` on real kits: it passes on good ones and names the fix for broken ones.

The servers are real (coordinator and silo over mTLS on loopback); the broken kits are broken
the way operators break them: a key copied with the wrong mode, a certificate left to expire,
a peer that is not up, a model changed under an ingested corpus.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from silobridge.adapters import FitConfig, fit
from silobridge.adapters.artifact import save_adapter
from silobridge.adapters.signing import generate_signing_key, load_signing_key
from silobridge.coordinator.config import load_coordinator_config
from silobridge.coordinator.state.records import AdapterRecord
from silobridge.coordinator.state.store import CoordinatorState
from silobridge.core.spaces import SpaceDescriptor
from silobridge.doctor.report import Report, Status
from silobridge.doctor.run import diagnose
from silobridge.kits.build import write_config
from silobridge.kits.party import KitManifest, Links
from silobridge.security.identity import Role
from silobridge.silo_agent.config import load_silo_config

from .conftest import CoordinatorThread, ServerThread, SiloProcess, ingest_kjv, run_cli
from .kit_factory import KitCa, make_kit


@dataclasses.dataclass
class Net:
    root: Path
    ca: KitCa
    hub: Path
    kjv: Path
    alice: Path
    coordinator: CoordinatorThread
    silo: ServerThread

    @property
    def adapter_key(self) -> Path:
        return self.hub / "state" / "adapter-signing.key.pub"


def _silo_kit(net_root: Path, ca: KitCa, name: str, coordinator: str, adapter_key: Path) -> Path:
    links = Links(listen="127.0.0.1:0", coordinator=coordinator, model="static-64", metrics="off")
    make_kit(ca, net_root / name, Role.SILO, name, "bible", links, adapter_key=adapter_key)
    return net_root / name


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("doctor")
    ca = KitCa.create(root / "ca")
    hub = root / "hub"
    make_kit(
        ca, hub, Role.COORDINATOR, "hub", "consortium", Links(listen="127.0.0.1:0", metrics="off")
    )
    coordinator = CoordinatorThread(hub / "coordinator.toml")
    kjv = _silo_kit(root, ca, "kjv", coordinator.target, hub / "state" / "adapter-signing.key.pub")
    ingest_kjv(kjv / "silo.toml", 40)
    silo = ServerThread(kjv / "silo.toml")
    links = Links(
        coordinator=coordinator.target, home_silo=silo.target, home_silo_name="kjv", metrics="off"
    )
    make_kit(ca, root / "alice", Role.CLIENT, "alice", "bible", links)
    yield Net(root, ca, hub, kjv, root / "alice", coordinator, silo)
    silo.stop()
    coordinator.stop()


def _row(report: Report, name: str) -> tuple[Status, str, str]:
    rows = [c for c in report.checks if c.name == name]
    assert rows, f"no check {name!r} in {[c.name for c in report.checks]}"
    return rows[0].status, rows[0].detail, rows[0].hint


def _failures(report: Report) -> list[str]:
    return [f"{c.name}: {c.detail}" for c in report.checks if c.status is Status.FAIL]


def test_doctor_passes_on_each_good_kit(net: Net) -> None:
    for config in (
        net.hub / "coordinator.toml",
        net.kjv / "silo.toml",
        net.alice / "client.toml",
    ):
        report = diagnose(config)
        assert not report.failed, _failures(report)
    silo = diagnose(net.kjv / "silo.toml")
    assert _row(silo, "reach coordinator hub")[0] is Status.OK
    assert _row(silo, "model matches data")[0] is Status.OK
    assert _row(silo, "index matches docstore")[0] is Status.OK
    assert _row(silo, "adapter key pinned")[0] is Status.OK
    client = diagnose(net.alice / "client.toml")
    assert _row(client, "reach home silo kjv")[0] is Status.OK
    hub = diagnose(net.hub / "coordinator.toml")
    assert _row(hub, "state readable")[0] is Status.OK


def test_doctor_command_prints_json_and_exits_zero(net: Net) -> None:
    done = run_cli("doctor", "--config", str(net.kjv / "silo.toml"), "--json")
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert body["passed"] is True
    assert body["role"] == "silo"
    assert {row["check"] for row in body["checks"]} >= {"key file mode", "reach coordinator hub"}


def test_a_key_other_users_can_read_fails_with_chmod(net: Net, tmp_path: Path) -> None:
    kit = _silo_kit(tmp_path, net.ca, "loose", net.coordinator.target, net.adapter_key)
    (kit / "tls" / "loose.key").chmod(0o644)
    done = run_cli("doctor", "--config", str(kit / "silo.toml"), "--offline")
    assert done.returncode == 1
    status, detail, hint = _row(diagnose(kit / "silo.toml", online=False), "key file mode")
    assert status is Status.FAIL
    assert "0644" in detail
    assert hint == f"chmod 600 {kit / 'tls' / 'loose.key'}"
    assert "chmod 600" in done.stdout


def test_an_expired_certificate_fails_with_how_to_renew(net: Net, tmp_path: Path) -> None:
    kit = _silo_kit(tmp_path, net.ca, "old", net.coordinator.target, net.adapter_key)
    now = datetime.now(UTC)
    expired = net.ca.sign(
        kit / "tls" / "old.csr",
        not_before=now - timedelta(minutes=4),
        not_after=now - timedelta(minutes=1),
    )
    (kit / "tls" / "old.crt").write_bytes(expired)
    report = diagnose(kit / "silo.toml")
    status, detail, hint = _row(report, "certificate validity")
    assert status is Status.FAIL
    assert detail.startswith("expired on")
    assert "pki approve" in hint and "kit install" in hint
    # Nothing is dialled with a certificate that failed its checks.
    assert "not tried" in _row(report, "reach coordinator hub")[1]


def test_a_certificate_near_its_end_is_a_warning(net: Net, tmp_path: Path) -> None:
    kit = _silo_kit(tmp_path, net.ca, "soon", net.coordinator.target, net.adapter_key)
    now = datetime.now(UTC)
    soon = net.ca.sign(kit / "tls" / "soon.csr", not_before=now, not_after=now + timedelta(days=9))
    (kit / "tls" / "soon.crt").write_bytes(soon)
    report = diagnose(kit / "silo.toml", online=False)
    status, detail, _ = _row(report, "certificate validity")
    assert status is Status.WARN
    assert "in 8 days" in detail or "in 9 days" in detail
    assert not report.failed, _failures(report)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def test_an_unreachable_peer_fails_with_start_it(net: Net, tmp_path: Path) -> None:
    target = f"127.0.0.1:{_closed_port()}"
    kit = _silo_kit(tmp_path, net.ca, "lonely", target, net.adapter_key)
    report = diagnose(kit / "silo.toml")
    status, detail, hint = _row(report, "reach coordinator hub")
    assert status is Status.FAIL
    assert target in detail
    assert hint.startswith("start coordinator hub, or fix its address")
    offline = diagnose(kit / "silo.toml", online=False)
    assert _row(offline, "reach coordinator hub")[0] is Status.SKIP
    assert not offline.failed, _failures(offline)


def test_a_peer_with_another_identity_is_named(net: Net, tmp_path: Path) -> None:
    # The coordinator's address, but the silo is told to expect a coordinator named "other".
    kit = _silo_kit(tmp_path, net.ca, "misled", net.coordinator.target, net.adapter_key)
    manifest = KitManifest.read(kit)
    write_config(kit, dataclasses.replace(manifest, overrides={"coordinator": {"name": "other"}}))
    status, detail, _ = _row(diagnose(kit / "silo.toml"), "reach coordinator other")
    assert status is Status.FAIL
    assert "certificate names another identity" in detail


def test_a_model_that_did_not_embed_the_data_fails(net: Net, tmp_path: Path) -> None:
    kit = _silo_kit(tmp_path, net.ca, "switched", net.coordinator.target, net.adapter_key)
    ingest_kjv(kit / "silo.toml", 10)
    manifest = KitManifest.read(kit)
    other = dataclasses.replace(manifest.links, model="minilm-l3-onnx")
    write_config(kit, dataclasses.replace(manifest, links=other))
    report = diagnose(kit / "silo.toml", online=False)
    status, detail, hint = _row(report, "model matches data")
    assert status is Status.FAIL
    assert "static-64" in detail and "minilm-l3-onnx" in detail
    assert "silobridge silo migrate" in hint
    assert report.failed


def test_a_config_that_does_not_load_is_one_failed_row(tmp_path: Path) -> None:
    config = tmp_path / "silo.toml"
    config.write_text('[silo]\nname = "x"\n')
    report = diagnose(config)
    assert report.role == "silo"
    assert [c.name for c in report.checks] == ["config"]
    assert report.failed
    assert "model" in report.checks[0].detail


def _signed_adapter(kit: Path) -> Path:
    """One procrustes adapter, signed with the kit's own key and recorded in its state."""
    rng = np.random.default_rng(3)
    source = rng.standard_normal((64, 8)).astype(np.float32)
    target = (source @ rng.standard_normal((8, 8))).astype(np.float32)
    adapter = fit(source, target, FitConfig(kind="procrustes"))
    src = SpaceDescriptor(space_id="a@1", model_id="a", dimension=8, fingerprint="1" * 16)
    dst = SpaceDescriptor(space_id="b@2", model_id="b", dimension=8, fingerprint="2" * 16)
    config = load_coordinator_config(kit / "coordinator.toml")
    directory = config.state_dir / "adapters" / "a-b"
    save_adapter(
        directory,
        adapter,
        source=src,
        target=dst,
        anchor_set_sha256="0" * 64,
        signing_key=load_signing_key(config.signing_key),
    )
    with CoordinatorState.open(config.state_dir) as state:
        state.add_adapter(
            AdapterRecord(
                adapter_id="a-b",
                kind="procrustes",
                source=src,
                target=dst,
                anchor_set="public",
                anchor_set_version="1",
                anchor_set_sha256="0" * 64,
                metrics={},
                created_at=0.0,
                path=directory,
            )
        )
    return directory


def test_a_tampered_adapter_fails_the_coordinators_check(net: Net, tmp_path: Path) -> None:
    kit = tmp_path / "hub2"
    make_kit(
        net.ca,
        kit,
        Role.COORDINATOR,
        "hub2",
        "consortium",
        Links(listen="127.0.0.1:0", metrics="off"),
    )
    artifact = _signed_adapter(kit)
    report = diagnose(kit / "coordinator.toml", online=False)
    assert _row(report, "adapter signatures")[:2] == (
        Status.OK,
        f"1 adapters verify with {kit / 'state' / 'adapter-signing.key'}",
    )
    weights = artifact / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    status, detail, hint = _row(
        diagnose(kit / "coordinator.toml", online=False), "adapter signatures"
    )
    assert status is Status.FAIL
    assert detail.startswith("a-b: ")
    assert "train them again" in hint


def test_a_milvus_backed_silo_is_checked_against_its_collection(net: Net, tmp_path: Path) -> None:
    links = Links(
        listen="127.0.0.1:0", coordinator=net.coordinator.target, model="static-64", metrics="off"
    )
    kit = tmp_path / "milvus"
    overrides = {"index": {"backend": "milvus", "uri": "index.db"}}
    make_kit(
        net.ca,
        kit,
        Role.SILO,
        "mkjv",
        "bible",
        links,
        overrides=overrides,
        adapter_key=net.adapter_key,
    )
    report = diagnose(kit / "silo.toml", online=False)
    assert _row(report, "documents")[0] is Status.WARN
    ingest_kjv(kit / "silo.toml", 12)
    report = diagnose(kit / "silo.toml")
    assert _row(report, "index matches docstore")[:2] == (
        Status.OK,
        "12 vectors for 12 documents",
    )
    assert not report.failed, _failures(report)
    # Offline (start.sh, before serving) the Lite file is left alone: opening it takes its lock.
    offline = diagnose(kit / "silo.toml", online=False)
    assert _row(offline, "index matches docstore")[0] is Status.SKIP


def _free_port() -> int:
    return _closed_port()


def test_health_and_ports_of_a_running_silo(net: Net, tmp_path: Path) -> None:
    """A silo on fixed ports: health says SERVING, doctor knows its own ports from a stranger."""
    grpc_port, metrics_port = _free_port(), _free_port()
    links = Links(
        listen=f"127.0.0.1:{grpc_port}",
        coordinator=net.coordinator.target,
        model="static-64",
        metrics=f"127.0.0.1:{metrics_port}",
    )
    kit = tmp_path / "fixed"
    make_kit(net.ca, kit, Role.SILO, "fixed", "bible", links, adapter_key=net.adapter_key)
    ingest_kjv(kit / "silo.toml", 8)
    config = str(kit / "silo.toml")
    down = run_cli("health", "--config", config)
    assert down.returncode == 1
    assert f"127.0.0.1:{grpc_port}" in down.stderr
    silo = SiloProcess(kit / "silo.toml")
    try:
        up = run_cli("health", "--config", config)
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"127.0.0.1:{grpc_port}: SERVING"
        report = diagnose(kit / "silo.toml")
        assert _row(report, "gRPC port")[:2] == (
            Status.OK,
            f"127.0.0.1:{grpc_port} is in use by this party's own server (SERVING)",
        )
        assert _row(report, "metrics port")[0] is Status.OK
        assert not report.failed, _failures(report)
        # Offline, doctor cannot tell its own server from another process.
        offline = diagnose(kit / "silo.toml", online=False)
        status, _, hint = _row(offline, "gRPC port")
        assert status is Status.FAIL and "without --offline" in hint
        # Another party configured onto the same metrics port: not its own server's.
        hub = tmp_path / "hub3"
        clash = Links(listen="127.0.0.1:0", metrics=f"127.0.0.1:{metrics_port}")
        make_kit(net.ca, hub, Role.COORDINATOR, "hub3", "consortium", clash)
        status, detail, _ = _row(diagnose(hub / "coordinator.toml"), "metrics port")
        assert status is Status.FAIL and "Address already in use" in detail
    finally:
        silo.terminate()


def test_a_port_another_process_holds_fails(net: Net, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        links = Links(listen=f"127.0.0.1:{port}", metrics="off")
        make_kit(net.ca, tmp_path / "h", Role.COORDINATOR, "h", "consortium", links)
        status, detail, hint = _row(diagnose(tmp_path / "h" / "coordinator.toml"), "gRPC port")
    assert status is Status.FAIL
    assert "not by this party's server" in detail
    assert f"sport = :{port}" in hint


def test_a_signing_key_whose_public_half_silos_pinned_is_another(net: Net, tmp_path: Path) -> None:
    kit = tmp_path / "hub4"
    make_kit(
        net.ca,
        kit,
        Role.COORDINATOR,
        "hub4",
        "consortium",
        Links(listen="127.0.0.1:0", metrics="off"),
    )
    pub = kit / "state" / "adapter-signing.key.pub"
    pub.unlink()
    other = generate_signing_key(tmp_path / "other.key")
    pub.write_bytes(other.read_bytes())
    status, detail, _ = _row(
        diagnose(kit / "coordinator.toml", online=False), "adapter key for silos"
    )
    assert status is Status.FAIL
    assert "is not the public half" in detail


def test_damaged_coordinator_state_is_one_failed_row_among_the_others(
    net: Net, tmp_path: Path
) -> None:
    kit = tmp_path / "hub5"
    make_kit(
        net.ca,
        kit,
        Role.COORDINATOR,
        "hub5",
        "consortium",
        Links(listen="127.0.0.1:0", metrics="off"),
    )
    _signed_adapter(kit)
    state = kit / "state" / "state.sqlite"
    with sqlite3.connect(state) as conn:
        conn.execute("UPDATE adapters SET metrics = '{not json'")
    report = diagnose(kit / "coordinator.toml", online=False)
    assert _row(report, "state readable")[0] is Status.FAIL
    assert _row(report, "key file mode")[0] is Status.OK  # the other rows are all there
    assert _row(report, "gRPC port")[0] is Status.OK


def test_an_audit_key_others_can_read_fails(net: Net) -> None:
    """The silo's audit checkpoint key (made at its first start) is checked like its TLS key."""
    config = load_silo_config(net.kjv / "silo.toml")
    assert config.audit is not None and config.audit.key.exists()
    key = config.audit.key
    assert _row(diagnose(net.kjv / "silo.toml", online=False), "audit key mode")[0] is Status.OK
    key.chmod(0o640)
    try:
        status, _, hint = _row(diagnose(net.kjv / "silo.toml", online=False), "audit key mode")
        assert status is Status.FAIL
        assert hint == f"chmod 600 {key}"
    finally:
        key.chmod(0o600)
