"""The ``silobridge adapter`` commands: make an artifact signing key, inspect and verify artifacts.

Errors print ``error: <message>`` to stderr and exit with status 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from silobridge.adapters import artifact, signing
from silobridge.core.cli_support import run_or_exit, stdout_console
from silobridge.core.spaces import SpaceDescriptor

adapter_app = typer.Typer(
    no_args_is_help=True, help="Adapter artifacts: signing keys, inspection, verification."
)


@adapter_app.command()
def keygen(
    out: Annotated[
        Path, typer.Option("--out", help="Private key file to create (0600); PATH.pub beside it.")
    ],
) -> None:
    """Create the Ed25519 key that signs adapter artifacts (the coordinator keeps it)."""
    public_path = run_or_exit(lambda: signing.generate_signing_key(out))
    console = stdout_console()
    console.print(f"private key: {escape(str(out))} (mode 0600, keep it on the coordinator)")
    console.print(f"public key:  {escape(str(public_path))} (give it to every silo)")


def _space_line(space: SpaceDescriptor) -> str:
    return (
        f"{space.space_id}  model {space.model_id}  dim {space.dimension}  "
        f"fingerprint {space.fingerprint}"
    )


@adapter_app.command()
def inspect(
    directory: Annotated[Path, typer.Argument(help="Adapter artifact directory.")],
    key: Annotated[
        Path | None,
        typer.Option("--key", help="Coordinator's public key (.pub): require a valid signature."),
    ] = None,
) -> None:
    """Print an artifact's manifest; with --key, refuse it unless its signature verifies."""
    verify_key = run_or_exit(lambda: signing.load_verify_key(key)) if key is not None else None
    loaded = run_or_exit(lambda: artifact.load_adapter(directory, verify_key=verify_key))
    manifest = loaded.manifest
    if loaded.verified:
        signature = f"verified with {key}"
    elif (directory / artifact.SIGNATURE_FILE).exists():
        signature = "present, NOT verified (pass --key to verify)"
    else:
        signature = "absent (unsigned artifact)"
    metrics = ", ".join(f"{name}={value:.4g}" for name, value in sorted(manifest.metrics.items()))
    params = ", ".join(f"{name}={value}" for name, value in sorted(manifest.params.items()))
    rows = (
        ("artifact", str(directory)),
        ("kind", f"{manifest.kind} ({manifest.source_dim} -> {manifest.target_dim})"),
        ("params", params or "-"),
        ("source", _space_line(manifest.source)),
        ("target", _space_line(manifest.target)),
        ("anchor set", manifest.anchor_set_sha256),
        ("metrics", metrics or "-"),
        ("weights", f"sha256 {manifest.weights_sha256}"),
        ("created", manifest.created_at),
        ("format", str(manifest.format_version)),
        ("signature", signature),
    )
    console = stdout_console()
    for label, value in rows:
        console.print(f"{label:<11}{escape(value)}")
