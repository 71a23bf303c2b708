"""The silo's calls to its coordinator: [coordinator] config, registration with retry, anchors.

The coordinator is a small real gRPC server over mTLS (a test double that records what it got),
so these tests do not depend on the coordinator's own implementation.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from silobridge.cli import app
from silobridge.core.config import TlsFiles
from silobridge.core.endpoints import validate_endpoint
from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.embedding.embedders import load_embedder
from silobridge.evaluation.corpus import load_records
from silobridge.rpc.convert import space_to_proto
from silobridge.rpc.transport import server_credentials
from silobridge.security.identity import identity_from_certificate_pem
from silobridge.silo_agent.config import CoordinatorLink, load_silo_config
from silobridge.silo_agent.registration import advertise_address, register_with_coordinator
from silobridge.silo_agent.server import serve
from silobridge.v1 import coordinator_pb2, coordinator_pb2_grpc

from .conftest import CONSORTIUM, Pki, write_silo_config

pytestmark = pytest.mark.integration

SILO_ID = f"spiffe://{CONSORTIUM}/silo/kjv"
ANCHOR_COUNT = 2_300  # three chunks of at most 1,000 vectors


def _caller(context: Any) -> str:
    pems: list[bytes] = list(context.auth_context().get("x509_pem_cert", []))
    return identity_from_certificate_pem(pems[0]).spiffe_id if pems else ""


@dataclass
class FakeCoordinator(coordinator_pb2_grpc.CoordinatorServiceServicer):
    """Records RegisterSilo and anchor calls; fails RegisterSilo with ``failures`` first."""

    failures: list[grpc.StatusCode] = field(default_factory=list)
    always: grpc.StatusCode | None = None
    anchors: list[str] = field(default_factory=list)
    registrations: list[tuple[str, str]] = field(default_factory=list)  # (caller, endpoint)
    anchor_requests: list[coordinator_pb2.GetAnchorSetRequest] = field(default_factory=list)
    submitted: list[coordinator_pb2.SubmitAnchorEmbeddingsRequest] = field(default_factory=list)
    submitter: str = ""
    called: threading.Event = field(default_factory=threading.Event)

    def RegisterSilo(
        self, request: coordinator_pb2.RegisterSiloRequest, context: Any
    ) -> coordinator_pb2.RegisterSiloResponse:
        self.registrations.append((_caller(context), request.endpoint))
        self.called.set()
        code = self.always or (self.failures.pop(0) if self.failures else None)
        if code is not None:
            context.abort(code, f"test double says {code.name}")
        space = load_embedder("static-64").space
        return coordinator_pb2.RegisterSiloResponse(silo="kjv", space=space_to_proto(space))

    def GetAnchorSet(
        self, request: coordinator_pb2.GetAnchorSetRequest, context: Any
    ) -> Iterator[coordinator_pb2.GetAnchorSetResponse]:
        self.anchor_requests.append(request)
        if not self.anchors:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no anchor set named {request.name!r}")
        for offset in range(0, len(self.anchors), 700):
            yield coordinator_pb2.GetAnchorSetResponse(
                name=request.name,
                version=request.version or "v3",
                sha256="0" * 64,
                texts=self.anchors[offset : offset + 700],
                offset=offset,
                total=len(self.anchors),
            )

    def SubmitAnchorEmbeddings(
        self,
        request_iterator: Iterator[coordinator_pb2.SubmitAnchorEmbeddingsRequest],
        context: Any,
    ) -> coordinator_pb2.SubmitAnchorEmbeddingsResponse:
        self.submitter = _caller(context)
        for chunk in request_iterator:
            self.submitted.append(chunk)
        return coordinator_pb2.SubmitAnchorEmbeddingsResponse(
            stored=sum(len(c.vectors) for c in self.submitted)
        )

    def _unused(self, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in the test double")

    def ListSilos(self, request: Any, context: Any) -> Any:
        return self._unused(context)

    def TrainAdapter(self, request: Any, context: Any) -> Any:
        return self._unused(context)

    def ListAdapters(self, request: Any, context: Any) -> Any:
        return self._unused(context)

    def FederatedSearch(self, request: Any, context: Any) -> Any:
        return self._unused(context)

    def GetAdapter(self, request: Any, context: Any) -> Any:
        return self._unused(context)

    def ManageSilo(self, request: Any, context: Any) -> Any:
        return self._unused(context)

    def RecordAuditHead(self, request: Any, context: Any) -> Any:
        return self._unused(context)

    def ListAuditHeads(self, request: Any, context: Any) -> Any:
        return self._unused(context)

    def FederatedSearchBatch(self, request: Any, context: Any) -> Any:
        return self._unused(context)


@dataclass
class Coordinator:
    double: FakeCoordinator
    endpoint: str


@pytest.fixture
def coordinator(pki: Pki) -> Iterator[Coordinator]:
    double = FakeCoordinator()
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    coordinator_pb2_grpc.add_CoordinatorServiceServicer_to_server(double, server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(pki.coordinator))
    server.start()
    yield Coordinator(double, f"127.0.0.1:{port}")
    server.stop(None).wait()


def silo_config(root: Path, tls: TlsFiles, coordinator: str | None) -> Path:
    extra = f'[coordinator]\nendpoint = "{coordinator}"\n' if coordinator else ""
    return write_silo_config(root, tls, model="static-64", extra=extra)


# --- [coordinator] configuration -----------------------------------------------------------


BASE = """
[silo]
name = "kjv"
model = "static-64"
[server]
listen = "0.0.0.0:7000"
insecure = true
"""


def test_coordinator_section_is_optional_and_advertise_defaults_to_the_bound_port(
    tmp_path: Path,
) -> None:
    path = tmp_path / "silo.toml"
    path.write_text(BASE)
    assert load_silo_config(path).coordinator is None
    path.write_text(BASE + '[coordinator]\nendpoint = "hub.example:7443"\n')
    config = load_silo_config(path)
    assert config.coordinator == CoordinatorLink(endpoint="hub.example:7443", advertise=None)
    assert advertise_address(config, 41234) == "0.0.0.0:41234"
    path.write_text(
        BASE + '[coordinator]\nendpoint = "hub.example:7443"\nadvertise = "kjv.example:7000"\n'
    )
    assert advertise_address(load_silo_config(path), 41234) == "kjv.example:7000"


@pytest.mark.parametrize(
    ("section", "fragment"),
    [
        ("[coordinator]\n", "[coordinator] endpoint is required"),
        ('[coordinator]\nendpoint = "hub"\n', "[coordinator] endpoint: 'hub' is not host:port"),
        ('[coordinator]\nendpoint = "hub:0"\n', "endpoint: 'hub:0': port '0' must be a number"),
        ('[coordinator]\nendpoint = "h:1"\nadvertise = ":7"\n', "advertise: ':7' is not host:port"),
        ('[coordinator]\nendpoint = "::1:7443"\n', "IPv6 host in brackets"),
        ('[coordinator]\nendpoint = "h:1"\nport = 3\n', "unknown key(s) in [coordinator]: port"),
    ],
)
def test_bad_coordinator_section_names_the_key(tmp_path: Path, section: str, fragment: str) -> None:
    path = tmp_path / "silo.toml"
    path.write_text(BASE + section)
    with pytest.raises(ConfigError) as caught:
        load_silo_config(path)
    assert fragment in caught.value.message


@given(
    host=st.from_regex(
        r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z0-9]{1,10}){0,3}|\[::1\]|\[fe80::1\]",
        fullmatch=True,
    ),
    port=st.integers(-5, 70_000),
)
def test_host_port_accepts_exactly_ports_1_to_65535(host: str, port: int) -> None:
    value = f"{host}:{port}"
    if all(part.isdigit() for part in host.split(".")) and not host.startswith("["):
        return  # numeric hosts are IPv4 addresses, covered by the client config tests
    if 1 <= port <= 65_535:
        assert validate_endpoint(value) == value
    else:
        with pytest.raises(InvalidArgument, match="port"):
            validate_endpoint(value)
    if port == 0:
        assert validate_endpoint(value, allow_any_port=True) == value


# --- registration ----------------------------------------------------------------------------


def test_registration_retries_an_unavailable_coordinator_then_succeeds(
    coordinator: Coordinator,
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    coordinator.double.failures = [grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED]
    config = load_silo_config(silo_config(tmp_path, pki.silo, coordinator.endpoint))
    result = asyncio.run(
        register_with_coordinator(config, "silo.example:50051", initial_backoff=0.01)
    )
    assert result is not None
    assert (result.silo, result.coordinator) == ("kjv", coordinator.endpoint)
    assert result.space_id == load_embedder("static-64").space.space_id
    # Identity comes from the silo's own certificate, the endpoint from the request.
    assert coordinator.double.registrations == [(SILO_ID, "silo.example:50051")] * 3
    assert f"silo kjv registered with coordinator {coordinator.endpoint}" in capsys.readouterr().out
    assert (
        f"registered with coordinator {coordinator.endpoint} as kjv (space {result.space_id})"
        in caplog.text
    )


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.FAILED_PRECONDITION,
    ],
)
def test_a_refusal_stops_retrying(
    coordinator: Coordinator,
    pki: Pki,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    code: grpc.StatusCode,
) -> None:
    coordinator.double.always = code
    config = load_silo_config(silo_config(tmp_path, pki.silo, coordinator.endpoint))
    result = asyncio.run(
        register_with_coordinator(config, "silo.example:50051", initial_backoff=0.01)
    )
    assert result is None
    assert len(coordinator.double.registrations) == 1
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert errors and code.name in errors[0].getMessage()


def _run_serve(config_path: Path, until: threading.Event, *, let_registration_finish: bool) -> None:
    """``silo serve`` in this thread until the coordinator double saw a RegisterSilo call."""

    async def main() -> None:
        stop = asyncio.Event()
        server = asyncio.create_task(serve(load_silo_config(config_path), stop=stop))
        seen = await asyncio.get_running_loop().run_in_executor(None, until.wait, 60)
        assert seen, "the silo never called RegisterSilo"
        if let_registration_finish:  # the double has answered; let the silo read the answer
            # No task left: the silo has read the answer already (the test below checks it).
            tasks = [t for t in asyncio.all_tasks() if t.get_name() == "silo-registration"]
            if tasks:
                await asyncio.wait(tasks, timeout=30)
        stop.set()
        await server

    asyncio.run(main())


def test_silo_serve_registers_itself_with_its_bound_port(
    coordinator: Coordinator, pki: Pki, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = silo_config(tmp_path, pki.silo, coordinator.endpoint)
    _run_serve(config, coordinator.double.called, let_registration_finish=True)
    printed = capsys.readouterr().out
    listening = printed.split("listening on ", 1)[1].split()[0]
    assert listening.startswith("127.0.0.1:") and not listening.endswith(":0")
    assert coordinator.double.registrations == [(SILO_ID, listening)]
    assert f"silo kjv registered with coordinator {coordinator.endpoint}" in printed


def test_silo_serve_stops_cleanly_while_registration_is_still_retrying(
    coordinator: Coordinator,
    pki: Pki,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    coordinator.double.always = grpc.StatusCode.UNAVAILABLE
    # Returns only if shutdown cancels the retry loop (which sleeps 1 s, then 2 s, ...); any
    # warning about an unawaited task or an unclosed channel fails the test (filterwarnings).
    config = silo_config(tmp_path, pki.silo, coordinator.endpoint)
    _run_serve(config, coordinator.double.called, let_registration_finish=False)
    assert "registered with coordinator" not in capsys.readouterr().out
    # asyncio logs (rather than warns about) tasks destroyed while pending.
    assert not [r for r in caplog.records if r.name == "asyncio"]
    assert "retrying in 1.0 s" in caplog.text


# --- push-anchors ----------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["", "v2"])
def test_push_anchors_embeds_locally_and_submits_in_chunks(
    coordinator: Coordinator, pki: Pki, tmp_path: Path, version: str
) -> None:
    texts = [record.text for record in load_records("pydoc_anchors", limit=ANCHOR_COUNT)]
    coordinator.double.anchors = texts
    config = silo_config(tmp_path, pki.silo, coordinator.endpoint)
    args = ["silo", "push-anchors", "--config", str(config), "--anchor-set", "pydoc"]
    result = CliRunner().invoke(app, args + (["--version", version] if version else []))
    assert result.exit_code == 0, result.output

    space = load_embedder("static-64").space
    expected_version = version or "v3"  # the double's "newest"
    assert (
        f"pushed {ANCHOR_COUNT} anchor vectors of pydoc {expected_version} "
        f"in space {space.space_id}"
    ) in result.stdout
    assert [r.version for r in coordinator.double.anchor_requests] == [version]
    double = coordinator.double
    assert double.submitter == SILO_ID
    assert [c.offset for c in double.submitted] == [0, 1_000, 2_000]
    for chunk in double.submitted:
        assert (chunk.anchor_set, chunk.version) == ("pydoc", expected_version)
        assert chunk.space == space_to_proto(space)
    vectors = np.stack([np.frombuffer(v.data, "<f4") for c in double.submitted for v in c.vectors])
    assert vectors.shape == (ANCHOR_COUNT, space.dimension)
    # In order: row i is text i embedded by the silo's own model.
    sample = [0, 999, 1_000, ANCHOR_COUNT - 1]
    local = load_embedder("static-64").embed([texts[i] for i in sample])
    np.testing.assert_allclose(vectors[sample], local, atol=1e-5)


def test_push_anchors_without_a_coordinator_section_says_what_to_add(
    pki: Pki, tmp_path: Path
) -> None:
    config = silo_config(tmp_path, pki.silo, None)
    result = CliRunner().invoke(
        app, ["silo", "push-anchors", "--config", str(config), "--anchor-set", "pydoc"]
    )
    assert result.exit_code == 1
    assert "no [coordinator] section" in result.output
    assert "endpoint" in result.output


def test_push_anchors_reports_a_coordinator_refusal(
    coordinator: Coordinator, pki: Pki, tmp_path: Path
) -> None:
    config = silo_config(tmp_path, pki.silo, coordinator.endpoint)
    result = CliRunner().invoke(
        app, ["silo", "push-anchors", "--config", str(config), "--anchor-set", "pydoc"]
    )
    assert result.exit_code == 1
    assert "NOT_FOUND: no anchor set named 'pydoc'" in result.output
    assert coordinator.double.submitted == []
