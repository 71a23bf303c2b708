"""`silobridge pki approve` signs only what the approver confirmed (issue 11, finding 5).

Run as a CA operator runs it: the real command in a child process, stdin not a terminal.
"""

from __future__ import annotations

import os
import pty
import subprocess
from pathlib import Path

import pytest

from silobridge.security.identity import identity_from_certificate_pem
from silobridge.security.pki import ca as pki
from silobridge.security.pki.cli import PASSPHRASE_ENV

from .conftest import SILOBRIDGE

PASSPHRASE = "approval passphrase"
CONSORTIUM = "demo"


def _env() -> dict[str, str]:
    return {**os.environ, PASSPHRASE_ENV: PASSPHRASE}


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    # stdin is not a terminal, as in a script or CI job.
    return subprocess.run(
        [*SILOBRIDGE, "pki", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        stdin=subprocess.DEVNULL,
        env=_env(),
    )


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "ca"
    pki.init_ca(directory, CONSORTIUM, PASSPHRASE.encode())
    return directory


def _request(where: Path, role: str, name: str, org: str, *dns: str) -> Path:
    """What the member organization runs on its own machine: its key and a CSR."""
    files = pki.request_certificate(
        where, consortium=CONSORTIUM, role=role, name=name, org=org, dns_names=dns
    )
    return files.csr


def _approve(csr: Path, ca_dir: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return _cli("approve", str(csr), "--ca-dir", str(ca_dir), *extra)


def _expect(role: str, name: str, org: str) -> list[str]:
    return ["--expect-role", role, "--expect-name", name, "--expect-org", org]


def test_a_coordinator_request_is_refused_without_allow_coordinator(
    tmp_path: Path, ca_dir: Path
) -> None:
    csr = _request(tmp_path / "member", "coordinator", "hub", "member-org")

    refused = _approve(csr, ca_dir, *_expect("coordinator", "hub", "member-org"))

    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "--allow-coordinator" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not csr.with_suffix(".crt").exists()

    allowed = _approve(
        csr, ca_dir, *_expect("coordinator", "hub", "member-org"), "--allow-coordinator"
    )
    assert allowed.returncode == 0, allowed.stderr
    issued = identity_from_certificate_pem(csr.with_suffix(".crt").read_bytes())
    assert issued.spiffe_id == "spiffe://demo/coordinator/hub"


@pytest.mark.parametrize(
    ("expected", "complaint"),
    [
        (("silo", "kjv", "bible"), "role"),  # the request asks for a client certificate
        (("client", "kjv", "other-org"), "organization"),
        (("client", "kjv2", "bible"), "name"),
    ],
)
def test_a_request_unlike_what_the_approver_expects_is_refused(
    tmp_path: Path, ca_dir: Path, expected: tuple[str, str, str], complaint: str
) -> None:
    csr = _request(tmp_path / "member", "client", "kjv", "bible")

    refused = _approve(csr, ca_dir, *_expect(*expected))

    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stderr.startswith("error: ")
    assert complaint in refused.stderr and "refusing" in refused.stderr
    assert not csr.with_suffix(".crt").exists()


def test_without_expectations_or_a_terminal_approve_refuses(tmp_path: Path, ca_dir: Path) -> None:
    csr = _request(tmp_path / "member", "silo", "kjv", "bible")

    refused = _approve(csr, ca_dir)

    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "--expect-role" in refused.stderr
    assert not csr.with_suffix(".crt").exists()


def test_approve_shows_the_request_before_signing(tmp_path: Path, ca_dir: Path) -> None:
    csr = _request(tmp_path / "member", "silo", "kjv", "bible", "kjv.bible.example")

    approved = _approve(csr, ca_dir, *_expect("silo", "kjv", "bible"))

    assert approved.returncode == 0, approved.stderr
    shown = approved.stdout
    for fact in ("spiffe://demo/silo/kjv", "role", "silo", "bible", "kjv.bible.example", "P-256"):
        assert fact in shown, shown


def test_a_name_already_issued_is_refused_unless_rotating(tmp_path: Path, ca_dir: Path) -> None:
    first = _request(tmp_path / "first", "silo", "kjv", "bible")
    assert _approve(first, ca_dir, *_expect("silo", "kjv", "bible")).returncode == 0

    # Another request for the same name, e.g. from someone else hoping to take it over.
    second = _request(tmp_path / "second", "silo", "kjv", "bible")
    refused = _approve(second, ca_dir, *_expect("silo", "kjv", "bible"))
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "already issued" in refused.stderr and "--rotate" in refused.stderr
    assert not second.with_suffix(".crt").exists()

    # The same name under another role is the same name.
    as_client = _request(tmp_path / "client", "client", "kjv", "bible")
    assert _approve(as_client, ca_dir, *_expect("client", "kjv", "bible")).returncode == 1

    rotated = _approve(second, ca_dir, *_expect("silo", "kjv", "bible"), "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    old = identity_from_certificate_pem(first.with_suffix(".crt").read_bytes())
    new = identity_from_certificate_pem(second.with_suffix(".crt").read_bytes())
    assert old.spiffe_id == new.spiffe_id and old.serial != new.serial


def test_rotation_keeps_the_identity_it_rotates(tmp_path: Path, ca_dir: Path) -> None:
    first = _request(tmp_path / "first", "silo", "kjv", "bible")
    assert _approve(first, ca_dir, *_expect("silo", "kjv", "bible")).returncode == 0

    takeover = _request(tmp_path / "takeover", "silo", "kjv", "mallory-org")
    refused = _approve(takeover, ca_dir, *_expect("silo", "kjv", "mallory-org"), "--rotate")

    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "bible" in refused.stderr
    assert not takeover.with_suffix(".crt").exists()


def test_issue_records_the_name_so_a_later_request_for_it_is_refused(
    tmp_path: Path, ca_dir: Path
) -> None:
    issued = _cli(
        "issue", "--ca-dir", str(ca_dir), "--out", str(tmp_path / "kjv"),
        "--role", "silo", "--name", "kjv", "--org", "bible",
    )  # fmt: skip
    assert issued.returncode == 0, issued.stderr

    csr = _request(tmp_path / "member", "silo", "kjv", "bible")
    refused = _approve(csr, ca_dir, *_expect("silo", "kjv", "bible"))
    assert refused.returncode == 1
    assert "already issued" in refused.stderr


def test_an_operator_at_a_terminal_confirms_by_typing_the_identity(
    tmp_path: Path, ca_dir: Path
) -> None:
    csr = _request(tmp_path / "member", "silo", "kjv", "bible")
    wrong_org = _approve_at_terminal(csr, ca_dir, "silo\nkjv\nacme\n")
    assert wrong_org.returncode == 1
    assert "organization" in wrong_org.output and not csr.with_suffix(".crt").exists()

    typed = _approve_at_terminal(csr, ca_dir, "silo\nkjv\nbible\n")
    assert typed.returncode == 0, typed.output
    assert "spiffe://demo/silo/kjv" in typed.output
    assert csr.with_suffix(".crt").exists()


class _TerminalRun:
    def __init__(self, returncode: int, output: str) -> None:
        self.returncode = returncode
        self.output = output


def _approve_at_terminal(csr: Path, ca_dir: Path, typed: str) -> _TerminalRun:
    """Run `pki approve` with a pseudo-terminal as stdin, typing ``typed`` into it."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [*SILOBRIDGE, "pki", "approve", str(csr), "--ca-dir", str(ca_dir)],
            stdin=terminal,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
        )
        os.write(controller, typed.encode())
        output, _ = process.communicate(timeout=120)
    finally:
        os.close(terminal)
        os.close(controller)
    return _TerminalRun(process.returncode, output)
