"""The ``silobridge pki`` commands: create the consortium CA, request, approve, issue certificates.

The CA passphrase comes from ``SILOBRIDGE_CA_PASSPHRASE`` when set (automation), else from a
hidden prompt. Errors print ``error: <message>`` to stderr and exit with status 1.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from silobridge.core.cli_support import run_or_exit, stdout_console
from silobridge.core.errors import ConfigError
from silobridge.security.identity import Role
from silobridge.security.pki import ca as pki

# The name of an environment variable, not a secret.
PASSPHRASE_ENV = "SILOBRIDGE_CA_PASSPHRASE"  # noqa: S105

pki_app = typer.Typer(no_args_is_help=True, help="Consortium PKI: CA, requests, approvals.")


CaDirOption = Annotated[Path, typer.Option("--ca-dir", help="Directory of the consortium CA.")]
RoleOption = Annotated[Role, typer.Option("--role", help="What the participant is.")]
NameOption = Annotated[
    str, typer.Option("--name", help="Participant name, e.g. silo-a (lower case).")
]
OrgOption = Annotated[str, typer.Option("--org", help="Organization (certificate subject O).")]
DnsOption = Annotated[
    list[str] | None,
    typer.Option("--dns", help="DNS name the server is reached at (repeatable)."),
]
IpOption = Annotated[
    list[str] | None,
    typer.Option("--ip", help="IP address the server is reached at (repeatable)."),
]
ValidDaysOption = Annotated[
    int, typer.Option("--valid-days", help="Days the certificate is valid.")
]


def _passphrase(*, confirm: bool) -> bytes:
    from_env = os.environ.get(PASSPHRASE_ENV)
    if from_env is not None:
        return from_env.encode()
    typed: str = typer.prompt("CA passphrase", hide_input=True, confirmation_prompt=confirm)
    return typed.encode()


def _read_request(csr: Path) -> bytes:
    try:
        return csr.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read {csr}: {err.strerror}") from None


def _load_ca(ca_dir: Path) -> pki.CertificateAuthority:
    passphrase = _passphrase(confirm=False)
    return run_or_exit(lambda: pki.load_ca(ca_dir, passphrase))


def _print_summary(cert_pem: bytes) -> None:
    summary = run_or_exit(lambda: pki.describe_certificate(cert_pem))
    usages = [
        usage
        for usage, present in (
            ("serverAuth", summary.server_auth),
            ("clientAuth", summary.client_auth),
        )
        if present
    ]
    out = stdout_console()
    out.print(f"  identity:  {escape(summary.spiffe_id)} (O={escape(summary.org)})")
    out.print(f"  DNS names: {escape(', '.join(summary.dns_names)) or '-'}")
    out.print(f"  IPs:       {', '.join(summary.ip_addresses) or '-'}")
    out.print(f"  usage:     {', '.join(usages)}")
    out.print(
        f"  valid:     {summary.not_before:%Y-%m-%d %H:%M} UTC to "
        f"{summary.not_after:%Y-%m-%d %H:%M} UTC"
    )


@pki_app.command("init")
def init_command(
    *,
    directory: Annotated[Path, typer.Option("--dir", help="Directory to create the CA in.")],
    consortium: Annotated[str, typer.Option("--consortium", help="Consortium name.")],
    valid_days: Annotated[int, typer.Option("--valid-days", help="Days the CA is valid.")] = 3650,
) -> None:
    """Create the consortium CA; its key is encrypted with a passphrase."""
    passphrase = _passphrase(confirm=True)
    files = run_or_exit(
        lambda: pki.init_ca(directory, consortium, passphrase, valid_days=valid_days)
    )
    out = stdout_console()
    out.print(f"CA for consortium {escape(consortium)} created:")
    out.print(f"  certificate: {escape(str(files.cert))} (give this to every participant)")
    out.print(f"  key:         {escape(str(files.key))} (encrypted; keep it offline)")
    out.print(f"  consortium:  {escape(str(files.consortium_file))}")


@pki_app.command("request")
def request_command(
    *,
    out: Annotated[Path, typer.Option("--out", help="Directory for the key and request.")],
    consortium: Annotated[str, typer.Option("--consortium", help="Consortium name.")],
    role: RoleOption,
    name: NameOption,
    org: OrgOption,
    dns: DnsOption = None,
    ip: IpOption = None,
) -> None:
    """Make this participant's own key and a certificate signing request (CSR) for the CA."""
    files = run_or_exit(
        lambda: pki.request_certificate(
            out,
            consortium=consortium,
            role=role.value,
            name=name,
            org=org,
            dns_names=dns or (),
            ip_addresses=ip or (),
        )
    )
    console = stdout_console()
    console.print(f"  private key: {escape(str(files.key))} (stays here, never send it)")
    console.print(f"  request:     {escape(str(files.csr))} (send this to the CA operator)")


@pki_app.command("approve")
def approve_command(
    *,
    csr: Annotated[Path, typer.Argument(help="The certificate signing request (.csr) to sign.")],
    ca_dir: CaDirOption,
    out: Annotated[
        Path | None, typer.Option("--out", help="Certificate file (default: CSR with .crt).")
    ] = None,
    valid_days: ValidDaysOption = 365,
) -> None:
    """Sign a participant's request with the consortium CA."""
    target = out if out is not None else csr.with_suffix(".crt")
    csr_pem = run_or_exit(lambda: _read_request(csr))
    ca = _load_ca(ca_dir)
    cert_pem = run_or_exit(lambda: pki.approve_request(ca, csr_pem, valid_days=valid_days))
    run_or_exit(lambda: pki.write_certificate(target, cert_pem))
    console = stdout_console()
    console.print(f"Signed {escape(str(csr))}:")
    _print_summary(cert_pem)
    console.print(f"  certificate: {escape(str(target))} (send it back with ca.crt)")


@pki_app.command("issue")
def issue_command(
    *,
    ca_dir: CaDirOption,
    out: Annotated[Path, typer.Option("--out", help="Directory for key, certificate and CA.")],
    role: RoleOption,
    name: NameOption,
    org: OrgOption,
    dns: DnsOption = None,
    ip: IpOption = None,
    valid_days: ValidDaysOption = 365,
) -> None:
    """Request and approve in one step (for participants the CA operator provisions itself)."""
    ca = _load_ca(ca_dir)
    files = run_or_exit(
        lambda: pki.issue_certificate(
            ca,
            out,
            role=role.value,
            name=name,
            org=org,
            dns_names=dns or (),
            ip_addresses=ip or (),
            valid_days=valid_days,
        )
    )
    console = stdout_console()
    console.print(f"Issued {escape(name)}:")
    _print_summary(files.cert.read_bytes())
    console.print(f"  private key:    {escape(str(files.key))}")
    console.print(f"  certificate:    {escape(str(files.cert))}")
    console.print(f"  CA certificate: {escape(str(files.ca_cert))}")
