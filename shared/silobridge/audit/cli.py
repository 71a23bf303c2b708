"""The ``silobridge audit`` commands: verify an audit log, and report a live data boundary.

``verify`` exits 0 when the log is intact and 1 when it is tampered with or cannot be read.
``boundary`` asks a running coordinator for the silos' live policies and prints the "What crosses
each boundary" table (docs/ARCHITECTURE.md) filled with them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape

from silobridge.adapters import signing
from silobridge.audit.boundary_report import (
    Row,
    boundary_report,
    disclosed_fields,
    report_to_dict,
    silo_is_surprising,
)
from silobridge.audit.heads import AuditHead, heads_to_rows, read_heads_file
from silobridge.audit.verify import MAX_TAIL, verify_log
from silobridge.core.cli_support import (
    BYTES,
    fail,
    print_json,
    progress_bar,
    run_async_or_exit,
    run_or_exit,
    stdout_console,
)
from silobridge.core.listings import SiloListing

if TYPE_CHECKING:
    from rich.table import Table

    from silobridge.client.config import ClientConfig
    from silobridge.rpc.coordinator_client import CoordinatorClient

audit_app = typer.Typer(
    no_args_is_help=True, help="Verify audit logs and report the data boundary."
)


@audit_app.command("verify")
def verify_command(
    log: Annotated[Path, typer.Argument(help="The audit log (JSON lines) to check.")],
    key: Annotated[
        Path | None,
        typer.Option(
            "--key", help="The log writer's Ed25519 public key (.pub): check the signatures."
        ),
    ] = None,
    allow_tail: Annotated[
        bool,
        typer.Option(
            "--allow-tail",
            help="Accept any number of lines after the last signed checkpoint (say how many).",
        ),
    ] = False,
    max_tail: Annotated[
        int,
        typer.Option(
            "--max-tail",
            min=1,
            help="Most lines after the last checkpoint to accept: the writer's checkpoint_every.",
        ),
    ] = MAX_TAIL,
    heads: Annotated[
        Path | None,
        typer.Option(
            "--heads",
            help="Checkpoint heads recorded at the coordinator (`silobridge audit heads SILO "
            "--json > FILE`): each must be in the log, which catches a log cut back to an older "
            "checkpoint.",
        ),
    ] = None,
) -> None:
    """Check every line's hash and link, and the signed checkpoints; name the first bad line.

    Exit 1 on tampering, and on lines no signature vouches for: a log with no checkpoint, or
    more lines after its last one than --max-tail (unless --allow-tail). With --heads, also
    when a checkpoint the coordinator recorded is missing from the log.
    """
    public_key = None
    if key is not None:
        if not key.is_file():
            fail(f"no public key at {key}: pass the .pub file beside the log's signing key")
        public_key = run_or_exit(lambda: signing.load_verify_key(key))
    limit = None if allow_tail else max_tail
    recorded = run_or_exit(lambda: read_heads_file(heads)) if heads is not None else []
    size = log.stat().st_size if log.is_file() else None
    with progress_bar(f"verifying {log.name}", total=size, unit=BYTES) as bar:
        report = run_or_exit(
            lambda: verify_log(log, public_key, max_tail=limit, heads=recorded, progress=bar.update)
        )
    out = stdout_console()
    if not report.ok:
        where = f" at line {report.first_bad_line}" if report.first_bad_line is not None else ""
        label = "UNVERIFIED" if report.reason.startswith("unverified tail") else "TAMPERED"
        out.print(f"{label}{where}: {escape(report.reason)}")
        raise typer.Exit(code=1)
    out.print(f"ok: {report.lines} lines, {report.checkpoints} signed checkpoints")
    if report.reason:
        out.print(f"note: {escape(report.reason)}")


def _coordinator(cfg: ClientConfig) -> CoordinatorClient:
    # Imported here: gRPC and the generated stubs are only needed when the command runs.
    from silobridge.rpc.coordinator_client import CoordinatorClient

    return CoordinatorClient(
        cfg.coordinator,
        cfg.tls,
        insecure=cfg.insecure,
        timeout=cfg.timeout_seconds,
        expect=cfg.expected_coordinator(),
    )


def _live_silos(cfg: ClientConfig) -> list[SiloListing]:
    """The coordinator's registered silos with the policies they report."""

    async def list_silos() -> list[SiloListing]:
        async with _coordinator(cfg) as coordinator:
            return await coordinator.list_silos()

    return run_async_or_exit(list_silos)


@audit_app.command("heads")
def heads_command(
    silo: Annotated[str, typer.Argument(help="The silo whose recorded heads to print.")],
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to client.toml.")],
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the heads file as JSON (also whenever stdout is no terminal)."
        ),
    ] = False,
) -> None:
    """List the audit checkpoint heads the coordinator recorded for SILO.

    A table at a terminal; with --json, or into a file or pipe, the JSON heads file: keep it as
    evidence, and check the silo's log against it with
    `silobridge audit verify LOG --key KEY.pub --heads FILE`.
    """
    from silobridge.client.config import load_client_config

    cfg = run_or_exit(lambda: load_client_config(config))

    async def list_heads() -> list[AuditHead]:
        async with _coordinator(cfg) as coordinator:
            return await coordinator.list_audit_heads(silo)

    recorded = run_async_or_exit(list_heads)
    if not recorded:
        fail(f"the coordinator holds no audit checkpoint heads for silo {silo!r}")
    out = stdout_console()
    # `audit heads SILO > FILE` has always written the heads file: a redirect still does.
    if as_json or not out.is_terminal:
        print_json(heads_to_rows(recorded))
    else:
        out.print(_heads_table(silo, recorded))


def _heads_table(silo: str, heads: list[AuditHead]) -> Table:
    from datetime import UTC, datetime

    from rich.table import Table

    shown = Table("line", "head", "log key", "recorded (UTC)", title=f"audit heads of {silo}")
    for head in heads:
        when = datetime.fromtimestamp(head.recorded_unix, UTC) if head.recorded_unix else None
        shown.add_row(
            str(head.covers),
            head.head[:16],
            head.key_id[:16],
            f"{when:%Y-%m-%d %H:%M:%S}" if when else "-",
        )
    return shown


def _table(title: str, headers: tuple[str, ...], rows: list[Row]) -> Table:
    from rich.table import Table
    from rich.text import Text

    shown = Table(*headers, title=title)
    for row in rows:
        # Text() keeps a peer's strings from being read as rich markup.
        style = "yellow" if row.surprising else ""
        shown.add_row(*(Text(value, style=style) for value in row.columns))
    return shown


def _policy_row(view: SiloListing) -> Row:
    policy = view.policy
    return Row(
        (
            view.silo,
            view.org,
            "yes" if view.healthy else "DOWN",
            disclosed_fields(policy),
            "?" if policy is None else ("YES" if policy.accept_query_text else "no"),
            "?" if policy is None else ", ".join(policy.accept_spaces) or "own only",
            "?" if policy is None else str(policy.max_k),
        ),
        silo_is_surprising(view),
    )


def _who_asks(cfg: ClientConfig) -> str:
    from silobridge.security.identity import identity_from_certificate_pem

    if cfg.tls is None:
        return "(insecure, anonymous)"
    me = identity_from_certificate_pem(cfg.tls.read()[0])
    return f"{me.spiffe_id} (org {me.org})"


def boundary_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to client.toml.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show what each party of a running consortium can see, from the silos' live policies."""
    from silobridge.client.config import load_client_config

    cfg = run_or_exit(lambda: load_client_config(config))
    client = run_or_exit(lambda: _who_asks(cfg))
    report = boundary_report(
        _live_silos(cfg),
        client=client,
        home_endpoint=cfg.home_silo,
        coordinator=cfg.coordinator,
    )
    out = stdout_console()
    if as_json:
        out.print_json(json.dumps(report_to_dict(report)))
        return
    out.print(_table("What crosses a boundary (live)",
                     ("flow", "from -> to", "content", "never"), report.flows))  # fmt: skip
    out.print(_table("Who sees what", ("party", "sees"), report.parties))
    out.print(_table("Silo policies", ("silo", "org", "healthy", "discloses", "query text",
                                       "accepts spaces", "max k"),
                     [_policy_row(view) for view in report.silos]))  # fmt: skip
