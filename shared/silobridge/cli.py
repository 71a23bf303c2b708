"""The ``silobridge`` command: one entry point composing each component's sub-commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, help="SiloBridge: federated cross-silo retrieval.")


def main() -> None:
    app()
