"""The ``silobridge`` command: one entry point composing each component's sub-commands."""

from __future__ import annotations

import typer

from silobridge.evaluation.cli import eval_command
from silobridge.shared.adapters.cli import adapter_app
from silobridge.shared.pki_cli import pki_app
from silobridge.silo_agent.cli import silo_app

app = typer.Typer(no_args_is_help=True, help="SiloBridge: federated cross-silo retrieval.")
app.add_typer(pki_app, name="pki")
app.add_typer(silo_app, name="silo")
app.add_typer(adapter_app, name="adapter")
app.command("eval")(eval_command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
