"""A whole consortium on loopback, as real processes: what ``make demo`` and the e2e tests run.

It provisions a CA and a certificate per party, writes every config file, ingests each silo's
corpus, and starts the coordinator and the silo agents as separate ``silobridge`` processes,
logging to files. Every step is the command a user would type (printed as it runs), and every
process it started is stopped on exit, also after an error or Ctrl-C.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from silobridge.core.errors import ConfigError, FailedPrecondition

SILOBRIDGE = (sys.executable, "-m", "silobridge.cli")
LISTENING = re.compile(r"listening on ([\d.]+):(\d+)")
REGISTERED = re.compile(r"registered with coordinator")
# Demo only: a real consortium types the CA passphrase and keeps it out of the environment.
DEMO_PASSPHRASE = "demo-only-passphrase"  # noqa: S105 (a throwaway demo CA)


def say(text: str) -> None:
    """A line of a demo's narration, flushed (the demos' children write to the same terminal)."""
    print(text, flush=True)


def step(text: str) -> None:
    """A demo step's heading, in bold."""
    say(f"\n\033[1m== {text}\033[0m")


@dataclass(frozen=True)
class SiloSpec:
    name: str
    org: str
    model: str
    corpus: Path
    disclose: tuple[str, ...] = ()
    accept_query_text: bool = False
    # Who may write documents and migrate the silo while it serves ([access] admin).
    admins: tuple[str, ...] = ()
    # Querying sides' models the silo also runs and fits its own adapters from ([receiving]).
    local_models: tuple[str, ...] = ()
    # Translated queries kept in memory as the hubness reference ([receiving]; 0: none).
    traffic_pool: int = 0
    traffic_max_share: float = 0.05
    # A correction after the adapter, fitted on that pool behind a label-free guard.
    refine: bool = False
    # Whether the silo answers PreferAnchors (train --prefer; [receiving]).
    anchor_preferences: bool = False


@dataclass(frozen=True)
class ClientSpec:
    name: str
    org: str
    home_silo: str


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_for(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        """Wait until the log matches ``pattern``; raise with the log's tail if it dies first."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = pattern.search(self.text())
            if match:
                return match
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        tail = "\n".join(self.text().splitlines()[-25:])
        state = "exited" if self.popen.poll() is not None else "timed out"
        raise FailedPrecondition(f"{self.name} {state} before {pattern.pattern!r}; log:\n{tail}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


@dataclass
class LocalConsortium:
    """Everything under ``root``: ``ca/``, ``certs/``, one folder per party, ``logs/``."""

    root: Path
    silos: Sequence[SiloSpec]
    clients: Sequence[ClientSpec]
    consortium: str = "demo"
    admin: str = "admin"
    # Silo name (or "*") -> rules of who may query it, for coordinator.toml's [policy.query].
    query_policy: Mapping[str, Sequence[str]] = field(default_factory=dict)
    say: Callable[[str], None] = print
    procs: dict[str, Proc] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.root = self.root.resolve()
        self.logs = self.root / "logs"
        # Children print tables to our terminal, or to a log file: give them its width (or a
        # wide default, so tables in files stay readable).
        columns = str(shutil.get_terminal_size(fallback=(160, 40)).columns)
        self.env = {
            **os.environ,
            "SILOBRIDGE_CA_PASSPHRASE": DEMO_PASSPHRASE,
            "COLUMNS": os.environ.get("COLUMNS", columns),
        }

    def __enter__(self) -> LocalConsortium:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop_all()

    # --- commands ---------------------------------------------------------------------------

    def run(self, *args: str, capture: bool = False) -> str:
        """Run ``silobridge ARGS`` to completion and return its stdout if ``capture``.

        Without ``capture`` the command is echoed and its output (tables, progress bars) goes
        straight to this process's terminal, as if the user had typed it.
        """
        shown = " ".join(args).replace(str(self.root) + "/", "")
        if not capture:
            self.say(f"$ silobridge {shown}")
            sys.stdout.flush()
        done = subprocess.run(
            [*SILOBRIDGE, *args],
            env=self.env,
            capture_output=capture,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            detail = f":\n{done.stderr[-3000:]}" if capture else " (its output is above)"
            raise FailedPrecondition(f"silobridge {shown} failed ({done.returncode}){detail}")
        return done.stdout if capture else ""

    def start(self, name: str, *args: str) -> Proc:
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{name}.log"
        # A fresh log per start, so readiness is read from this run's lines only.
        handle = log.open("wb")
        popen = subprocess.Popen(
            [*SILOBRIDGE, *args], env=self.env, stdout=handle, stderr=subprocess.STDOUT
        )
        handle.close()
        proc = Proc(name, popen, log)
        self.procs[name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.stop()
        self.procs.clear()

    # --- paths ------------------------------------------------------------------------------

    def certs(self, name: str) -> Path:
        return self.root / "certs" / name

    def silo_config(self, name: str) -> Path:
        return self.root / "silos" / name / "silo.toml"

    def client_config(self, name: str) -> Path:
        return self.root / "clients" / name / "client.toml"

    @property
    def coordinator_config(self) -> Path:
        return self.root / "coordinator" / "coordinator.toml"

    @property
    def adapter_key(self) -> Path:
        """The coordinator's adapter public key (written on its first start)."""
        return self.root / "coordinator" / "state" / "adapter-signing.key.pub"

    # --- provisioning -----------------------------------------------------------------------

    def provision(self) -> None:
        """Create the CA and one certificate per party (kept on re-runs)."""
        ca = self.root / "ca"
        if not (ca / "ca.crt").exists():
            self.run("pki", "init", "--dir", str(ca), "--consortium", self.consortium)
        parties = [("coordinator", "hub", "consortium"), ("client", self.admin, "consortium")]
        parties += [("silo", s.name, s.org) for s in self.silos]
        parties += [("client", c.name, c.org) for c in self.clients]
        for role, name, org in parties:
            if not (self.certs(name) / f"{name}.crt").exists():
                # Servers also name loopback, where the demo tools dial them directly; peers
                # that expect an identity check the CA-assigned name instead.
                loopback = [] if role == "client" else ["--dns", "localhost", "--ip", "127.0.0.1"]
                self.run(
                    "pki", "issue", "--ca-dir", str(ca), "--out", str(self.certs(name)),
                    "--role", role, "--name", name, "--org", org, *loopback, capture=True,
                )  # fmt: skip
        self.say(f"certificates for {len(parties)} parties in {self.root / 'certs'}")

    def _tls(self, name: str) -> str:
        certs = self.certs(name)
        return (
            f'[tls]\ncert = "{certs / f"{name}.crt"}"\nkey = "{certs / f"{name}.key"}"\n'
            f'ca = "{certs / "ca.crt"}"\n'
        )

    def write_coordinator_config(self) -> Path:
        spiffe = f"spiffe://{self.consortium}"
        query = dict(self.query_policy) or {"*": [f"{spiffe}/client/*"]}
        rows = "\n".join(f'"{silo}" = {_toml_list(rules)}' for silo, rules in query.items())
        path = self.coordinator_config
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"""# The consortium's coordinator. Paths are relative to this file.
[coordinator]
name = "hub"
state_dir = "state"                  # state.sqlite, adapters/, anchors/

[server]
listen = "127.0.0.1:0"              # 0: any free port; the log says which
silo_timeout_seconds = 10

{self._tls("hub")}
[policy]
register = ["{spiffe}/silo/*"]      # silos register themselves (name = certificate name)
anchors = ["{spiffe}/silo/*"]
adapters = ["{spiffe}/silo/*"]      # silos fetch signed adapters to translate queries
list = ["{spiffe}/client/*", "{spiffe}/silo/*"]
train = ["{spiffe}/client/{self.admin}"]
manage = ["{spiffe}/client/{self.admin}"]  # `silobridge coordinator silo disable|enable|remove`
rate_per_second = 1000.0            # per caller; the demo's retention table is a burst
burst = 1000

[policy.query]                      # who may query which silo; "*" = silos without a row
{rows}
"""
        )
        return path

    def write_silo_config(self, spec: SiloSpec, coordinator: str) -> Path:
        spiffe = f"spiffe://{self.consortium}"
        path = self.silo_config(spec.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"""# Silo {spec.name} of organization {spec.org}. Paths are relative to this file.
[silo]
name = "{spec.name}"
data_dir = "data"
model = "{spec.model}"

[server]
listen = "127.0.0.1:0"

[limits]
rate_per_second = 1000.0             # the demo's retention table sends 2,500 queries in seconds
burst = 1000

{self._tls(spec.name)}
[coordinator]
endpoint = "{coordinator}"           # registers itself there on start
name = "hub"                         # refuses any server there but spiffe://…/coordinator/hub
adapter_key = "{self.adapter_key}"   # adapters must be signed by this key

[access]
describe = ["{spiffe}/coordinator/hub", "org:{spec.org}"]
embed = ["org:{spec.org}/client"]    # only our own people send text to our model
embed_anchors = ["{spiffe}/coordinator/hub"]
search = ["{spiffe}/coordinator/hub", "org:{spec.org}/client"]
query = ["{spiffe}/client/*"]         # on whose behalf: clients of any member organization
accept_spaces = ["*"]                # translate queries from any space with a signed adapter
disclose_fields = {_toml_list(spec.disclose)}
accept_query_text = {"true" if spec.accept_query_text else "false"}
admin = {_toml_list(spec.admins)}                 # live writes and migrations
{self._receiving(spec)}"""
        )
        return path

    @staticmethod
    def _receiving(spec: SiloSpec) -> str:
        if not spec.local_models and not spec.traffic_pool and not spec.anchor_preferences:
            return ""
        return f"""
[receiving]
local_models = {_toml_list(spec.local_models)}   # fits its own adapter from each, locally
traffic_pool = {spec.traffic_pool}        # translated queries kept in memory as hubness reference
traffic_max_share = {spec.traffic_max_share}   # of the pool one signer may hold
refine = {str(spec.refine).lower()}   # refinement from that pool, behind its guard
anchor_preferences = {str(spec.anchor_preferences).lower()}   # answers train --prefer
"""

    def write_client_config(
        self, name: str, home_silo: str, coordinator: str, home_silo_name: str
    ) -> Path:
        path = self.client_config(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(
            f"""# Client {name}. Its query text is embedded by its own organization's silo only.
[client]
coordinator = "{coordinator}"
coordinator_name = "hub"
home_silo = "{home_silo}"
home_silo_name = "{home_silo_name}"   # the client refuses any other certificate at home_silo
timeout_seconds = 30

{self._tls(name)}"""
        )
        return path

    # --- running ----------------------------------------------------------------------------

    def ingest(self, spec: SiloSpec) -> None:
        # Ingest needs only [silo]; the coordinator endpoint is filled in when serving.
        config = self.write_silo_config(spec, self.endpoints.get("coordinator", "127.0.0.1:1"))
        self.run("silo", "ingest", "--config", str(config), str(spec.corpus))

    def start_coordinator(self, timeout: float = 120) -> str:
        config = self.write_coordinator_config()
        proc = self.start("coordinator", "coordinator", "serve", "--config", str(config))
        match = proc.wait_for(LISTENING, timeout)
        endpoint = f"{match.group(1)}:{match.group(2)}"
        self.endpoints["coordinator"] = endpoint
        self.say(f"coordinator listening on {endpoint} (log: {proc.log})")
        return endpoint

    def start_silo(self, spec: SiloSpec, timeout: float = 180) -> str:
        coordinator = self.endpoints.get("coordinator")
        if coordinator is None:
            raise ConfigError("start the coordinator before the silos")
        config = self.write_silo_config(spec, coordinator)
        proc = self.start(spec.name, "silo", "serve", "--config", str(config))
        match = proc.wait_for(LISTENING, timeout)
        self.endpoints[spec.name] = f"{match.group(1)}:{match.group(2)}"
        proc.wait_for(REGISTERED, timeout)
        self.say(f"silo {spec.name} on {self.endpoints[spec.name]}, registered (log: {proc.log})")
        return self.endpoints[spec.name]

    def write_client_configs(self) -> None:
        coordinator = self.endpoints["coordinator"]
        for client in self.clients:
            self.write_client_config(
                client.name, self.endpoints[client.home_silo], coordinator, client.home_silo
            )
        # The admin trains adapters; any home silo will do, it never embeds text.
        first = self.silos[0].name
        self.write_client_config(self.admin, self.endpoints[first], coordinator, first)


def _toml_list(values: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{v}"' for v in values) + "]"
