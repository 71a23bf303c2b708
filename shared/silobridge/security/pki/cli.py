"""The ``silobridge pki`` commands: create the consortium CA, request, approve, issue certificates.

The CA passphrase comes from ``SILOBRIDGE_CA_PASSPHRASE`` when set (automation), else from a
hidden prompt. Errors print ``error: <message>`` to stderr and exit with status 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from silobridge.core.cli_support import (
    fail,
    print_json,
    run_or_exit,
    stderr_console,
    stdout_console,
)
from silobridge.core.errors import ConfigError
from silobridge.security.identity import Role
from silobridge.security.pki import ca as pki
from silobridge.security.pki.approve import (
    ExpectedIdentity,
    RequestSummary,
    check_expected_request,
    describe_request,
)
from silobridge.security.pki.files import refuse_existing
from silobridge.security.pki.issued import sign_once

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
RotateOption = Annotated[
    bool,
    typer.Option(
        "--rotate",
        help="Renew a name this CA already issued (same role and organization); without it a "
        "name already issued is refused.",
    ),
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


def _print_request(csr: Path, request: RequestSummary) -> None:
    out = stdout_console()
    out.print(f"Request {escape(str(csr))} asks for:")
    out.print(f"  identity:  {escape(request.spiffe_id)}")
    out.print(f"  role:      {request.role.value}")
    out.print(f"  name:      {escape(request.name)}")
    out.print(f"  org:       {escape(request.org)}")
    out.print(f"  DNS names: {escape(', '.join(request.dns_names)) or '-'}")
    out.print(f"  IPs:       {', '.join(request.ip_addresses) or '-'}")
    out.print(f"  key:       {request.key_type}")


def _given_expectation(
    role: Role | None, name: str | None, org: str | None
) -> ExpectedIdentity | None:
    """The identity given with the --expect-* flags; None when none was given."""
    given = {"--expect-role": role, "--expect-name": name, "--expect-org": org}
    missing = [flag for flag, value in given.items() if value is None]
    if len(missing) == len(given):
        if not sys.stdin.isatty():
            fail(
                "no terminal to confirm the request on: pass --expect-role, --expect-name and "
                "--expect-org with the identity you agreed with the requester"
            )
        return None
    if missing or role is None or name is None or org is None:
        fail(f"give all of --expect-role, --expect-name and --expect-org (missing {missing})")
    return ExpectedIdentity(role=role.value, name=name, org=org)


def _typed_expectation() -> ExpectedIdentity:
    # Typed, not a yes/no: the approver has to know who they expect, not just glance at it.
    stdout_console().print("Type who you expect this request to be from, to approve it:")
    role: str = typer.prompt("  role (silo, coordinator, client)")
    name: str = typer.prompt("  name")
    org: str = typer.prompt("  organization")
    return ExpectedIdentity(role=role.strip(), name=name.strip(), org=org.strip())


_APPROVE_HELP = (
    "Sign a participant's request with the consortium CA, once you confirm who it is for.\n\n"
    "The request is shown first; then type the role, name and organization you agreed with "
    "the requester, or pass them with --expect-role, --expect-name and --expect-org (scripts; "
    "without a terminal they are required). A mismatch, a name this CA already issued "
    "(without --rotate) or a coordinator request (without --allow-coordinator) is refused and "
    "nothing is signed."
)


@pki_app.command("approve", help=_APPROVE_HELP)
def approve_command(
    *,
    csr: Annotated[Path, typer.Argument(help="The certificate signing request (.csr) to sign.")],
    ca_dir: CaDirOption,
    out: Annotated[
        Path | None, typer.Option("--out", help="Certificate file (default: CSR with .crt).")
    ] = None,
    valid_days: ValidDaysOption = 365,
    expect_role: Annotated[
        Role | None,
        typer.Option("--expect-role", help="Role the request must ask for (for scripts)."),
    ] = None,
    expect_name: Annotated[
        str | None,
        typer.Option("--expect-name", help="Name the request must ask for (for scripts)."),
    ] = None,
    expect_org: Annotated[
        str | None,
        typer.Option("--expect-org", help="Organization the request must name (for scripts)."),
    ] = None,
    allow_coordinator: Annotated[
        bool,
        typer.Option("--allow-coordinator", help="Allow signing a coordinator-role certificate."),
    ] = False,
    rotate: RotateOption = False,
) -> None:
    """Sign a participant's request once the approver confirmed who it is for."""
    target = out if out is not None else csr.with_suffix(".crt")
    csr_pem = run_or_exit(lambda: _read_request(csr))
    given = _given_expectation(expect_role, expect_name, expect_org)
    ca = _load_ca(ca_dir)
    request = run_or_exit(lambda: describe_request(ca, csr_pem))
    _print_request(csr, request)
    expected = given if given is not None else _typed_expectation()
    run_or_exit(
        lambda: check_expected_request(request, expected, allow_coordinator=allow_coordinator)
    )
    cert_pem = run_or_exit(
        lambda: sign_once(
            ca_dir,
            role=request.role.value,
            name=request.name,
            org=request.org,
            rotate=rotate,
            sign=lambda: pki.approve_request(ca, csr_pem, valid_days=valid_days),
            before_recording=[lambda: refuse_existing([target])],
        )
    )
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
    rotate: RotateOption = False,
) -> None:
    """Request and approve in one step (for participants the CA operator provisions itself)."""
    ca = _load_ca(ca_dir)
    issued: list[pki.IssuedFiles] = []

    def issue() -> bytes:
        files = pki.issue_certificate(
            ca,
            out,
            role=role.value,
            name=name,
            org=org,
            dns_names=dns or (),
            ip_addresses=ip or (),
            valid_days=valid_days,
        )
        issued.append(files)
        return files.cert.read_bytes()

    cert_pem = run_or_exit(
        lambda: sign_once(ca_dir, role=role.value, name=name, org=org, rotate=rotate, sign=issue)
    )
    console = stdout_console()
    console.print(f"Issued {escape(name)}:")
    _print_summary(cert_pem)
    files = issued[0]
    console.print(f"  private key:    {escape(str(files.key))}")
    console.print(f"  certificate:    {escape(str(files.cert))}")
    console.print(f"  CA certificate: {escape(str(files.ca_cert))}")


@pki_app.command("list")
def list_command(
    ca_dir: CaDirOption,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List the certificates this CA issued, oldest first (its record, issued.json).

    --json: an array of {spiffe_id, role, name, org, serial, sha256, not_after, issued_at}. No
    passphrase is needed: the record holds no secret.
    """
    from rich.table import Table
    from rich.text import Text

    from silobridge.security.pki.ca import CA_CERT_FILE
    from silobridge.security.pki.issued import IssuedIndex

    if not (ca_dir / CA_CERT_FILE).is_file():
        fail(f"no consortium CA in {ca_dir} (no {CA_CERT_FILE}); make one with `pki init`")
    records = run_or_exit(lambda: IssuedIndex.load(ca_dir)).records
    if as_json:
        print_json(list(records))
        return
    if not records:
        stderr_console().print(
            f"the record of {escape(str(ca_dir))} lists no certificate yet", highlight=False
        )
        return
    table = Table(title=f"certificates issued by the CA in {ca_dir}")
    for column in ("name", "role", "org", "serial", "valid until", "issued"):
        table.add_column(column, overflow="fold")
    for record in records:
        cells = (record.name, record.role, record.org, record.serial)
        dates = (record.not_after[:19], record.issued_at[:19])
        table.add_row(*(Text(cell) for cell in (*cells, *dates)))
    stdout_console().print(table)
