"""The ``silobridge audit`` commands: verify an audit log's chain and signed checkpoints.

``verify`` exits 0 when the log is intact and 1 when it is tampered with or cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from silobridge.shared import audit
from silobridge.shared.adapters import signing
from silobridge.shared.cli_support import fail, run_or_exit, stdout_console

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
    report = run_or_exit(lambda: audit.verify_log(log, public_key))
    out = stdout_console()
    if not report.ok:
        where = f" at line {report.first_bad_line}" if report.first_bad_line is not None else ""
        out.print(f"TAMPERED{where}: {escape(report.reason)}")
        raise typer.Exit(code=1)
    out.print(f"ok: {report.lines} lines, {report.checkpoints} signed checkpoints")
    if report.reason:
        out.print(f"note: {escape(report.reason)}")
