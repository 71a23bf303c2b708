"""``silobridge silo migrate …``: move a running silo to another embedding model (its admins).

Exit codes: 0 done, 1 refused or failed (the message says why and what to do).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from silobridge.core.cli_support import fail, run_async_or_exit, run_or_exit, stdout_console

if TYPE_CHECKING:
    from silobridge.client.config import ClientConfig
    from silobridge.core.migration import MigrationPlan

migrate_app = typer.Typer(
    no_args_is_help=True,
    help="Move a running silo to another embedding model (its admins only: access rule admin).",
)
out = stdout_console()

ClientOption = Annotated[
    Path, typer.Option("--client", help="client.toml of one of the silo's admins.")
]
SiloOption = Annotated[
    str | None,
    typer.Option("--silo", help="host:port of the running silo (default: the home silo)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def admin_target(client: Path, silo: str | None) -> tuple[ClientConfig, str]:
    """The admin's client config and the silo to talk to (``--silo`` or its home silo)."""
    from silobridge.client.config import load_client_config
    from silobridge.core.endpoints import validate_endpoint

    cfg = run_or_exit(lambda: load_client_config(client))
    target = run_or_exit(lambda: validate_endpoint(silo)) if silo else cfg.home_silo
    return cfg, target


@migrate_app.command()
def plan(
    to: Annotated[str, typer.Option("--to", help="The new model's spec, e.g. minilm-l6.")],
    client: ClientOption,
    silo: SiloOption = None,
    sample: Annotated[
        int, typer.Option(help="Documents the new model embeds to measure its speed (0: 256).")
    ] = 0,
    as_json: JsonOption = False,
) -> None:
    """Documents to re-encode, the new model's measured speed, time and disk; changes nothing."""
    from silobridge.rpc.silo_client import SiloClient

    if sample < 0:
        fail(f"--sample must not be negative, got {sample}")
    cfg, target = admin_target(client, silo)

    async def run() -> MigrationPlan:
        async with SiloClient(target, cfg.tls, insecure=cfg.insecure) as peer:
            return await peer.plan_migration(to, sample_size=sample, timeout=600)

    result = run_async_or_exit(run)
    if as_json:
        out.print_json(json.dumps(asdict(result)))
        return
    out.print(
        f"silo at {target}: {result.current.space_id} -> {result.target.space_id} "
        f"({result.target.dimension} dimensions)\n"
        f"documents to re-encode: {result.documents}\n"
        f"measured: {result.sample_documents} of its documents in {result.sample_seconds:.2f} s, "
        f"{result.documents_per_second:.0f} documents/s\n"
        f"estimated re-encode: {_duration(result.estimated_seconds)} at that speed, if the "
        f"silo had nothing else to do\n"
        f"disk beside the current space: {result.disk_bytes / 1e6:.1f} MB (vectors and index)\n"
        "nothing was changed."
    )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5_400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3_600:.1f} h"
