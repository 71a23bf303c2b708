"""Every listing command's ``--json``: the real command on real state, its stdout parsed as JSON.

A CA's record of issued certificates, a coordinator's anchor catalogue, and a running
coordinator with a registered silo whose audit checkpoint heads it recorded (real servers over
real mTLS). The JSON must hold the same rows the tables show, and only JSON is on stdout.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from silobridge.audit.heads import read_heads_file
from silobridge.cli import app
from silobridge.coordinator.anchors.catalogue import AnchorCatalogue
from silobridge.rpc.silo_client import SiloClient
from silobridge.security.pki.cli import PASSPHRASE_ENV
from silobridge.security.pki.issued import IssuedIndex
from silobridge.silo_agent.config import load_silo_config
from silobridge.silo_agent.registration import register_with_coordinator

from .conftest import (
    CONSORTIUM,
    CoordinatorThread,
    Pki,
    ServerThread,
    ingest_kjv,
    write_client_config,
    write_coordinator_config,
    write_silo_config,
)

SPIFFE = f"spiffe://{CONSORTIUM}"
runner = CliRunner()


def run_json(*args: str, env: dict[str, str] | None = None) -> Any:
    """The command's stdout parsed as one JSON document (stderr kept apart)."""
    result = runner.invoke(app, list(args), env=env)
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def test_pki_list_json_is_the_cas_record_of_issued_certificates(tmp_path: Path) -> None:
    env = {PASSPHRASE_ENV: "list passphrase", "COLUMNS": "200"}
    ca = tmp_path / "ca"
    for args in (
        ["init", "--dir", str(ca), "--consortium", "listing"],
        ["issue", "--ca-dir", str(ca), "--out", str(tmp_path / "kjv"), "--role", "silo",
         "--name", "kjv", "--org", "bible"],
        ["issue", "--ca-dir", str(ca), "--out", str(tmp_path / "alice"), "--role", "client",
         "--name", "alice", "--org", "pyorg"],
    ):  # fmt: skip
        done = runner.invoke(app, ["pki", *args], env=env)
        assert done.exit_code == 0, done.output

    rows = run_json("pki", "list", "--ca-dir", str(ca), "--json", env=env)
    assert [(r["name"], r["role"], r["org"]) for r in rows] == [
        ("kjv", "silo", "bible"),
        ("alice", "client", "pyorg"),
    ]
    assert rows == [vars(record) for record in IssuedIndex.load(ca).records]
    assert rows[0]["spiffe_id"] == "spiffe://listing/silo/kjv"

    table = runner.invoke(app, ["pki", "list", "--ca-dir", str(ca)], env=env)
    assert table.exit_code == 0, table.output
    assert "kjv" in table.stdout and "alice" in table.stdout and rows[1]["serial"] in table.stdout

    missing = runner.invoke(app, ["pki", "list", "--ca-dir", str(tmp_path / "nope"), "--json"])
    assert missing.exit_code == 1
    assert "no consortium CA" in missing.stderr and missing.stdout == ""


def test_anchors_list_json_lists_every_version_of_every_set(pki: Pki, tmp_path: Path) -> None:
    config = write_coordinator_config(tmp_path / "hub", pki.coordinator, "[policy]\n")
    for name, count, seed in (("public", 40, "0"), ("public", 30, "1"), ("pool", 25, "0")):
        built = runner.invoke(
            app,
            ["anchors", "build", "--config", str(config), "--name", name,
             "--synthetic", str(count), "--seed", seed],
        )  # fmt: skip
        assert built.exit_code == 0, built.output

    rows = run_json("anchors", "list", "--config", str(config), "--json")
    assert [(r["name"], r["version"], r["count"]) for r in rows] == [
        ("pool", "v1", 25),
        ("public", "v1", 40),
        ("public", "v2", 30),
    ]
    catalogue = AnchorCatalogue(tmp_path / "hub" / "state" / "anchors")
    assert rows[2]["sha256"] == catalogue.get("public", "v2").info.sha256
    assert set(rows[0]) == {"name", "version", "sha256", "count", "created_at", "source"}

    empty = write_coordinator_config(tmp_path / "empty", pki.coordinator, "[policy]\n")
    assert run_json("anchors", "list", "--config", str(empty), "--json") == []


@dataclass
class Consortium:
    client_toml: Path
    silo_log: Path


@pytest.fixture
def consortium(pki: Pki, tmp_path: Path) -> Iterator[Consortium]:
    """A coordinator with the kjv silo registered, after 12 calls the silo's audit log signed."""
    hub = CoordinatorThread(
        write_coordinator_config(
            tmp_path / "hub",
            pki.coordinator,
            f'[policy]\nregister = ["{SPIFFE}/silo/*"]\nlist = ["{SPIFFE}/client/*"]\n',
        )
    )
    config = write_silo_config(tmp_path / "silo", pki.silo, model="static-64")
    with config.open("a") as toml:
        toml.write(
            f'\n[coordinator]\nendpoint = "{hub.target}"\nname = "hub"\n'
            "\n[audit]\ncheckpoint_every = 4\n"
        )
    ingest_kjv(config, 12)
    silo = ServerThread(config)
    try:
        settings = load_silo_config(config)
        assert asyncio.run(register_with_coordinator(settings, silo.target)) is not None

        async def describe() -> None:
            async with SiloClient(silo.target, pki.home_client, expect=f"{SPIFFE}/silo/kjv") as c:
                for _ in range(12):
                    await c.describe(timeout=10)

        asyncio.run(describe())
        silo.stop()
        assert settings.audit is not None
        client = write_client_config(
            tmp_path / "client.toml", pki.home_client, coordinator=hub.target
        )
        yield Consortium(client, settings.audit.log)
    finally:
        hub.stop()


@pytest.mark.integration
def test_listings_of_a_running_coordinator_print_json(consortium: Consortium) -> None:
    client = str(consortium.client_toml)
    silos = run_json("silos", "--config", client, "--json")
    assert [row["silo"] for row in silos] == ["kjv"]
    assert silos[0]["space"]["model_id"] == "static-64"
    assert run_json("adapters", "--config", client, "--json") == []

    heads = run_json("audit", "heads", "kjv", "--config", client, "--json")
    assert heads and all(set(h) >= {"covers", "head", "signature", "public_key"} for h in heads)
    # Into a pipe or file, as `audit heads kjv > FILE` always wrote it: the same heads file.
    assert run_json("audit", "heads", "kjv", "--config", client) == heads
    heads_file = consortium.client_toml.parent / "heads.json"
    heads_file.write_text(json.dumps(heads))
    assert [h.covers for h in read_heads_file(heads_file)] == [h["covers"] for h in heads]
    verified = runner.invoke(
        app,
        ["audit", "verify", str(consortium.silo_log), "--allow-tail", "--heads", str(heads_file)],
    )
    assert verified.exit_code == 0, verified.output
    assert f"{len(heads)} recorded checkpoint heads found" in verified.stdout
