"""``silobridge coordinator silo disable|enable|remove NAME``: a consortium admin's hold on silos.

Run with an admin's ``client.toml`` (a certificate the coordinator's ``[policy] manage`` rules
allow). A disabled silo stays registered but receives no query (status ``denied``, with the
reason) until enabled; a removed one is forgotten, with its anchor vectors, and must register
again. To keep a compromised silo out for good, also put its certificate on the denylist.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from silobridge.core.cli_support import run_async_or_exit, run_or_exit, stdout_console
from silobridge.core.listings import SiloAction, SiloState

silo_admin_app = typer.Typer(
    no_args_is_help=True, help="Disable, enable or remove a registered silo (consortium admins)."
)
out = stdout_console()

ConfigOption = Annotated[
    Path, typer.Option("--config", "-c", help="Path to a consortium admin's client.toml.")
]
NameArgument = Annotated[str, typer.Argument(help="The silo's name, as `silobridge silos` shows.")]
ReasonOption = Annotated[
    str, typer.Option(help="Why; shown in `silobridge silos` and in every query's status.")
]


def _manage(config: Path, silo: str, action: SiloAction, reason: str) -> None:
    from silobridge.client.api import FederatedClient
    from silobridge.client.config import load_client_config

    cfg = run_or_exit(lambda: load_client_config(config))

    async def run() -> SiloState:
        async with FederatedClient(cfg) as client:
            return await client.manage_silo(silo, action, reason)

    state = run_async_or_exit(run)
    suffix = f": {escape(state.reason)}" if state.reason else ""
    out.print(f"silo {escape(state.silo)} is {state.state}{suffix}")


@silo_admin_app.command()
def disable(config: ConfigOption, silo: NameArgument, reason: ReasonOption = "") -> None:
    """Route no query to SILO until it is enabled again (it stays registered)."""
    _manage(config, silo, SiloAction.DISABLE, reason)


@silo_admin_app.command()
def enable(config: ConfigOption, silo: NameArgument) -> None:
    """Route queries to SILO again (its certificate must still not be on the denylist)."""
    _manage(config, silo, SiloAction.ENABLE, "")


@silo_admin_app.command()
def remove(config: ConfigOption, silo: NameArgument, reason: ReasonOption = "") -> None:
    """Forget SILO and the anchor vectors it sent; it must register again to be queried."""
    _manage(config, silo, SiloAction.REMOVE, reason)
