"""``silobridge coordinator …``: run the consortium's coordinator."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from silobridge.coordinator.silo_admin_cli import silo_admin_app
from silobridge.core.cli_support import serve_or_exit

coordinator_app = typer.Typer(no_args_is_help=True, help="Run the consortium's coordinator.")
coordinator_app.add_typer(silo_admin_app, name="silo")


@coordinator_app.command()
def serve(
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to coordinator.toml.")],
    log_level: Annotated[str, typer.Option(help="Python logging level.")] = "INFO",
) -> None:
    """Serve CoordinatorService over mutual TLS until SIGTERM/SIGINT."""
    from silobridge.coordinator.config import load_coordinator_config
    from silobridge.coordinator.server import serve as run_server

    async def main() -> None:
        await run_server(load_coordinator_config(config))

    serve_or_exit(main, log_level)
