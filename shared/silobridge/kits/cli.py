"""``silobridge kit new|install``: startup kits, one directory per participant."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from silobridge.core.cli_support import fail, run_or_exit, stdout_console
from silobridge.kits.build import new_kit
from silobridge.kits.install import install_kit
from silobridge.kits.party import Links, Party
from silobridge.security.identity import Role

kit_app = typer.Typer(
    no_args_is_help=True,
    help="Startup kits: a directory per participant with its key, certificate, config, start "
    "script and README (docs/OPERATIONS.md).",
)


def parse_setting(text: str) -> tuple[str, str, Any]:
    """``TABLE.KEY=VALUE`` (VALUE a TOML value: ``1000``, ``true``, ``"x"``, ``["a"]``)."""
    target, sep, raw = text.partition("=")
    table, dot, key = target.strip().rpartition(".")
    if not sep or not dot or not table or not key:
        raise typer.BadParameter(f"{text!r}: expected TABLE.KEY=VALUE, e.g. limits.burst=200")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        # A bare word is a string: --set silo.model=minilm-l6.
        value = raw.strip()
    return table, key.strip('"'), value


def _overrides(settings: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for text in settings:
        table, key, value = parse_setting(text)
        out.setdefault(table, {})[key] = value
    return out


@kit_app.command("new")
def new_command(
    *,
    out: Annotated[Path, typer.Option("--out", help="New directory for the kit.")],
    role: Annotated[Role, typer.Option("--role", help="What the participant is.")],
    name: Annotated[str, typer.Option("--name", help="Its name in its certificate.")],
    org: Annotated[str, typer.Option("--org", help="Its organization (certificate O).")],
    consortium: Annotated[str, typer.Option("--consortium", help="The consortium's name.")],
    listen: Annotated[str, typer.Option(help="Server: address to listen on.")] = "",
    advertise: Annotated[str, typer.Option(help="Silo: host:port the coordinator dials.")] = "",
    coordinator: Annotated[str, typer.Option(help="host:port of the coordinator.")] = "",
    coordinator_name: Annotated[str, typer.Option(help="The coordinator's name.")] = "hub",
    home_silo: Annotated[str, typer.Option(help="Client: host:port of its home silo.")] = "",
    home_silo_name: Annotated[str, typer.Option(help="Client: its home silo's name.")] = "",
    model: Annotated[str, typer.Option(help="Silo: its embedding model.")] = "",
    metrics: Annotated[
        str, typer.Option(help="Server: host:port of /metrics (default 127.0.0.1:9464; off: none).")
    ] = "",
    admin: Annotated[str, typer.Option(help="Coordinator: the admin client's name.")] = "admin",
    dns: Annotated[
        list[str] | None, typer.Option("--dns", help="Server: DNS name it is reached at.")
    ] = None,
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="Server: IP address it is reached at.")
    ] = None,
    setting: Annotated[
        list[str] | None,
        typer.Option("--set", help="Set a config key: TABLE.KEY=VALUE (repeatable)."),
    ] = None,
) -> None:
    """Make a kit here, on the participant's machine: key (0600) and request, config, README."""
    if role is Role.CLIENT and not home_silo_name:
        fail("a client kit needs --home-silo-name: the name of its organization's silo")
    party = Party(role=role, name=name, org=org, consortium=consortium)
    links = Links(
        listen=listen,
        advertise=advertise,
        coordinator=coordinator,
        coordinator_name=coordinator_name,
        home_silo=home_silo,
        home_silo_name=home_silo_name,
        model=model,
        metrics=metrics,
        admin=admin,
    )
    made = run_or_exit(
        lambda: new_kit(
            out,
            party,
            links,
            dns_names=dns or (),
            ip_addresses=ip or (),
            overrides=_overrides(setting or []),
        )
    )
    console = stdout_console()
    console.print(f"Kit for {escape(party.spiffe_id)} in {escape(str(out))}:")
    console.print(f"  config:      {escape(str(made.config))} (every key documented)")
    console.print(f"  private key: {escape(str(made.key))} (0600; stays here, never send it)")
    console.print(f"  request:     {escape(str(made.csr))} (send this to the CA operator)")
    if made.adapter_public_key is not None:
        console.print(
            f"  adapter key: {escape(str(made.adapter_public_key))} (give it to every silo)"
        )
    console.print(f"next: the CA operator runs `silobridge pki approve {escape(str(made.csr))}`")


@kit_app.command("install")
def install_command(
    kit: Annotated[Path, typer.Argument(help="The kit directory (made by `kit new`).")],
    *,
    cert: Annotated[Path, typer.Option("--cert", help="The certificate the CA signed.")],
    ca: Annotated[Path, typer.Option("--ca", help="The consortium CA certificate.")],
    adapter_key: Annotated[
        Path | None,
        typer.Option("--adapter-key", help="Silo: the coordinator's adapter signing key (.pub)."),
    ] = None,
) -> None:
    """Put the signed certificate, the CA certificate (and a silo's adapter key) into a kit."""
    done = run_or_exit(lambda: install_kit(kit, cert, ca, adapter_key_file=adapter_key))
    console = stdout_console()
    console.print(f"  certificate: {escape(str(done.cert))} (valid to {done.not_after:%Y-%m-%d})")
    console.print(f"  CA:          {escape(str(done.ca))}")
    if done.adapter_key is not None:
        console.print(f"  adapter key: {escape(str(done.adapter_key))} (pinned)")
    console.print("next: `silobridge doctor --config` the kit's config, then ./start.sh")
