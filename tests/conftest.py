"""Shared fixtures: a real consortium PKI, real silo configs, real silo servers on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import settings

from silobridge.core.config import TlsFiles
from silobridge.rpc.transport import open_channel
from silobridge.security.pki.ca import (
    CertificateAuthority,
    approve_request,
    init_ca,
    issue_certificate,
    load_ca,
    request_certificate,
)
from silobridge.v1 import coordinator_pb2, coordinator_pb2_grpc

# No hypothesis deadline: a per-example time limit is a timed assertion, and on the shared
# 2-core machines it fails on load alone (speed is the benchmarks' business).
settings.register_profile("silobridge", deadline=None)
settings.load_profile("silobridge")

REPO = Path(__file__).resolve().parents[1]


def load_demo_data_builder() -> ModuleType:
    """``scripts/build_demo_data.py`` as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location(
        "build_demo_data", REPO / "scripts" / "build_demo_data.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # dataclasses look their module up in sys.modules while the class is being built.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# The demo corpus is repository data; servers started by tests inherit where it is.
os.environ.setdefault("SILOBRIDGE_DEMO_DATA", str(REPO / "data" / "demo"))

PASSPHRASE = b"test-passphrase"
CONSORTIUM = "testnet"


@dataclass(frozen=True)
class Pki:
    """Certificates for the parties the tests play."""

    ca: CertificateAuthority
    root: Path
    silo: TlsFiles  # spiffe://testnet/silo/kjv, org bible
    coordinator: TlsFiles  # spiffe://testnet/coordinator/hub, org consortium
    home_client: TlsFiles  # spiffe://testnet/client/alice, org bible (the silo's own org)
    other_client: TlsFiles  # spiffe://testnet/client/mallory, org elsewhere (not allowed)
    foreign_ca_client: TlsFiles  # a valid-looking client of another consortium's CA
    expired_client: TlsFiles  # alice's org, but expired a minute ago


def _issue(ca: CertificateAuthority, root: Path, role: str, name: str, org: str) -> TlsFiles:
    # Servers also name loopback, for tests that dial a raw channel expecting no identity.
    server = role != "client"
    files = issue_certificate(
        ca,
        root / name,
        role=role,
        name=name,
        org=org,
        dns_names=["localhost"] if server else [],
        ip_addresses=["127.0.0.1"] if server else [],
    )
    return TlsFiles(cert=files.cert, key=files.key, ca=files.ca_cert)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    init_ca(root / "ca", CONSORTIUM, PASSPHRASE)
    ca = load_ca(root / "ca", PASSPHRASE)

    init_ca(root / "foreign-ca", CONSORTIUM, PASSPHRASE)
    foreign = load_ca(root / "foreign-ca", PASSPHRASE)
    foreign_files = issue_certificate(
        foreign, root / "foreign", role="client", name="alice", org="bible"
    )

    expired_dir = root / "expired"
    request = request_certificate(
        expired_dir, consortium=CONSORTIUM, role="client", name="alice", org="bible"
    )
    now = datetime.now(UTC)
    expired_pem = approve_request(
        ca,
        request.csr.read_bytes(),
        # Inside the CA's own validity (which starts 5 minutes back), but over a minute ago.
        not_before=now - timedelta(minutes=4),
        not_after=now - timedelta(minutes=1),
    )
    (expired_dir / "alice.crt").write_bytes(expired_pem)

    return Pki(
        ca=ca,
        root=root,
        silo=_issue(ca, root, "silo", "kjv", "bible"),
        coordinator=_issue(ca, root, "coordinator", "hub", "consortium"),
        home_client=_issue(ca, root, "client", "alice", "bible"),
        other_client=_issue(ca, root, "client", "mallory", "elsewhere"),
        # The foreign client trusts OUR CA for the server, so only its own cert is foreign.
        foreign_ca_client=TlsFiles(
            cert=foreign_files.cert, key=foreign_files.key, ca=root / "ca" / "ca.crt"
        ),
        expired_client=TlsFiles(
            cert=expired_dir / "alice.crt", key=request.key, ca=root / "ca" / "ca.crt"
        ),
    )


def write_silo_config(
    directory: Path,
    tls: TlsFiles,
    *,
    model: str = "minilm-l3-onnx",
    name: str = "kjv",
    data_dir: Path | None = None,
    disclose: tuple[str, ...] = (),
    max_k: int = 50,
    extra: str = "",
    accept_query_text: bool = False,
    max_rerank_depth: int = 200,
) -> Path:
    """A silo.toml whose access rules let the coordinator and the silo's own org in."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "silo.toml"
    disclosed = ", ".join(f'"{f}"' for f in disclose)
    config.write_text(
        f"""
[silo]
name = "{name}"
data_dir = "{data_dir or directory / "data"}"
model = "{model}"

[server]
listen = "127.0.0.1:0"
workers = 2
grace_seconds = 2

[tls]
cert = "{tls.cert}"
key = "{tls.key}"
ca = "{tls.ca}"

[limits]
max_k = {max_k}
rate_per_second = 10000.0   # tests send bursts; the rate-limit tests set their own
burst = 10000
max_embed_texts = 64
max_text_chars = 2000
max_rerank_depth = {max_rerank_depth}

[access]
describe = ["spiffe://{CONSORTIUM}/coordinator/*", "org:bible"]
embed = ["org:bible/client"]
embed_anchors = ["spiffe://{CONSORTIUM}/coordinator/*"]
search = ["spiffe://{CONSORTIUM}/coordinator/*", "org:bible/client"]
query = ["org:bible"]
disclose_fields = [{disclosed}]
accept_query_text = {"true" if accept_query_text else "false"}
{extra}
"""
    )
    return config


# The index backends a silo test may run on (README: "Pointing a silo at Milvus").
INDEX_BACKENDS = ("faiss", "milvus")


def index_table(backend: str) -> str:
    """``[index]`` for ``backend``, as a silo.toml's last table (``write_silo_config``'s
    ``extra``): Milvus Lite in a file of the silo's data directory."""
    if backend == "faiss":
        return ""
    return '\n[index]\nbackend = "milvus"\nuri = "milvus.db"\n'


class ServerThread:
    """A real silo gRPC server on its own event loop in a background thread."""

    def __init__(self, config_path: Path) -> None:
        from silobridge.silo_agent.config import load_silo_config
        from silobridge.silo_agent.server import RunningSilo, open_service, start_silo

        self.service = open_service(load_silo_config(config_path))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_silo(self.service, listen="127.0.0.1:0"), self.loop
        )
        self.running: RunningSilo = future.result(timeout=60)
        self.port = self.running.port

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(0.5), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


@pytest.fixture
def serve_silo() -> Iterator[type[ServerThread]]:
    started: list[ServerThread] = []

    class _Tracked(ServerThread):
        def __init__(self, config_path: Path) -> None:
            super().__init__(config_path)
            started.append(self)

    yield _Tracked
    for server in started:
        server.stop()


def ingest_kjv(config_path: Path, count: int) -> None:
    """Ingest the first ``count`` KJV verses into the silo of ``config_path`` (its own model)."""
    import json

    from silobridge.embedding.embedders import load_embedder
    from silobridge.evaluation.corpus import load_records
    from silobridge.silo_agent.config import load_silo_config
    from silobridge.silo_agent.ingest import ingest
    from silobridge.silo_agent.store.data import SiloData

    corpus = config_path.parent / "kjv.jsonl"
    corpus.write_text(
        "".join(
            json.dumps({"id": r.id, "text": r.text}) + "\n" for r in load_records("kjv")[:count]
        )
    )
    config = load_silo_config(config_path)
    embedder = load_embedder(config.model)
    data = SiloData.open(config.data_dir, embedder.space, config.index)
    ingest([corpus], data, embedder)
    data.close()


def write_client_config(
    path: Path,
    tls: TlsFiles,
    *,
    coordinator: str = "127.0.0.1:9",
    home_silo: str = "127.0.0.1:9",
    home_silo_name: str = "kjv",
    coordinator_name: str = "hub",
    timeout_seconds: float = 30.0,
) -> Path:
    """A client.toml at ``path`` over mTLS with ``tls`` (an unused address where the test has no
    such peer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"""
[client]
coordinator = "{coordinator}"
coordinator_name = "{coordinator_name}"
home_silo = "{home_silo}"
home_silo_name = "{home_silo_name}"
timeout_seconds = {timeout_seconds}

[tls]
cert = "{tls.cert}"
key = "{tls.key}"
ca = "{tls.ca}"
"""
    )
    return path


def write_coordinator_config(directory: Path, tls: TlsFiles, policy: str) -> Path:
    """A coordinator.toml over mTLS with the given ``[policy]`` (and ``[policy.query]``) text."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "coordinator.toml"
    path.write_text(
        f"""
[coordinator]
state_dir = "state"
[tls]
cert = "{tls.cert}"
key = "{tls.key}"
ca = "{tls.ca}"
{policy}
"""
    )
    return path


class CoordinatorThread:
    """A real coordinator gRPC server on its own event loop in a background thread."""

    def __init__(self, config_path: Path) -> None:
        from silobridge.coordinator.config import load_coordinator_config
        from silobridge.coordinator.server import (
            RunningCoordinator,
            open_coordinator,
            start_coordinator,
        )

        self.service = open_coordinator(load_coordinator_config(config_path))
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(
            start_coordinator(self.service, listen="127.0.0.1:0"), self.loop
        )
        self.running: RunningCoordinator = future.result(timeout=60)
        self.target = f"127.0.0.1:{self.running.port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.running.stop(0.5), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


def register_silo(
    coordinator: str, silo: str, tls: TlsFiles
) -> coordinator_pb2.RegisterSiloResponse:
    """Register the silo serving at ``silo`` with the coordinator at ``coordinator``, as the
    silo's own certificate ``tls``; the coordinator's RegisterSiloResponse."""

    async def run() -> coordinator_pb2.RegisterSiloResponse:
        channel = open_channel(coordinator, tls)
        try:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            request = coordinator_pb2.RegisterSiloRequest(endpoint=silo)
            response: coordinator_pb2.RegisterSiloResponse = await stub.RegisterSilo(
                request, timeout=10
            )
            return response
        finally:
            await channel.close()

    return asyncio.run(run())


# --- silo agents as child processes (`silobridge silo serve`) -------------------------------

SILOBRIDGE = [sys.executable, "-m", "silobridge.cli"]
LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*SILOBRIDGE, *args], capture_output=True, text=True, timeout=timeout, check=False
    )


class SiloProcess:
    """`silobridge silo serve` in a child process; the bound port is read from its output."""

    def __init__(self, config: Path) -> None:
        self.proc = subprocess.Popen(
            [*SILOBRIDGE, "silo", "serve", "--config", str(config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.output: list[str] = []
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # blocks until the server says where it listens, or dies
            self.output.append(line)
            match = LISTENING.search(line)
            if match:
                self.endpoint = f"{match.group(1)}:{match.group(2)}"
                return
        raise AssertionError("silo exited before listening:\n" + "".join(self.output))

    def terminate(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        assert self.proc.stdout is not None
        self.output.extend(self.proc.stdout)
        self.proc.stdout.close()
        return code


@pytest.fixture
def processes() -> Iterator[list[SiloProcess]]:
    started: list[SiloProcess] = []
    yield started
    for process in started:
        if process.proc.poll() is None:
            process.proc.kill()
            process.proc.wait()
        if process.proc.stdout is not None:
            process.proc.stdout.close()
