"""The ``silobridge audit`` commands: verify an audit log, and report a live data boundary.

``verify`` exits 0 when the log is intact and 1 when it is tampered with or cannot be read.
``boundary`` asks a running coordinator for the silos' live policies and prints DESIGN.md's
"What crosses a boundary" table filled with them.
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
    SiloPolicyView,
    boundary_report,
    disclosed_fields,
    report_to_dict,
    silo_is_surprising,
)
from silobridge.audit.verify import verify_log
from silobridge.core.cli_support import fail, run_or_exit, stdout_console
from silobridge.core.disclosure import DisclosurePolicy

if TYPE_CHECKING:
    from rich.table import Table

    from silobridge.client.config import ClientConfig
    from silobridge.v1 import coordinator_pb2

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
) -> None:
    """Check every line's hash and link, and the signed checkpoints; name the first bad line."""
    public_key = None
    if key is not None:
        if not key.is_file():
            fail(f"no public key at {key}: pass the .pub file beside the log's signing key")
        public_key = run_or_exit(lambda: signing.load_verify_key(key))
    report = run_or_exit(lambda: verify_log(log, public_key))
    out = stdout_console()
    if not report.ok:
        where = f" at line {report.first_bad_line}" if report.first_bad_line is not None else ""
        out.print(f"TAMPERED{where}: {escape(report.reason)}")
        raise typer.Exit(code=1)
    out.print(f"ok: {report.lines} lines, {report.checkpoints} signed checkpoints")
    if report.reason:
        out.print(f"note: {escape(report.reason)}")


def _silo_view_from_proto(info: coordinator_pb2.SiloInfo) -> SiloPolicyView:
    policy = None
    if info.HasField("policy"):
        policy = DisclosurePolicy(
            disclose_fields=tuple(info.policy.disclose_fields),
            accept_query_text=info.policy.accept_query_text,
            accept_spaces=tuple(info.policy.accept_spaces),
            max_k=info.policy.max_k,
        )
    return SiloPolicyView(
        silo=info.silo,
        org=info.org,
        endpoint=info.endpoint,
        healthy=info.healthy,
        space_id=info.space.space_id,
        policy=policy,
    )


def _live_silos(cfg: ClientConfig) -> list[SiloPolicyView]:
    """The coordinator's registered silos with their reported policies; exits on an RPC error."""
    # Imported here: gRPC and the generated stubs are only needed when the command runs.
    import asyncio

    import grpc

    from silobridge.rpc.transport import open_channel
    from silobridge.v1 import coordinator_pb2, coordinator_pb2_grpc

    async def list_silos() -> list[coordinator_pb2.SiloInfo]:
        channel = open_channel(cfg.coordinator, cfg.tls, insecure=cfg.insecure)
        try:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            request = coordinator_pb2.ListSilosRequest()
            return list((await stub.ListSilos(request, timeout=cfg.timeout_seconds)).silos)
        finally:
            await channel.close()

    try:
        infos = asyncio.run(list_silos())
    except grpc.aio.AioRpcError as error:
        fail(f"{error.code().name}: {error.details()} (coordinator at {cfg.coordinator})")
    return [_silo_view_from_proto(info) for info in infos]


def _table(title: str, headers: tuple[str, ...], rows: list[Row]) -> Table:
    from rich.table import Table
    from rich.text import Text

    shown = Table(*headers, title=title)
    for row in rows:
        # Text() keeps a peer's strings from being read as rich markup.
        style = "yellow" if row.surprising else ""
        shown.add_row(*(Text(value, style=style) for value in row.columns))
    return shown


def _policy_row(view: SiloPolicyView) -> Row:
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


def boundary_command(
    config: Annotated[Path, typer.Option("--config", "-c", help="Path to client.toml.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
) -> None:
    """Show what each party of a running consortium can see, from the silos' live policies."""
    from silobridge.client.config import load_client_config
    from silobridge.core.errors import SiloBridgeError
    from silobridge.security.identity import identity_from_certificate_pem

    try:
        cfg = load_client_config(config)
        client = "(insecure, anonymous)"
        if cfg.tls is not None:
            me = identity_from_certificate_pem(cfg.tls.read()[0])
            client = f"{me.spiffe_id} (org {me.org})"
    except SiloBridgeError as error:
        fail(error.message)
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
