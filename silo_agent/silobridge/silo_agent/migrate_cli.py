"""``silobridge silo migrate …``: move a running silo to another embedding model (its admins).

``plan`` changes nothing; ``start``, ``pause``, ``resume``, ``cutover``, ``rollback`` and
``finish`` move the migration through its states (docs/MIGRATION.md); ``status`` reports it,
``--watch`` with a progress bar until the re-encode is done. Every command takes ``--json``.

Exit codes: 0 done, 1 refused or failed (the message says why and what to do).
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from silobridge.core.cli_support import (
    fail,
    print_json,
    progress_bar,
    run_async_or_exit,
    run_or_exit,
    stdout_console,
)
from silobridge.core.migration import MigrationCommand, MigrationState

if TYPE_CHECKING:
    from silobridge.client.config import ClientConfig
    from silobridge.core.migration import MigrationPlan, MigrationStatus

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


def expected_home(cfg: ClientConfig, silo: str | None) -> str | None:
    """The identity the admin's home silo must hold; None with ``--silo`` (any silo there)."""
    return cfg.expected_home_silo() if silo is None else None


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
        async with SiloClient(
            target, cfg.tls, insecure=cfg.insecure, expect=expected_home(cfg, silo)
        ) as peer:
            # One call, no progress to report: the bar shows the time it has taken so far.
            with progress_bar(f"timing {to} on the silo", eta=False, enabled=not as_json):
                return await peer.plan_migration(to, sample_size=sample, timeout=600)

    result = run_async_or_exit(run)
    if as_json:
        print_json(asdict(result))
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


# Fitting the adapters embeds thousands of documents: a start may take minutes.
COMMAND_TIMEOUT_S = 3_600.0
WATCH_EVERY_S = 2.0


def _control(
    command: MigrationCommand,
    client: Path,
    silo: str | None,
    as_json: bool,
    *,
    waiting: str = "",
    **options: str | int | float,
) -> MigrationStatus:
    from silobridge.rpc.silo_client import SiloClient

    cfg, target = admin_target(client, silo)

    async def run() -> MigrationStatus:
        async with SiloClient(
            target, cfg.tls, insecure=cfg.insecure, expect=expected_home(cfg, silo)
        ) as peer:
            # ``waiting``: a call that takes minutes; the bar shows the time taken so far.
            with progress_bar(waiting, eta=False, enabled=bool(waiting) and not as_json):
                return await peer.control_migration(
                    command,
                    timeout=COMMAND_TIMEOUT_S,
                    **options,  # type: ignore[arg-type]
                )

    status = run_async_or_exit(run)
    _print_status(status, as_json)
    return status


def _print_status(status: MigrationStatus, as_json: bool) -> None:
    if as_json:
        body = asdict(status)
        body["fraction"] = status.fraction
        print_json(body)
        return
    if status.message:
        out.print(status.message)
    if status.target is None:
        out.print(f"no migration: the silo serves {status.primary.space_id}")
        return
    rate = f"{status.documents_per_second:.0f} documents/s" if status.documents_per_second else "-"
    eta = _duration(status.eta_seconds) if status.eta_seconds else "-"
    out.print(
        f"state: {status.state.value}   {status.source.space_id} -> {status.target.space_id} "
        f"(primary: {status.primary.space_id})\n"
        f"re-encoded: {status.reencoded} / {status.documents} ({status.fraction:.1%}), "
        f"{rate}, ETA {eta}, CPU share {status.cpu_share:g}\n"
        f"adapters on {status.anchors} in-domain anchors: new->old held-out nDCG@10 "
        f"{status.forward_ndcg:.3f}, old->new {status.backward_ndcg:.3f}; provisional vectors "
        f"find {status.adapter_agreement:.1%} of the native top 10\n"
        f"mixed-search retention estimate: {status.retention_estimate:.3f}"
    )


@migrate_app.command()
def start(
    to: Annotated[str, typer.Option("--to", help="The new model's spec, e.g. minilm-l6.")],
    client: ClientOption,
    silo: SiloOption = None,
    sample: Annotated[
        int, typer.Option(help="Documents embedded to fit the in-domain adapters (0: 8192).")
    ] = 0,
    cpu_share: Annotated[
        float, typer.Option(help="Share of CPU the background re-encode may use (0: 0.5).")
    ] = 0.0,
    as_json: JsonOption = False,
) -> None:
    """Fit in-domain adapters, answer in the new space at once, re-encode in the background."""
    if sample < 0 or cpu_share < 0:
        fail("--sample and --cpu-share must not be negative")
    _control(
        MigrationCommand.START,
        client,
        silo,
        as_json,
        waiting=f"embedding a sample with {to}, fitting in-domain adapters",
        to_model=to,
        sample_size=sample,
        cpu_share=cpu_share,
    )


@migrate_app.command()
def status(
    client: ClientOption,
    silo: SiloOption = None,
    watch: Annotated[
        bool, typer.Option("--watch", help="Show a progress bar until the re-encode is done.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Where the migration stands: state, documents re-encoded, rate, ETA, adapter quality."""
    if not watch:
        _control(MigrationCommand.STATUS, client, silo, as_json)
        return
    _watch(client, silo, as_json)


def _watch(client: Path, silo: str | None, as_json: bool) -> None:
    from silobridge.rpc.silo_client import SiloClient

    cfg, target = admin_target(client, silo)

    async def run() -> MigrationStatus:
        async with SiloClient(
            target, cfg.tls, insecure=cfg.insecure, expect=expected_home(cfg, silo)
        ) as peer:
            with progress_bar("re-encoding", unit="documents", enabled=not as_json) as bar:
                while True:
                    now = await peer.control_migration(MigrationCommand.STATUS, timeout=60)
                    rate = f" {now.documents_per_second:.0f}/s" if now.documents_per_second else ""
                    bar.update(now.reencoded, total=now.documents, description=f"re-encoding{rate}")
                    if now.state is not MigrationState.REENCODING:
                        return now
                    await asyncio.sleep(WATCH_EVERY_S)

    _print_status(run_async_or_exit(run), as_json)


@migrate_app.command()
def pause(client: ClientOption, silo: SiloOption = None, as_json: JsonOption = False) -> None:
    """Stop the background re-encode (both spaces are still answered)."""
    _control(MigrationCommand.PAUSE, client, silo, as_json)


@migrate_app.command()
def resume(
    client: ClientOption,
    silo: SiloOption = None,
    cpu_share: Annotated[
        float, typer.Option(help="A new CPU share for the re-encode (0: unchanged).")
    ] = 0.0,
    as_json: JsonOption = False,
) -> None:
    """Restart a paused re-encode, or change its CPU share."""
    if cpu_share < 0:
        fail("--cpu-share must not be negative")
    _control(MigrationCommand.RESUME, client, silo, as_json, cpu_share=cpu_share)


@migrate_app.command()
def cutover(client: ClientOption, silo: SiloOption = None, as_json: JsonOption = False) -> None:
    """Make the new space primary (every document must be re-encoded); re-register."""
    _control(MigrationCommand.CUTOVER, client, silo, as_json)


@migrate_app.command()
def rollback(client: ClientOption, silo: SiloOption = None, as_json: JsonOption = False) -> None:
    """Back to the old space, before or after cut-over; the new generation is dropped."""
    _control(MigrationCommand.ROLLBACK, client, silo, as_json)


@migrate_app.command()
def finish(client: ClientOption, silo: SiloOption = None, as_json: JsonOption = False) -> None:
    """After cut-over: drop the old generation (no rollback after this)."""
    _control(MigrationCommand.FINISH, client, silo, as_json)
