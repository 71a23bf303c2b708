"""The ``silobridge`` command: one entry point composing each component's sub-commands."""

from __future__ import annotations

import typer

from silobridge.adapters.cli import adapter_app
from silobridge.audit.cli import audit_app, boundary_command
from silobridge.client.cli import adapters_command, query_command, silos_command, train_command
from silobridge.coordinator.anchors.cli import anchors_app
from silobridge.coordinator.cli import coordinator_app
from silobridge.doctor.cli import doctor_command, health_command
from silobridge.evaluation.cli import eval_command
from silobridge.kits.cli import kit_app
from silobridge.loadgen.cli import bench_app
from silobridge.security.pki.cli import pki_app
from silobridge.silo_agent.cli import silo_app

app = typer.Typer(no_args_is_help=True, help="SiloBridge: federated cross-silo retrieval.")
# Client commands (a member organization's user; --config client.toml).
app.command("query")(query_command)
app.command("silos")(silos_command)
app.command("adapters")(adapters_command)
app.command("train")(train_command)
# Running the parts of a consortium.
app.add_typer(coordinator_app, name="coordinator")
app.add_typer(silo_app, name="silo")
app.add_typer(anchors_app, name="anchors")
app.add_typer(pki_app, name="pki")
app.add_typer(kit_app, name="kit")
# Operating a party: preflight of its config, and its server's own health.
app.command("doctor")(doctor_command)
app.command("health")(health_command)
audit_app.command("boundary")(boundary_command)
app.add_typer(audit_app, name="audit")
# Adapter artifacts and offline evaluation.
app.add_typer(adapter_app, name="adapter")
app.command("eval")(eval_command)
# Load-testing a running consortium (sizing a deployment).
app.add_typer(bench_app, name="bench")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
