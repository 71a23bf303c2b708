"""Startup kits: what ``silobridge kit new|install`` writes loads with the real config loaders."""

from __future__ import annotations

import dataclasses
import re
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from typer.testing import CliRunner

from silobridge.adapters.signing import generate_signing_key
from silobridge.cli import app
from silobridge.client.config import load_client_config
from silobridge.coordinator.config import load_coordinator_config
from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.kits.build import new_kit
from silobridge.kits.install import install_kit
from silobridge.kits.party import Links, Party
from silobridge.security.identity import Role
from silobridge.silo_agent.config import load_silo_config

from .kit_factory import CONSORTIUM, KitCa, make_kit

# A commented key: ``# name = value`` (comment prose never starts with ``word = ``).
COMMENTED_KEY = re.compile(r'^# ((?:[A-Za-z0-9_-]+|"[^"]+") = .+)$', re.MULTILINE)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> KitCa:
    return KitCa.create(tmp_path_factory.mktemp("kit-ca") / "ca")


@pytest.fixture(scope="module")
def kits(ca: KitCa, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("kits")
    make_kit(
        ca,
        root / "hub",
        Role.COORDINATOR,
        "hub",
        "consortium",
        Links(listen="127.0.0.1:0", metrics="off"),
    )
    key = root / "hub" / "state" / "adapter-signing.key.pub"
    links = Links(listen="127.0.0.1:0", coordinator="127.0.0.1:50050", model="static-64")
    make_kit(
        ca,
        root / "kjv",
        Role.SILO,
        "kjv",
        "bible",
        dataclasses.replace(links, metrics="off"),
        adapter_key=key,
    )
    client = Links(coordinator="127.0.0.1:50050", home_silo="127.0.0.1:50051", home_silo_name="kjv")
    make_kit(ca, root / "alice", Role.CLIENT, "alice", "bible", client)
    return {"hub": root / "hub", "kjv": root / "kjv", "alice": root / "alice"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_each_kit_config_loads_with_its_role_loader(kits: dict[str, Path]) -> None:
    hub = load_coordinator_config(kits["hub"] / "coordinator.toml")
    assert hub.name == "hub"
    assert hub.tls is not None and hub.tls.cert == kits["hub"] / "tls" / "hub.crt"
    assert hub.signing_key == kits["hub"] / "state" / "adapter-signing.key"
    silo = load_silo_config(kits["kjv"] / "silo.toml")
    assert (silo.name, silo.model, silo.data_dir) == ("kjv", "static-64", kits["kjv"] / "data")
    assert silo.coordinator is not None
    assert silo.coordinator.adapter_key == kits["kjv"] / "tls" / "adapter-signing.pub"
    client = load_client_config(kits["alice"] / "client.toml")
    assert client.expected_home_silo() == f"spiffe://{CONSORTIUM}/silo/kjv"
    assert client.expected_coordinator() == f"spiffe://{CONSORTIUM}/coordinator/hub"


def test_private_files_are_the_owners_only(kits: dict[str, Path]) -> None:
    for name, kit in kits.items():
        assert _mode(kit / "tls") == 0o700
        assert _mode(kit / "tls" / f"{name}.key") == 0o600
    assert _mode(kits["hub"] / "state") == 0o700
    assert _mode(kits["hub"] / "state" / "adapter-signing.key") == 0o600
    assert (kits["kjv"] / "start.sh").stat().st_mode & stat.S_IXUSR


@pytest.mark.parametrize(
    ("kit", "config", "loader"),
    [
        ("hub", "coordinator.toml", load_coordinator_config),
        ("kjv", "silo.toml", load_silo_config),
        ("alice", "client.toml", load_client_config),
    ],
)
def test_every_commented_key_shows_its_real_default(
    kits: dict[str, Path], kit: str, config: str, loader: object
) -> None:
    """Uncommenting every listed key changes nothing: each comment is the loader's default."""
    original = kits[kit] / config
    text = original.read_text()
    assert COMMENTED_KEY.search(text) is not None or kit == "alice"
    uncommented = original.with_name(f"all-keys-{config}")
    uncommented.write_text(COMMENTED_KEY.sub(r"\1", text))
    assert callable(loader)
    as_written = loader(original)
    everything = loader(uncommented)
    assert dataclasses.replace(everything, source=as_written.source) == as_written


def test_a_bad_override_leaves_no_kit_behind(tmp_path: Path) -> None:
    party = Party(Role.SILO, "kjv", "bible", CONSORTIUM)
    with pytest.raises(InvalidArgument, match=r"\[limits\] has no key bogus"):
        new_kit(tmp_path / "kit", party, Links(), overrides={"limits": {"bogus": 1}})
    assert not (tmp_path / "kit").exists()
    with pytest.raises(InvalidArgument, match=r"no table \[nope\]"):
        new_kit(tmp_path / "kit", party, Links(), overrides={"nope": {"x": 1}})


def test_a_kit_is_made_in_a_new_directory_only(kits: dict[str, Path]) -> None:
    party = Party(Role.SILO, "kjv", "bible", CONSORTIUM)
    key_before = (kits["kjv"] / "tls" / "kjv.key").read_bytes()
    with pytest.raises(ConfigError, match="not empty"):
        new_kit(kits["kjv"], party, Links())
    assert (kits["kjv"] / "tls" / "kjv.key").read_bytes() == key_before


def _new_silo_kit(root: Path) -> Path:
    kit = root / "web"
    new_kit(kit, Party(Role.SILO, "web", "webcorp", CONSORTIUM), Links(metrics="off"))
    return kit


def test_install_refuses_a_certificate_for_another_key(ca: KitCa, tmp_path: Path) -> None:
    kit = _new_silo_kit(tmp_path)
    # Another request for the same identity: its certificate certifies another key.
    other = new_kit(
        tmp_path / "other", Party(Role.SILO, "web", "webcorp", CONSORTIUM), Links(metrics="off")
    )
    cert = tmp_path / "web.crt"
    cert.write_bytes(ca.sign(other.csr))
    with pytest.raises(ConfigError, match="not for this kit's key"):
        install_kit(kit, cert, ca.cert)
    assert not (kit / "tls" / "web.crt").exists()


def test_install_refuses_another_identity(ca: KitCa, tmp_path: Path) -> None:
    kit = _new_silo_kit(tmp_path)
    other = new_kit(
        tmp_path / "news", Party(Role.SILO, "news", "newsorg", CONSORTIUM), Links(metrics="off")
    )
    cert = tmp_path / "news.crt"
    cert.write_bytes(ca.sign(other.csr))
    with pytest.raises(ConfigError, match="not for this kit's"):
        install_kit(kit, cert, ca.cert)


def test_install_refuses_another_ca_and_an_expired_certificate(ca: KitCa, tmp_path: Path) -> None:
    kit = _new_silo_kit(tmp_path)
    csr = kit / "tls" / "web.csr"
    foreign = KitCa.create(tmp_path / "foreign-ca")
    cert = tmp_path / "web.crt"
    cert.write_bytes(foreign.sign(csr))
    with pytest.raises(ConfigError, match="not signed by the CA"):
        install_kit(kit, cert, ca.cert)
    now = datetime.now(UTC)
    cert.write_bytes(
        ca.sign(csr, not_before=now - timedelta(minutes=4), not_after=now - timedelta(minutes=1))
    )
    with pytest.raises(ConfigError, match="expired"):
        install_kit(kit, cert, ca.cert)
    assert not (kit / "tls" / "web.crt").exists()


def test_install_refuses_an_adapter_key_that_is_not_ed25519(ca: KitCa, tmp_path: Path) -> None:
    kit = _new_silo_kit(tmp_path)
    cert = tmp_path / "web.crt"
    cert.write_bytes(ca.sign(kit / "tls" / "web.csr"))
    with pytest.raises(ConfigError, match="not a PEM public key"):
        install_kit(kit, cert, ca.cert, adapter_key_file=ca.cert)
    assert not (kit / "tls" / "adapter-signing.pub").exists()


def test_kit_new_command_sets_keys_and_refuses_unknown_ones(tmp_path: Path) -> None:
    runner = CliRunner()
    base = [
        "kit", "new", "--role", "silo", "--name", "kjv", "--org", "bible",
        "--consortium", CONSORTIUM, "--metrics", "off",
    ]  # fmt: skip
    done = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--set", "limits.burst=200"])
    assert done.exit_code == 0, done.output
    assert "tls/kjv.csr" in done.output
    assert load_silo_config(tmp_path / "a" / "silo.toml").limits.burst == 200
    refused = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--set", "limits.nope=1"])
    assert refused.exit_code == 1
    assert "[limits] has no key nope" in refused.output
    assert not (tmp_path / "b").exists()


def test_a_kit_serves_metrics_unless_told_not_to(tmp_path: Path) -> None:
    party = Party(Role.SILO, "kjv", "bible", CONSORTIUM)
    new_kit(tmp_path / "on", party, Links())
    assert load_silo_config(tmp_path / "on" / "silo.toml").metrics.listen == "127.0.0.1:9464"
    new_kit(tmp_path / "off", party, Links(metrics="off"))
    assert load_silo_config(tmp_path / "off" / "silo.toml").metrics.listen is None
    hub = Party(Role.COORDINATOR, "hub", "consortium", CONSORTIUM)
    new_kit(tmp_path / "hub", hub, Links(metrics="0.0.0.0:9464"))
    config = load_coordinator_config(tmp_path / "hub" / "coordinator.toml")
    assert config.metrics.listen == "0.0.0.0:9464"


def test_install_refuses_bundles_it_did_not_check(ca: KitCa, tmp_path: Path) -> None:
    """A second CA in ca.crt would be trusted by TLS; a key beside a certificate is no cert."""
    kit = _new_silo_kit(tmp_path)
    cert = tmp_path / "web.crt"
    cert.write_bytes(ca.sign(kit / "tls" / "web.csr"))
    rogue = KitCa.create(tmp_path / "rogue-ca")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(ca.cert.read_bytes() + rogue.cert.read_bytes())
    with pytest.raises(ConfigError, match="exactly one PEM certificate, found 2"):
        install_kit(kit, cert, bundle)
    with_key = tmp_path / "with-key.crt"
    with_key.write_bytes(cert.read_bytes() + (kit / "tls" / "web.key").read_bytes())
    with pytest.raises(ConfigError, match="exactly one PEM certificate"):
        install_kit(kit, with_key, ca.cert)
    with pytest.raises(ConfigError, match="not a self-signed CA certificate"):
        install_kit(kit, cert, cert)
    assert not (kit / "tls" / "ca.crt").exists()
    install_kit(kit, cert, ca.cert)
    assert (kit / "tls" / "ca.crt").read_bytes().count(b"BEGIN CERTIFICATE") == 1


def test_a_pinned_adapter_key_is_never_replaced_silently(
    ca: KitCa, kits: dict[str, Path], tmp_path: Path
) -> None:
    kit = _new_silo_kit(tmp_path)
    cert = tmp_path / "web.crt"
    cert.write_bytes(ca.sign(kit / "tls" / "web.csr"))
    hub_key = kits["hub"] / "state" / "adapter-signing.key.pub"
    install_kit(kit, cert, ca.cert, adapter_key_file=hub_key)
    other = tmp_path / "other-signing.key"
    other_pub = generate_signing_key(other)
    with pytest.raises(ConfigError, match="holds another adapter signing key"):
        install_kit(kit, cert, ca.cert, adapter_key_file=other_pub)
    assert (kit / "tls" / "adapter-signing.pub").read_bytes() == hub_key.read_bytes()
    # Renewing the certificate without --adapter-key keeps the pin.
    install_kit(kit, cert, ca.cert)
    assert (kit / "tls" / "adapter-signing.pub").read_bytes() == hub_key.read_bytes()
    with pytest.raises(ConfigError, match="only silos verify adapters"):
        install_kit(
            kits["alice"], kits["alice"] / "tls" / "alice.crt", ca.cert, adapter_key_file=hub_key
        )


def test_a_kit_is_private_to_its_owner(tmp_path: Path) -> None:
    kit = _new_silo_kit(tmp_path)
    assert _mode(kit) == 0o700
    assert _mode(kit / "data") == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(ConfigError, match="not yours alone"):
        new_kit(shared, Party(Role.SILO, "web", "webcorp", CONSORTIUM), Links())


def test_a_value_the_loader_refuses_or_a_bad_name_leaves_no_kit(tmp_path: Path) -> None:
    party = Party(Role.SILO, "kjv", "bible", CONSORTIUM)
    with pytest.raises(InvalidArgument, match="disclose_fields"):
        new_kit(tmp_path / "a", party, Links(), overrides={"access": {"disclose_fields": "book"}})
    assert not (tmp_path / "a").exists()
    client = Party(Role.CLIENT, "bob", "bible", CONSORTIUM)
    links = Links(home_silo_name="kjv")
    with pytest.raises(InvalidArgument, match="client certificate carries no DNS"):
        new_kit(tmp_path / "b", client, links, dns_names=["bob.example"])
    assert not (tmp_path / "b").exists()
