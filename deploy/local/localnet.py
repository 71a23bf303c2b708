"""A whole consortium on loopback, as real processes: what ``make demo`` and the e2e tests run.

It provisions a CA and a startup kit per party (``kit new`` on the party's side, ``pki approve``
at the CA, ``kit install`` back in the kit, then ``doctor --offline``), fills each kit's config
in with where its peers listen and the demo's settings, ingests each silo's corpus, and starts
the coordinator and the silo agents as separate ``silobridge`` processes, logging to files.
Every step is the command a user would type (printed as it runs), and every process it started
is stopped on exit, also after an error or Ctrl-C.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from processes import Proc

from silobridge.core.errors import ConfigError, FailedPrecondition
from silobridge.kits.build import write_config
from silobridge.kits.party import KitManifest
from silobridge.security.identity import Role

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
class LocalConsortium:
    """Everything under ``root``: ``ca/``, a kit per party (``coordinator/``, ``silos/NAME``,
    ``clients/NAME``), ``logs/``."""

    root: Path
    silos: Sequence[SiloSpec]
    clients: Sequence[ClientSpec]
    consortium: str = "demo"
    admin: str = "admin"
    # Each server's /metrics ("host:port"; port 0: any free port; "off": none).
    metrics: str = "127.0.0.1:0"
    # Silo name (or "*") -> rules of who may query it, for coordinator.toml's [policy.query].
    query_policy: Mapping[str, Sequence[str]] = field(default_factory=dict)
    say: Callable[[str], None] = print
    procs: dict[str, Proc] = field(default_factory=dict)
    endpoints: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        names = ["hub", self.admin, *(s.name for s in self.silos), *(c.name for c in self.clients)]
        if len(set(names)) != len(names):
            raise ConfigError(f"every party needs its own name (one kit each): {names}")
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
            detail = (
                f":\n{(done.stderr or done.stdout)[-3000:]}"
                if capture
                else " (its output is above)"
            )
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

    # --- paths: one startup kit per party -------------------------------------------------

    def kit(self, name: str) -> Path:
        """The kit directory of ``name`` (the coordinator's is ``coordinator/``)."""
        if name == "hub":
            return self.root / "coordinator"
        if any(s.name == name for s in self.silos):
            return self.root / "silos" / name
        return self.root / "clients" / name

    def certs(self, name: str) -> Path:
        """The kit's ``tls/``: its key, its certificate, the CA certificate."""
        return self.kit(name) / "tls"

    def silo_config(self, name: str) -> Path:
        return self.kit(name) / "silo.toml"

    def client_config(self, name: str) -> Path:
        return self.kit(name) / "client.toml"

    @property
    def coordinator_config(self) -> Path:
        return self.kit("hub") / "coordinator.toml"

    @property
    def adapter_key(self) -> Path:
        """The coordinator's adapter public key (made with its kit)."""
        return self.kit("hub") / "state" / "adapter-signing.key.pub"

    # --- provisioning: kit new → pki approve → kit install, as the parties would ------------

    def doctor_parties(self) -> list[str]:
        return [name for _role, name, _org in self._parties()]

    def _parties(self) -> list[tuple[Role, str, str]]:
        parties = [(Role.COORDINATOR, "hub", "consortium"), (Role.CLIENT, self.admin, "consortium")]
        parties += [(Role.SILO, s.name, s.org) for s in self.silos]
        parties += [(Role.CLIENT, c.name, c.org) for c in self.clients]
        return parties

    def provision(self) -> None:
        """Create the CA and one startup kit per party (kept on re-runs)."""
        ca = self.root / "ca"
        if not (ca / "ca.crt").exists():
            self.run("pki", "init", "--dir", str(ca), "--consortium", self.consortium)
        parties = self._parties()
        for role, name, org in parties:
            if not (self.kit(name) / "tls" / f"{name}.crt").exists():
                self._make_kit(ca, role, name, org)
        self.say(
            f"startup kits for {len(parties)} parties under {self.root} "
            "(kit new, pki approve, kit install)"
        )
        for role, name, _org in parties:
            if role is not Role.CLIENT:
                self.run(
                    "doctor", "--config", str(self._config_of(name)), "--offline", capture=True
                )

    def _config_of(self, name: str) -> Path:
        manifest = KitManifest.read(self.kit(name))
        return self.kit(name) / manifest.party.config_name

    def _make_kit(self, ca: Path, role: Role, name: str, org: str) -> None:
        kit = self.kit(name)
        if not (kit / "kit.json").exists():
            shutil.rmtree(kit, ignore_errors=True)  # a `kit new` cut short by an earlier run
            self._new_kit(kit, role, name, org)
        # A kit whose certificate never came back (an earlier run stopped here) keeps its key,
        # its data and its state: its request is approved again (a renewal to the CA).
        csr = kit / "tls" / f"{name}.csr"
        approve = ["pki", "approve", str(csr), "--ca-dir", str(ca), "--expect-role", role.value,
                   "--expect-name", name, "--expect-org", org, "--rotate"]  # fmt: skip
        if role is Role.COORDINATOR:
            approve.append("--allow-coordinator")
        self.run(*approve, capture=True)
        install = ["kit", "install", str(kit), "--cert", str(csr.with_suffix(".crt")),
                   "--ca", str(ca / "ca.crt")]  # fmt: skip
        if role is Role.SILO:
            install += ["--adapter-key", str(self.adapter_key)]
        self.run(*install, capture=True)

    def _new_kit(self, kit: Path, role: Role, name: str, org: str) -> None:
        args = ["kit", "new", "--out", str(kit), "--role", role.value, "--name", name,
                "--org", org, "--consortium", self.consortium]  # fmt: skip
        if role is Role.CLIENT:
            # Where the servers are is known once they listen: write_client_configs.
            args += ["--home-silo-name", self.silos[0].name]
        else:
            # Servers also name loopback, where the demo tools dial them directly; peers
            # that expect an identity check the CA-assigned name instead.
            args += ["--listen", "127.0.0.1:0", "--metrics", self.metrics,
                     "--dns", "localhost", "--ip", "127.0.0.1"]  # fmt: skip
        self.run(*args, capture=True)

    def _configure(
        self, name: str, links: Mapping[str, str], overrides: Mapping[str, Mapping[str, Any]]
    ) -> Path:
        """Re-render the kit's config with where its peers are now and the demo's settings."""
        kit = self.kit(name)
        manifest = KitManifest.read(kit)
        updated = dataclasses.replace(
            manifest,
            links=dataclasses.replace(manifest.links, **links),
            overrides={table: dict(keys) for table, keys in overrides.items()},
        )
        return write_config(kit, updated)

    # --- the demo's settings beyond a kit's defaults ----------------------------------------

    def coordinator_overrides(self) -> dict[str, dict[str, Any]]:
        query = {silo: list(rules) for silo, rules in self.query_policy.items()}
        return {
            # Per caller; the demo's retention table is a burst.
            "policy": {"rate_per_second": 1000.0, "burst": 1000},
            **({"policy.query": query} if query else {}),
        }

    def silo_overrides(self, spec: SiloSpec) -> dict[str, dict[str, Any]]:
        settings: dict[str, dict[str, Any]] = {
            # The demo's retention table sends 2,500 queries in seconds.
            "limits": {"rate_per_second": 1000.0, "burst": 1000},
            "access": {
                "disclose_fields": list(spec.disclose),
                "accept_query_text": spec.accept_query_text,
                "admin": list(spec.admins),
            },
        }
        if spec.local_models or spec.traffic_pool or spec.anchor_preferences:
            settings["receiving"] = {
                "local_models": list(spec.local_models),
                "traffic_pool": spec.traffic_pool,
                "traffic_max_share": spec.traffic_max_share,
                "refine": spec.refine,
                "anchor_preferences": spec.anchor_preferences,
            }
        return settings

    def write_coordinator_config(self) -> Path:
        return self._configure("hub", {}, self.coordinator_overrides())

    def write_silo_config(self, spec: SiloSpec, coordinator: str) -> Path:
        links = {"coordinator": coordinator, "model": spec.model}
        return self._configure(spec.name, links, self.silo_overrides(spec))

    def write_client_config(
        self, name: str, home_silo: str, coordinator: str, home_silo_name: str
    ) -> Path:
        links = {
            "coordinator": coordinator,
            "home_silo": home_silo,
            "home_silo_name": home_silo_name,
        }
        return self._configure(name, links, {})

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

    def doctor(self) -> dict[str, bool]:
        """``silobridge doctor`` on every party's config, online: name -> passed."""
        passed = {}
        for _role, name, _org in self._parties():
            done = subprocess.run(
                [*SILOBRIDGE, "doctor", "--config", str(self._config_of(name)), "--json"],
                env=self.env,
                capture_output=True,
                text=True,
                check=False,
            )
            passed[name] = done.returncode == 0
        return passed
