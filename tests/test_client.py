"""The client: ``client.toml`` parsing, result conversion, and the CLI against real peers."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import typer
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from silobridge.client.api import FederatedClient
from silobridge.client.cli import (
    adapters_command,
    format_age,
    query_command,
    silos_command,
    split_silos,
    train_command,
)
from silobridge.client.config import load_client_config
from silobridge.core.config import TlsFiles
from silobridge.core.endpoints import validate_endpoint
from silobridge.core.errors import ConfigError, InvalidArgument, Unavailable
from silobridge.core.spaces import SpaceDescriptor
from silobridge.rpc.convert import (
    adapter_listing_from_proto,
    answer_from_proto,
    silo_listing_from_proto,
    space_to_proto,
)
from silobridge.rpc.silo_client import SiloClient
from silobridge.v1 import common_pb2, coordinator_pb2

from .conftest import Pki, ServerThread, write_silo_config

GOOD = """
[client]
coordinator = "coordinator.example.org:50050"
home_silo = "10.0.0.7:50051"
home_silo_name = "kjv"
timeout_seconds = 12

[tls]
cert = "certs/alice.crt"
key = "certs/alice.key"
ca = "/etc/consortium/ca.crt"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "client.toml"
    path.write_text(text)
    return path


# --- client.toml ---------------------------------------------------------------------------


def test_good_file_with_relative_tls_paths(tmp_path: Path) -> None:
    config = load_client_config(write(tmp_path, GOOD))
    assert config.coordinator == "coordinator.example.org:50050"
    assert config.home_silo == "10.0.0.7:50051"
    assert config.timeout_seconds == 12.0
    assert not config.insecure
    assert config.tls == TlsFiles(
        cert=tmp_path / "certs" / "alice.crt",
        key=tmp_path / "certs" / "alice.key",
        ca=Path("/etc/consortium/ca.crt"),
    )


def test_timeout_defaults_to_thirty_seconds(tmp_path: Path) -> None:
    config = load_client_config(write(tmp_path, GOOD.replace("timeout_seconds = 12\n", "")))
    assert config.timeout_seconds == 30.0


def test_insecure_needs_no_tls(tmp_path: Path) -> None:
    text = '[client]\ncoordinator = "127.0.0.1:1"\nhome_silo = "[::1]:2"\ninsecure = true\n'
    config = load_client_config(write(tmp_path, text))
    assert config.insecure
    assert config.tls is None


def test_tls_is_required_unless_insecure(tmp_path: Path) -> None:
    text = '[client]\ncoordinator = "127.0.0.1:1"\nhome_silo = "127.0.0.1:2"\n'
    with pytest.raises(ConfigError, match=r"\[tls\] cert, key and ca are required"):
        load_client_config(write(tmp_path, text))


@pytest.mark.parametrize("key", ["coordinator", "home_silo"])
def test_missing_endpoint_is_named(tmp_path: Path, key: str) -> None:
    text = "\n".join(line for line in GOOD.splitlines() if not line.startswith(key))
    with pytest.raises(ConfigError, match=rf"\[client\] {key} is required"):
        load_client_config(write(tmp_path, text))


def test_missing_tls_file_key_is_named(tmp_path: Path) -> None:
    text = GOOD.replace('key = "certs/alice.key"\n', "")
    with pytest.raises(ConfigError, match=r"\[tls\] key is required"):
        load_client_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("coordinator", "https://coordinator.example.org:50050"),
        ("coordinator", "coordinator.example.org"),
        ("home_silo", "10.0.0.7:0"),
        ("home_silo", "10.0.0.7:70000"),
    ],
)
def test_bad_endpoint_is_named(tmp_path: Path, key: str, value: str) -> None:
    text = re.sub(rf'^{key} = ".*"$', f'{key} = "{value}"', GOOD, flags=re.MULTILINE)
    with pytest.raises(ConfigError, match=rf"\[client\] {key}: .*{re.escape(value)}"):
        load_client_config(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("timeout_seconds = 12", "timeout_seconds = 0"), "timeout_seconds"),
        (GOOD.replace("timeout_seconds = 12", 'timeout_seconds = "fast"'), "timeout_seconds"),
        (GOOD.replace("timeout_seconds = 12", "timeout = 12"), r"unknown key\(s\) in \[client\]"),
        (GOOD + "[server]\nlisten = '0.0.0.0:1'\n", r"unknown section\(s\): server"),
        (GOOD + 'ca_bundle = "ca.pem"\n', r"unknown key\(s\) in \[tls\]: ca_bundle"),
    ],
)
def test_mistakes_are_refused(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_client_config(write(tmp_path, text))


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"client\.toml does not exist"):
        load_client_config(tmp_path / "client.toml")


# --- host:port validation --------------------------------------------------------------------

LABEL = st.from_regex(r"\A[a-z0-9]([a-z0-9_-]{0,20}[a-z0-9])?\Z")
HOSTNAMES = (
    st.lists(LABEL, min_size=1, max_size=4)
    .map(".".join)
    .filter(lambda host: not host.replace(".", "").isdigit())
)
IPV4 = st.ip_addresses(v=4).map(str)
IPV6 = st.ip_addresses(v=6).map(lambda address: f"[{address}]")
PORTS = st.integers(min_value=1, max_value=65535)


@given(host=st.one_of(HOSTNAMES, IPV4, IPV6), port=PORTS)
def test_valid_endpoints_are_accepted_unchanged(host: str, port: int) -> None:
    endpoint = f"{host}:{port}"
    assert validate_endpoint(endpoint) == endpoint


@given(
    host=st.one_of(HOSTNAMES, IPV4),
    port=st.one_of(st.integers(max_value=0), st.integers(min_value=65536)),
)
def test_ports_outside_the_range_are_refused(host: str, port: int) -> None:
    with pytest.raises(InvalidArgument, match="port"):
        validate_endpoint(f"{host}:{port}")


@given(host=st.one_of(HOSTNAMES, IPV4), port=PORTS, junk=st.sampled_from(" /@?#,;"))
def test_hosts_with_foreign_characters_are_refused(host: str, port: int, junk: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_endpoint(f"{host}{junk}x:{port}")


@given(text=st.text(alphabet=st.characters(blacklist_characters=":"), max_size=30))
def test_text_without_a_port_is_refused(text: str) -> None:
    with pytest.raises(InvalidArgument, match="host:port"):
        validate_endpoint(text)


@pytest.mark.parametrize("endpoint", ["300.1.1.1:80", "[::g]:80", "-silo:80", ":80", "a..b:80"])
def test_malformed_hosts_are_refused(endpoint: str) -> None:
    with pytest.raises(InvalidArgument):
        validate_endpoint(endpoint)


# --- results -------------------------------------------------------------------------------

SPACE = SpaceDescriptor("kjv@5f3a", "minilm-l3-onnx", 384, "5f3a9c0d1e2b4a68")
OTHER = SpaceDescriptor("web@77aa", "static-64", 64, "77aa00bb11cc22dd")


def test_result_converts_hits_and_statuses_into_json() -> None:
    reply = coordinator_pb2.FederatedSearchResponse(
        hits=[
            coordinator_pb2.FederatedHit(
                silo="kjv",
                hit=common_pb2.Hit(doc_id="Gen.1.1", score=0.75, fields={"book": "Genesis"}),
                merged_score=3.5,
            ),
            coordinator_pb2.FederatedHit(
                silo="web", hit=common_pb2.Hit(doc_id="John.1.1", score=0.5), merged_score=2.0
            ),
        ],
        statuses=[
            common_pb2.SiloStatus(
                silo="kjv", state=common_pb2.SILO_STATE_OK, hit_count=1, elapsed_ms=12.5
            ),
            common_pb2.SiloStatus(
                silo="web",
                state=common_pb2.SILO_STATE_OK,
                adapter_id="ad-1",
                hit_count=1,
                elapsed_ms=30.0,
            ),
            common_pb2.SiloStatus(
                silo="slow", state=common_pb2.SILO_STATE_TIMEOUT, message="deadline"
            ),
            # A state this client does not know must not pass as success.
            common_pb2.SiloStatus(silo="new", state=common_pb2.SiloState.ValueType(99)),
        ],
    )
    result = answer_from_proto(reply, "kjv@5f3a")
    assert [status.silo for status in result.failed] == ["slow", "new"]
    assert [status.state for status in result.statuses] == ["ok", "ok", "timeout", "error"]

    document = json.loads(json.dumps(result.to_dict()))
    assert document["source_space"] == "kjv@5f3a"
    assert document["hits"][0] == {
        "silo": "kjv",
        "doc_id": "Gen.1.1",
        "score": 0.75,
        "merged_score": 3.5,
        "fields": {"book": "Genesis"},
    }
    assert document["hits"][1]["fields"] == {}
    assert document["statuses"][1]["adapter_id"] == "ad-1"
    assert document["statuses"][2] == {
        "silo": "slow",
        "state": "timeout",
        "message": "deadline",
        "adapter_id": "",
        "hit_count": 0,
        "elapsed_ms": 0.0,
    }


def test_adapter_and_silo_views_keep_what_the_tables_show() -> None:
    adapter = adapter_listing_from_proto(
        coordinator_pb2.AdapterInfo(
            adapter_id="ad-1",
            kind="procrustes",
            source=space_to_proto(OTHER),
            target=space_to_proto(SPACE),
            anchor_set="bible",
            anchor_set_version="v2",
            metrics={"heldout_ndcg@10": 0.81},
            created_unix=1_700_000_000,
            stale=True,
            stale_reason="silo kjv changed model",
        )
    )
    assert (adapter.source, adapter.target) == (OTHER, SPACE)
    assert (adapter.anchor_set, adapter.version) == ("bible", "v2")
    assert adapter.metrics["heldout_ndcg@10"] == pytest.approx(0.81)
    assert adapter.stale and "changed model" in adapter.stale_reason

    unregistered = silo_listing_from_proto(
        coordinator_pb2.SiloInfo(silo="kjv", message="unreachable")
    )
    assert unregistered.space is None
    assert not unregistered.healthy


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-5, "0s"),
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (7200, "2h"),
        (3 * 86400, "3d"),
    ],
)
def test_age_is_coarse_and_never_negative(seconds: float, shown: str) -> None:
    assert format_age(seconds) == shown


def test_silo_list_ignores_blanks() -> None:
    assert split_silos(" kjv, web,,") == ["kjv", "web"]
    assert split_silos("") == []


# --- the SDK and the CLI against real peers ---------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cli() -> typer.Typer:
    # Registered the way silobridge.cli does, without depending on the rest of the CLI.
    app = typer.Typer()
    app.command("query")(query_command)
    app.command("silos")(silos_command)
    app.command("adapters")(adapters_command)
    app.command("train")(train_command)
    return app


def client_config(
    tmp_path: Path, *, coordinator: str, home_silo: str, tls: TlsFiles | None
) -> Path:
    lines = [
        "[client]",
        f'coordinator = "{coordinator}"',
        f'home_silo = "{home_silo}"',
        'home_silo_name = "kjv"',
        'coordinator_name = "hub"',
        "timeout_seconds = 5",
    ]
    if tls is None:
        lines.append("insecure = true")
    else:
        lines += ["[tls]", f'cert = "{tls.cert}"', f'key = "{tls.key}"', f'ca = "{tls.ca}"']
    return write(tmp_path, "\n".join(lines) + "\n")


def assert_clean_failure(output: str, code: str, where: str) -> None:
    assert re.search(rf"error: {code}: .+\({re.escape(where)}\)", output), output
    assert "Traceback" not in output


@pytest.mark.parametrize(
    "args",
    [
        ["query", "the Lord is my shepherd"],
        ["silos"],
        ["adapters"],
        ["train", "--source", "a", "--target", "b", "--anchor-set", "bible"],
    ],
    ids=lambda args: args[0],
)
def test_unreachable_peer_is_a_readable_error(tmp_path: Path, args: list[str]) -> None:
    dead = f"127.0.0.1:{free_port()}"
    config = client_config(tmp_path, coordinator=dead, home_silo=dead, tls=None)
    result = CliRunner().invoke(cli(), [args[0], "--config", str(config), *args[1:]])
    assert result.exit_code == 1, result.output
    where = "home silo" if args[0] == "query" else "coordinator"
    assert_clean_failure(result.output, "UNAVAILABLE", f"{where} at {dead}")


def test_bad_config_is_a_readable_error(tmp_path: Path) -> None:
    config = write(tmp_path, '[client]\ncoordinator = "nowhere"\nhome_silo = "127.0.0.1:1"\n')
    result = CliRunner().invoke(cli(), ["silos", "--config", str(config)])
    assert result.exit_code == 1
    assert "error:" in result.output and "coordinator" in result.output
    assert "Traceback" not in result.output


def test_the_sdk_names_the_peer_it_could_not_reach(tmp_path: Path) -> None:
    dead = f"127.0.0.1:{free_port()}"
    config = load_client_config(client_config(tmp_path, coordinator=dead, home_silo=dead, tls=None))

    async def run() -> None:
        async with FederatedClient(config) as client:
            with pytest.raises(Unavailable, match=rf"\(coordinator at {re.escape(dead)}\)") as hub:
                await client.list_silos()
            assert hub.value.status_name == "UNAVAILABLE"
            with pytest.raises(Unavailable, match=rf"\(home silo at {re.escape(dead)}\)"):
                await client.embed(["In the beginning"])
            with pytest.raises(Unavailable, match=rf"\(coordinator at {re.escape(dead)}\)"):
                async for _ in client.train("a@1", "b@2", "public"):
                    pass

    asyncio.run(run())


def test_the_query_signer_is_loaded_once_per_client(pki: Pki, tmp_path: Path) -> None:
    key = tmp_path / "alice.key"
    key.write_bytes(pki.home_client.key.read_bytes())
    tls = TlsFiles(cert=pki.home_client.cert, key=key, ca=pki.home_client.ca)
    dead = f"127.0.0.1:{free_port()}"
    config = load_client_config(client_config(tmp_path, coordinator=dead, home_silo=dead, tls=tls))

    async def run() -> None:
        async with FederatedClient(config) as client:
            key.write_bytes(b"not a key any more")
            # The query is still signed (the key was read with the client); only then does the
            # call fail, at the coordinator.
            with pytest.raises(Unavailable, match="coordinator at"):
                await client.search_vector(np.ones(4, np.float32), "kjv@5f3a", k=1)

    asyncio.run(run())


def test_a_client_key_that_cannot_sign_is_refused_when_the_client_is_made(
    pki: Pki, tmp_path: Path
) -> None:
    tls = TlsFiles(cert=pki.home_client.cert, key=pki.other_client.key, ca=pki.home_client.ca)
    dead = f"127.0.0.1:{free_port()}"
    config = load_client_config(client_config(tmp_path, coordinator=dead, home_silo=dead, tls=tls))

    async def run() -> None:
        async with FederatedClient(config):
            pass

    with pytest.raises(ConfigError, match="does not belong to the client certificate"):
        asyncio.run(run())


@pytest.fixture
def home_silo(pki: Pki, tmp_path: Path, serve_silo: type[ServerThread]) -> Iterator[ServerThread]:
    yield serve_silo(write_silo_config(tmp_path / "silo", pki.silo, model="static-64"))


@pytest.mark.integration
def test_embedding_happens_at_the_home_silo(
    home_silo: ServerThread, pki: Pki, tmp_path: Path
) -> None:
    config = load_client_config(
        client_config(
            tmp_path, coordinator="127.0.0.1:1", home_silo=home_silo.target, tls=pki.home_client
        )
    )

    async def run() -> tuple[np.ndarray, SpaceDescriptor, SpaceDescriptor]:
        async with FederatedClient(config) as client:
            matrix, space = await client.embed(["In the beginning", "Jesus wept"])
        async with SiloClient(home_silo.target, pki.home_client) as silo:
            described = (await silo.describe(timeout=10)).space
        return matrix, space, described

    matrix, space, described = asyncio.run(run())
    assert space == described
    assert matrix.shape == (2, space.dimension)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, rtol=1e-5)
    assert not np.allclose(matrix[0], matrix[1])


@pytest.mark.integration
def test_query_names_the_peer_that_failed(
    home_silo: ServerThread, pki: Pki, tmp_path: Path
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    # The home silo embeds the text; the coordinator is down.
    config = client_config(
        tmp_path, coordinator=dead, home_silo=home_silo.target, tls=pki.home_client
    )
    result = CliRunner().invoke(cli(), ["query", "--config", str(config), "Jesus wept"])
    assert result.exit_code == 1, result.output
    assert_clean_failure(result.output, "UNAVAILABLE", f"coordinator at {dead}")

    # Another organization's user may not embed at this silo: its text never gets there.
    config = client_config(
        tmp_path, coordinator=dead, home_silo=home_silo.target, tls=pki.other_client
    )
    result = CliRunner().invoke(cli(), ["query", "--config", str(config), "Jesus wept"])
    assert result.exit_code == 1, result.output
    assert_clean_failure(result.output, "PERMISSION_DENIED", f"home silo at {home_silo.target}")


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--merge", "borda"], "unknown merge mode 'borda'; choose one of calibrated, rrf"),
        (["-k", "0"], "k must be at least 1, got 0"),
    ],
)
def test_bad_query_options_are_refused_before_anything_is_sent(
    tmp_path: Path, option: list[str], message: str
) -> None:
    dead = f"127.0.0.1:{free_port()}"
    config = client_config(tmp_path, coordinator=dead, home_silo=dead, tls=None)
    result = CliRunner().invoke(cli(), ["query", "--config", str(config), "hi", *option])
    assert result.exit_code == 1
    assert f"error: {message}" in result.output
    assert "UNAVAILABLE" not in result.output
