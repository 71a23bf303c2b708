"""``silobridge doctor`` (preflight of any party's config) and ``silobridge health``."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from silobridge.core.cli_support import fail, stdout_console
from silobridge.core.errors import SiloBridgeError
from silobridge.doctor.run import diagnose
from silobridge.doctor.serving import own_health

ConfigOption = Annotated[
    Path, typer.Option("--config", help="A silo.toml, coordinator.toml or client.toml.")
]


def doctor_command(
    config: ConfigOption,
    *,
    offline: Annotated[
        bool, typer.Option("--offline", help="Do not dial peers (before they are up).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Check a party's config before it starts: files, key modes, certificate, CA chain,
    ports, peers over mTLS, adapter key, and a silo's data or a coordinator's state.

    Prints one row per check (ok, warn, fail, skip) with a fix for each problem; exits 1 if any
    check failed (docs/OPERATIONS.md).
    """
    result = diagnose(config, online=not offline)
    if as_json:
        typer.echo(result.to_json())
    else:
        result.print(stdout_console())
    if result.failed:
        raise typer.Exit(code=1)


def health_command(
    config: ConfigOption,
    *,
    timeout: Annotated[float, typer.Option(help="Seconds to wait for the answer.")] = 5.0,
) -> None:
    """Ask this party's own server (silo or coordinator) for its gRPC health over mTLS.

    Exits 0 when it is SERVING, 1 otherwise: a container HEALTHCHECK or a Kubernetes exec
    probe.
    """
    try:
        target, status = asyncio.run(own_health(config, timeout=timeout))
    except SiloBridgeError as err:
        fail(err.message)
    stdout_console().print(f"{escape(target)}: {status}")
    if status != "SERVING":
        raise typer.Exit(code=1)
