"""Prometheus metrics: a silo and a coordinator over real mTLS, real federated traffic (answered,
denied by a silo's policy, rate-limited, refused by the consortium policy, live writes), then
``/metrics`` scraped over real HTTP and parsed: the counters moved by what was sent.

Also the ``[metrics]`` table: absent means off, and every mistake in it is refused by name.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from silobridge.audit.log import open_audit_log
from silobridge.client.api import FederatedClient
from silobridge.client.config import load_client_config
from silobridge.coordinator.config import load_coordinator_config
from silobridge.core.config import MetricsSettings
from silobridge.core.documents import Document
from silobridge.core.errors import ConfigError, PermissionDenied, ResourceExhausted
from silobridge.core.federation import SiloOutcome
from silobridge.core.listings import SiloAction
from silobridge.metrics.exporter import open_metrics
from silobridge.rpc.silo_client import SiloClient
from silobridge.silo_agent.config import load_silo_config

from .conftest import (
    CONSORTIUM,
    SILOBRIDGE,
    CoordinatorThread,
    Pki,
    ServerThread,
    _issue,
    ingest_kjv,
    register_silo,
    write_client_config,
    write_coordinator_config,
    write_silo_config,
)

SPIFFE = f"spiffe://{CONSORTIUM}"
INGESTED = 40
# Every caller's FederatedSearch budget at the coordinator: alice spends it all, then is refused.
BURST = 4
SILO_SERVICE = "/silobridge.v1.SiloService"
COORDINATOR_SERVICE = "/silobridge.v1.CoordinatorService"
METRICS_ON = '[metrics]\nlisten = "127.0.0.1:0"\n'

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int | None) -> Samples:
    """Every sample ``/metrics`` serves on ``port``, over HTTP, as the text format parses."""
    assert port is not None, "metrics are off"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode("utf-8")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a labelled counter not yet incremented (not shown yet)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


@dataclass
class Net:
    root: Path
    silo: ServerThread
    coordinator: CoordinatorThread
    space: str
    dim: int
    alice: Path  # client.toml of spiffe://testnet/client/alice, org bible: the silo serves her
    mallory: Path  # of spiffe://testnet/client/mallory, org elsewhere: the silo refuses him
    silo_before: Samples
    coordinator_before: Samples


@pytest.fixture(scope="module")
def net(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    root = tmp_path_factory.mktemp("metrics")
    certificate = _issue(pki.ca, root / "certs", "silo", "a", "bible")
    # A checkpoint every 5 lines: the traffic below signs at least one.
    extra = f'admin = ["org:bible/client"]\n[audit]\ncheckpoint_every = 5\n{METRICS_ON}'
    silo_toml = write_silo_config(root / "a", certificate, model="static-64", name="a", extra=extra)
    ingest_kjv(silo_toml, INGESTED)
    silo = ServerThread(silo_toml)
    coordinator_toml = write_coordinator_config(
        root / "coordinator",
        pki.coordinator,
        f"""
[policy]
register = ["{SPIFFE}/silo/*"]
list = ["{SPIFFE}/client/*"]
# One token per query, never refilled within a test run.
rate_per_second = 0.0001
burst = {BURST}
[policy.query]
"*" = ["{SPIFFE}/client/*"]
{METRICS_ON}""",
    )
    coordinator = CoordinatorThread(coordinator_toml)
    try:
        registered = register_silo(coordinator.target, silo.target, certificate)
        clients = {
            name: write_client_config(
                root / f"{name}.toml",
                tls,
                coordinator=coordinator.target,
                home_silo=silo.target,
                home_silo_name="a",
            )
            for name, tls in (("alice", pki.home_client), ("mallory", pki.other_client))
        }
        yield Net(
            root,
            silo,
            coordinator,
            registered.space.space_id,
            registered.space.dimension,
            clients["alice"],
            clients["mallory"],
            scrape(silo.running.metrics_port),
            scrape(coordinator.running.metrics_port),
        )
    finally:
        coordinator.stop()
        silo.stop()


@dataclass(frozen=True)
class Sent:
    """What the traffic did, as the clients saw it."""

    alice: list[SiloOutcome]  # per single search, silo a's status
    batch: list[SiloOutcome]
    mallory: SiloOutcome
    rate_limited: bool
    manage_refused: bool


async def _documents(*batches: Sequence[Document]) -> AsyncIterator[Sequence[Document]]:
    for batch in batches:
        yield batch


@pytest.fixture(scope="module")
def traffic(net: Net, pki: Pki) -> Sent:
    """Real gRPC traffic, once: searches, a batch, refusals, a live write."""
    rows = np.random.default_rng(7).normal(size=(5, net.dim)).astype(np.float32)

    async def run() -> Sent:
        async with FederatedClient(load_client_config(net.alice)) as alice:
            singles = [
                await alice.search_vector(row, net.space, k=3, silos=("a",)) for row in rows[:2]
            ]
            batch = await alice.search_vectors(rows[2:4], net.space, k=3, silos=("a",))
            try:  # her fifth query: over the budget of four
                await alice.search_vector(rows[4], net.space, k=3, silos=("a",))
                rate_limited = False
            except ResourceExhausted:
                rate_limited = True
            try:  # the consortium policy names nobody who may manage silos
                await alice.manage_silo("a", SiloAction.DISABLE)
                manage_refused = False
            except PermissionDenied:
                manage_refused = True
        async with FederatedClient(load_client_config(net.mallory)) as mallory:
            refused = await mallory.search_vector(rows[0], net.space, k=3, silos=("a",))
        async with SiloClient(net.silo.target, pki.home_client) as silo:
            written = [
                receipt
                async for receipt in silo.write_documents(
                    _documents([Document("live-1", "a psalm of praise"), Document("live-2", "x")])
                )
            ]
        assert sum(receipt.inserted for receipt in written) == 2
        return Sent(
            alice=[answer.statuses[0].state for answer in singles],
            batch=[status.state for status in batch.statuses],
            mallory=refused.statuses[0].state,
            rate_limited=rate_limited,
            manage_refused=manage_refused,
        )

    return asyncio.run(run())


def test_the_coordinator_counts_rpcs_silo_outcomes_fan_outs_and_refusals(
    net: Net, traffic: Sent
) -> None:
    assert traffic.alice == [SiloOutcome.OK, SiloOutcome.OK]
    assert traffic.batch == [SiloOutcome.OK]
    assert traffic.mallory is SiloOutcome.DENIED
    assert traffic.rate_limited and traffic.manage_refused
    before, after = net.coordinator_before, scrape(net.coordinator.running.metrics_port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    search = f"{COORDINATOR_SERVICE}/FederatedSearch"
    # Alice's two answered searches and mallory's one; alice's fifth query was refused.
    assert moved("silobridge_rpcs_total", method=search, code="OK") == 3
    assert moved("silobridge_rpcs_total", method=search, code="RESOURCE_EXHAUSTED") == 1
    assert moved("silobridge_rpc_duration_seconds_count", method=search) == 4
    batch = f"{COORDINATOR_SERVICE}/FederatedSearchBatch"
    assert moved("silobridge_rpcs_total", method=batch, code="OK") == 1
    manage = f"{COORDINATOR_SERVICE}/ManageSilo"
    assert moved("silobridge_rpcs_total", method=manage, code="PERMISSION_DENIED") == 1

    # Per silo: three answered (two searches, one batch), one refused by the silo itself.
    assert moved("silobridge_silo_outcomes_total", silo="a", outcome="ok") == 3
    assert moved("silobridge_silo_outcomes_total", silo="a", outcome="denied") == 1
    assert moved("silobridge_silo_call_duration_seconds_count", silo="a") == 4
    assert moved("silobridge_fanout_duration_seconds_count", kind="search") == 3
    assert moved("silobridge_fanout_duration_seconds_count", kind="batch") == 1
    assert moved("silobridge_fanout_duration_seconds_sum", kind="search") > 0

    assert moved("silobridge_refusals_total", rpc="FederatedSearch", code="RESOURCE_EXHAUSTED") == 1
    assert moved("silobridge_refusals_total", rpc="ManageSilo", code="PERMISSION_DENIED") == 1
    assert moved("silobridge_gate_refusals_total", reason="rate_limit") == 1
    assert moved("silobridge_gate_refusals_total", reason="denylist") == 0
    # Every call above left an audit line at the coordinator.
    assert moved("silobridge_audit_lines_total") >= 6
    assert value(after, "silobridge_audit_log_lines") >= value(
        after, "silobridge_audit_lines_total"
    )


def test_the_silo_counts_rpcs_refusals_sizes_writes_and_its_audit_log(
    net: Net, traffic: Sent
) -> None:
    assert traffic.mallory is SiloOutcome.DENIED
    before, after = net.silo_before, scrape(net.silo.running.metrics_port)

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    search = f"{SILO_SERVICE}/Search"
    assert moved("silobridge_rpcs_total", method=search, code="OK") == 2
    assert moved("silobridge_rpcs_total", method=search, code="PERMISSION_DENIED") == 1
    assert moved("silobridge_rpcs_total", method=f"{SILO_SERVICE}/SearchBatch", code="OK") == 1
    assert moved("silobridge_rpc_duration_seconds_count", method=search) == 3
    assert moved("silobridge_refusals_total", rpc="Search", code="PERMISSION_DENIED") == 1

    # Sizes, read at the scrape: the ingested corpus in the index, the live writes beside it.
    assert value(after, "silobridge_documents") == INGESTED + 2
    assert value(after, "silobridge_index_vectors", space=net.space, slot="source") == INGESTED
    assert value(after, "silobridge_index_pending_changes", space=net.space, slot="source") == 2
    assert moved("silobridge_documents_written_total", change="inserted") == 2
    assert moved("silobridge_documents_written_total", change="deleted") == 0
    assert value(after, "silobridge_migration_state", state="none") == 1
    assert value(after, "silobridge_migration_state", state="reencoding") == 0
    assert value(after, "silobridge_migration_progress_ratio") == 1

    # The audit log: a line per call, a signed checkpoint every five, and its age.
    assert moved("silobridge_audit_lines_total") >= 5
    assert value(after, "silobridge_audit_checkpointed_line") > 0
    age: tuple[str, frozenset[tuple[str, str]]] = (
        "silobridge_audit_checkpoint_age_seconds",
        frozenset(),
    )
    assert age in after and after[age] >= 0
    # Process metrics come from the server's own registry too.
    assert value(after, "process_cpu_seconds_total") > 0


def test_metrics_are_off_without_the_table_and_their_port_closes_with_the_server(
    pki: Pki, tmp_path: Path
) -> None:
    policy = f'[policy]\nlist = ["{SPIFFE}/client/*"]\n'
    plain = CoordinatorThread(write_coordinator_config(tmp_path / "off", pki.coordinator, policy))
    try:
        assert plain.running.metrics is None and plain.running.metrics_port is None
    finally:
        plain.stop()
    with_metrics = write_coordinator_config(tmp_path / "on", pki.coordinator, policy + METRICS_ON)
    served = CoordinatorThread(with_metrics)
    port = served.running.metrics_port
    try:
        assert value(scrape(port), "silobridge_gate_refusals_total", reason="rate_limit") == 0
    finally:
        served.stop()
    with pytest.raises(urllib.error.URLError):
        scrape(port)


def test_a_served_coordinator_prints_where_its_metrics_are(pki: Pki, tmp_path: Path) -> None:
    policy = f'[policy]\nlist = ["{SPIFFE}/client/*"]\n{METRICS_ON}'
    config = write_coordinator_config(tmp_path, pki.coordinator, policy)
    process = subprocess.Popen(
        [*SILOBRIDGE, "coordinator", "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert process.stdout is not None
    try:
        port = None
        for line in process.stdout:  # until the server says where it listens, or dies
            found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", line)
            if found:
                port = int(found.group(1))
            if "listening on" in line:
                break
        assert port is not None, "no metrics line before the listening line"
        served = scrape(port)
        assert ("silobridge_audit_log_lines", frozenset()) in served
        assert ("silobridge_gate_refusals_total", frozenset({("reason", "denylist")})) in served
    finally:
        process.terminate()
        process.wait(timeout=60)
        process.stdout.close()


# --- the [metrics] table ---------------------------------------------------------------------

SILO_BASE = """
[silo]
name = "kjv"
model = "static-64"
[tls]
cert = "kjv.crt"
key = "kjv.key"
ca = "ca.crt"
"""
COORDINATOR_BASE = """
[tls]
cert = "hub.crt"
key = "hub.key"
ca = "ca.crt"
"""
Loader = Callable[[Path], MetricsSettings]
LOADERS: dict[str, tuple[str, Loader]] = {
    "silo": (SILO_BASE, lambda path: load_silo_config(path).metrics),
    "coordinator": (COORDINATOR_BASE, lambda path: load_coordinator_config(path).metrics),
}


@pytest.mark.parametrize("party", sorted(LOADERS))
def test_metrics_are_off_unless_the_table_names_where(party: str, tmp_path: Path) -> None:
    base, load = LOADERS[party]
    path = tmp_path / f"{party}.toml"
    path.write_text(base)
    assert load(path) == MetricsSettings(listen=None)
    assert open_metrics(load(path)) is None
    path.write_text(base + '[metrics]\nlisten = "0.0.0.0:9464"\n')
    assert load(path).listen == "0.0.0.0:9464"
    path.write_text(base + '[metrics]\nlisten = "[::1]:0"\n')
    assert load(path).listen == "[::1]:0"


@pytest.mark.parametrize("party", sorted(LOADERS))
@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ("[metrics]\n", r"\[metrics\] listen is required"),
        ('[metrics]\nlisten = "http://127.0.0.1:9464/metrics"\n', r"\[metrics\] listen"),
        ('[metrics]\nlisten = "127.0.0.1"\n', r"\[metrics\] listen: .* is not host:port"),
        ('[metrics]\nlisten = "127.0.0.1:70000"\n', r"port '70000' must be a number from 0"),
        ("[metrics]\nlisten = 9464\n", r"\[metrics\] listen must be str"),
        ('[metrics]\nlisten = "127.0.0.1:9464"\nport = 9464\n', r"unknown key\(s\) in \[metrics\]"),
        ('metrics = "127.0.0.1:9464"\n', r"\[metrics\] must be a table"),
    ],
)
def test_mistakes_in_the_metrics_table_are_refused_by_name(
    party: str, table: str, fragment: str, tmp_path: Path
) -> None:
    base, load = LOADERS[party]
    path = tmp_path / f"{party}.toml"
    # A bare key must come before the first table to be top-level.
    path.write_text(table + base if table.startswith("metrics =") else base + table)
    with pytest.raises(ConfigError, match=fragment):
        load(path)


def test_the_checkpoint_age_survives_a_restart_of_the_log(tmp_path: Path) -> None:
    path, key = tmp_path / "audit.log", tmp_path / "keys" / "audit.key"
    started = time.time()
    with open_audit_log(path, key, checkpoint_every=3) as log:
        for number in range(4):
            log.append({"rpc": "Search", "allowed": True, "results": number})
        running = log.progress()
    # Three events and their checkpoint, then a fourth event.
    assert (running.lines, running.written, running.checkpointed) == (5, 5, 3)
    closed = log.progress()  # closing signed the fourth event
    assert (closed.lines, closed.written, closed.checkpointed) == (6, 6, 5)
    with open_audit_log(path, key) as reopened:
        again = reopened.progress()
        # Nothing written since the restart; the newest checkpoint is read back from the log
        # (its time to the millisecond the line records).
        assert (again.lines, again.written, again.checkpointed) == (6, 0, 5)
        assert again.checkpoint_unix is not None and again.checkpoint_unix >= started - 0.001
        reopened.append({"rpc": "Search", "allowed": True})
        assert reopened.progress().written == 1
