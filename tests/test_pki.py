"""The consortium PKI: CA creation and loading, requests, approvals, issued certificates, CLI."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from typer.testing import CliRunner, Result

from silobridge.core.errors import ConfigError, InvalidArgument, PermissionDenied
from silobridge.security.identity import identity_from_certificate_pem
from silobridge.security.pki import ca as pki
from silobridge.security.pki.cli import PASSPHRASE_ENV, pki_app

PASSPHRASE = b"correct horse battery staple"


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ca")
    pki.init_ca(directory, "demo", PASSPHRASE)
    return directory


@pytest.fixture(scope="module")
def ca(ca_dir: Path) -> pki.CertificateAuthority:
    return pki.load_ca(ca_dir, PASSPHRASE)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _store(ca: pki.CertificateAuthority) -> verification.Store:
    return verification.Store([ca.certificate])


def _verify_server(
    ca: pki.CertificateAuthority, cert_pem: bytes, host: str, at: dt.datetime | None = None
) -> None:
    subject: verification.Subject
    try:
        subject = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        subject = x509.DNSName(host)
    builder = verification.PolicyBuilder().store(_store(ca))
    if at is not None:
        builder = builder.time(at)
    verifier = builder.build_server_verifier(subject)
    verifier.verify(x509.load_pem_x509_certificate(cert_pem), [])


def _verify_client(
    ca: pki.CertificateAuthority, cert_pem: bytes, at: dt.datetime | None = None
) -> verification.VerifiedClient:
    builder = verification.PolicyBuilder().store(_store(ca))
    if at is not None:
        builder = builder.time(at)
    return builder.build_client_verifier().verify(x509.load_pem_x509_certificate(cert_pem), [])


def _csr(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
    san: list[x509.GeneralName] | None,
    org: str = "Acme",
) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, "x"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
            ]
        )
    )
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def _p256() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


# --- the CA ----------------------------------------------------------------------------------


def test_ca_round_trip(ca_dir: Path, ca: pki.CertificateAuthority) -> None:
    assert ca.consortium == "demo"
    assert (ca_dir / "consortium.txt").read_text().strip() == "demo"
    cert = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    assert cert == ca.certificate
    assert ca.certificate_pem == (ca_dir / "ca.crt").read_bytes()
    subject = {attr.oid: attr.value for attr in cert.subject}
    assert subject == {NameOID.COMMON_NAME: "SiloBridge CA demo", NameOID.ORGANIZATION_NAME: "demo"}
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= dt.timedelta(days=3650)


def test_ca_key_is_private_and_encrypted(ca_dir: Path) -> None:
    key_file = ca_dir / "ca.key"
    assert _mode(key_file) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key_file.read_bytes()
    with pytest.raises(TypeError, match="encrypted"):
        serialization.load_pem_private_key(key_file.read_bytes(), password=None)


def test_wrong_passphrase_is_refused(ca_dir: Path) -> None:
    with pytest.raises(ConfigError, match="wrong CA passphrase"):
        pki.load_ca(ca_dir, b"not the passphrase")


def test_existing_ca_is_never_overwritten(ca_dir: Path) -> None:
    before = (ca_dir / "ca.key").read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        pki.init_ca(ca_dir, "demo", b"another passphrase")
    assert (ca_dir / "ca.key").read_bytes() == before


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="must not be empty"):
        pki.init_ca(tmp_path, "demo", b"")
    assert list(tmp_path.iterdir()) == []


def test_missing_ca_names_the_command_to_run(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="pki init"):
        pki.load_ca(tmp_path, PASSPHRASE)


# --- requests --------------------------------------------------------------------------------


def test_request_writes_private_key_and_csr(tmp_path: Path) -> None:
    files = pki.request_certificate(
        tmp_path, consortium="demo", role="silo", name="silo-a", org="Acme"
    )
    assert _mode(files.key) == 0o600
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert isinstance(key.curve, ec.SECP256R1)
    csr = x509.load_pem_x509_csr(files.csr.read_bytes())
    assert csr.is_signature_valid
    assert csr.public_key() == key.public_key()
    assert csr.subject.rfc4514_string() == "O=Acme,CN=silo-a"
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://demo/silo/silo-a"]
    # No default names (issue 11, finding 4): the CA adds the server's own assigned name.
    assert san.get_values_for_type(x509.DNSName) == []
    assert san.get_values_for_type(x509.IPAddress) == []


def test_request_refuses_to_replace_an_existing_key(tmp_path: Path) -> None:
    files = pki.request_certificate(
        tmp_path, consortium="demo", role="client", name="alice", org="Acme"
    )
    before = files.key.read_bytes()
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        pki.request_certificate(
            tmp_path, consortium="demo", role="client", name="alice", org="Acme"
        )
    assert files.key.read_bytes() == before


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        ({"role": "admin"}, "invalid role"),
        ({"name": "Silo A"}, "invalid name"),
        ({"org": ""}, "invalid organization"),
        ({"dns_names": ["bad host"]}, "invalid DNS name"),
        ({"ip_addresses": ["300.1.1.1"]}, "invalid IP address"),
        ({"role": "client", "dns_names": ["alice.example"]}, "client certificate carries no DNS"),
    ],
)
def test_request_validates_its_inputs(
    tmp_path: Path, options: dict[str, object], complaint: str
) -> None:
    arguments: dict[str, object] = {
        "consortium": "demo",
        "role": "silo",
        "name": "silo-a",
        "org": "Acme",
        **options,
    }
    with pytest.raises(InvalidArgument, match=complaint):
        pki.request_certificate(tmp_path, **arguments)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# --- approvals -------------------------------------------------------------------------------


def test_issued_server_certificate_verifies_against_the_ca(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    files = pki.issue_certificate(
        ca,
        tmp_path,
        role="silo",
        name="silo-a",
        org="Acme",
        dns_names=["silo-a.example"],
        ip_addresses=["10.0.0.7"],
    )
    cert_pem = files.cert.read_bytes()
    _verify_server(ca, cert_pem, "silo-a.example")
    _verify_server(ca, cert_pem, "10.0.0.7")
    # Silos call the coordinator too, so the same certificate authenticates a TLS client.
    verified = _verify_client(ca, cert_pem)
    assert x509.UniformResourceIdentifier("spiffe://demo/silo/silo-a") in (verified.subjects or [])
    with pytest.raises(verification.VerificationError):
        _verify_server(ca, cert_pem, "localhost")

    cert = x509.load_pem_x509_certificate(cert_pem)
    assert cert.subject.rfc4514_string() == "O=Acme,CN=silo-a"
    assert cert.issuer == ca.certificate.subject
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage)
    assert usage.critical and usage.value.digital_signature and not usage.value.key_cert_sign
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert dt.timedelta(days=364) < cert.not_valid_after_utc - cert.not_valid_before_utc
    assert cert.not_valid_after_utc - cert.not_valid_before_utc < dt.timedelta(days=366)


def test_issue_leaves_a_startup_folder(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    files = pki.issue_certificate(ca, tmp_path, role="coordinator", name="hub", org="Operator")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ca.crt", "hub.crt", "hub.key"]
    assert files == pki.IssuedFiles(
        key=tmp_path / "hub.key", cert=tmp_path / "hub.crt", ca_cert=tmp_path / "ca.crt"
    )
    assert files.ca_cert.read_bytes() == ca.certificate_pem
    assert _mode(files.key) == 0o600
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    assert cert.public_key() == key.public_key()


def test_issue_refuses_a_folder_holding_another_ca(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    (tmp_path / "ca.crt").write_bytes(b"someone else's CA")
    with pytest.raises(ConfigError, match="different CA certificate"):
        pki.issue_certificate(ca, tmp_path, role="silo", name="silo-a", org="Acme")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["ca.crt"]


def test_failed_issue_leaves_no_key_behind(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    with pytest.raises(InvalidArgument, match="outlive the CA"):
        pki.issue_certificate(
            ca, tmp_path, role="silo", name="silo-a", org="Acme", valid_days=100_000
        )
    assert list(tmp_path.iterdir()) == []


def test_client_certificate_is_not_a_server(tmp_path: Path, ca: pki.CertificateAuthority) -> None:
    # Built by hand: request_certificate refuses DNS names for a client, but a CSR can ask.
    csr_pem = _csr(
        _p256(),
        [x509.UniformResourceIdentifier("spiffe://demo/client/alice"), x509.DNSName("localhost")],
    )
    cert_pem = pki.approve_request(ca, csr_pem)
    cert = x509.load_pem_x509_certificate(cert_pem)
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("spiffe://demo/client/alice")]
    _verify_client(ca, cert_pem)
    with pytest.raises(verification.VerificationError):
        _verify_server(ca, cert_pem, "localhost")


def test_request_from_another_consortium_is_refused(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    files = pki.request_certificate(
        tmp_path, consortium="rivals", role="silo", name="silo-x", org="Rival"
    )
    with pytest.raises(PermissionDenied, match=r"consortium 'rivals'.*signs for 'demo'"):
        pki.approve_request(ca, files.csr.read_bytes())


@pytest.mark.parametrize(
    "key",
    [
        ed25519.Ed25519PrivateKey.generate(),
        ec.generate_private_key(ec.SECP384R1()),
        rsa.generate_private_key(public_exponent=65537, key_size=2048),
    ],
    ids=["ed25519", "p384", "rsa"],
)
def test_keys_other_than_p256_are_refused(
    ca: pki.CertificateAuthority,
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey,
) -> None:
    csr_pem = _csr(key, [x509.UniformResourceIdentifier("spiffe://demo/silo/silo-a")])
    with pytest.raises(InvalidArgument, match="TLS here needs ECDSA P-256"):
        pki.approve_request(ca, csr_pem)


def test_ed25519_refusal_names_the_key_type(ca: pki.CertificateAuthority) -> None:
    csr_pem = _csr(
        ed25519.Ed25519PrivateKey.generate(),
        [x509.UniformResourceIdentifier("spiffe://demo/silo/silo-a")],
    )
    with pytest.raises(InvalidArgument, match="Ed25519"):
        pki.approve_request(ca, csr_pem)


@pytest.mark.parametrize(
    ("san", "org", "complaint"),
    [
        (None, "Acme", "no SAN extension"),
        ([x509.DNSName("localhost")], "Acme", "exactly one URI SAN"),
        (
            [
                x509.UniformResourceIdentifier("spiffe://demo/silo/a"),
                x509.UniformResourceIdentifier("spiffe://demo/silo/b"),
            ],
            "Acme",
            "exactly one URI SAN",
        ),
        ([x509.UniformResourceIdentifier("https://demo/silo/a")], "Acme", "exactly one URI SAN"),
        ([x509.UniformResourceIdentifier("spiffe://demo/admin/root")], "Acme", "invalid role"),
        (
            [
                x509.UniformResourceIdentifier("spiffe://demo/silo/a"),
                x509.RFC822Name("a@example.org"),
            ],
            "Acme",
            "other than URI, DNS and IP",
        ),
        ([x509.UniformResourceIdentifier("spiffe://demo/silo/a")], "", "organization"),
    ],
)
def test_malformed_requests_are_refused(
    ca: pki.CertificateAuthority, san: list[x509.GeneralName] | None, org: str, complaint: str
) -> None:
    if org:
        csr_pem = _csr(_p256(), san, org)
    else:
        builder = x509.CertificateSigningRequestBuilder().subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a")])
        )
        builder = builder.add_extension(x509.SubjectAlternativeName(san or []), critical=False)
        csr_pem = builder.sign(_p256(), hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidArgument, match=complaint):
        pki.approve_request(ca, csr_pem)


def test_altered_request_is_refused(ca: pki.CertificateAuthority) -> None:
    csr_pem = _csr(_p256(), [x509.UniformResourceIdentifier("spiffe://demo/silo/a")])
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte of the ECDSA signature
    altered = x509.load_der_x509_csr(bytes(der)).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(InvalidArgument, match="signature does not verify"):
        pki.approve_request(ca, altered)


def test_not_a_csr_is_refused(ca: pki.CertificateAuthority) -> None:
    with pytest.raises(InvalidArgument, match="not a PEM certificate signing request"):
        pki.approve_request(ca, b"hello")


def test_expired_certificate_fails_verification(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    files = pki.request_certificate(
        tmp_path, consortium="demo", role="client", name="late", org="Acme"
    )
    now = dt.datetime.now(dt.UTC)
    # Inside the CA's own validity (which starts a few minutes back), but already over.
    start = ca.certificate.not_valid_before_utc
    end = now - dt.timedelta(seconds=30)
    cert_pem = pki.approve_request(ca, files.csr.read_bytes(), not_before=start, not_after=end)
    with pytest.raises(verification.VerificationError, match="not valid at validation time"):
        _verify_client(ca, cert_pem)
    _verify_client(ca, cert_pem, at=start + (end - start) / 2)
    assert pki.describe_certificate(cert_pem).not_after < now


def test_validity_that_ends_before_it_starts_is_refused(ca: pki.CertificateAuthority) -> None:
    csr_pem = _csr(_p256(), [x509.UniformResourceIdentifier("spiffe://demo/client/a")])
    now = dt.datetime.now(dt.UTC)
    with pytest.raises(InvalidArgument, match="end"):
        pki.approve_request(ca, csr_pem, not_before=now, not_after=now - dt.timedelta(hours=1))
    with pytest.raises(InvalidArgument, match="at least 1"):
        pki.approve_request(ca, csr_pem, valid_days=0)


def test_identity_from_an_issued_client_certificate(
    tmp_path: Path, ca: pki.CertificateAuthority
) -> None:
    files = pki.issue_certificate(ca, tmp_path, role="client", name="alice", org="Beta Labs")
    identity = identity_from_certificate_pem(files.cert.read_bytes())
    assert (identity.spiffe_id, identity.org) == ("spiffe://demo/client/alice", "Beta Labs")


# --- CLI -------------------------------------------------------------------------------------


def _invoke(
    args: list[str], passphrase: str | None = "cli passphrase", stdin: str | None = None
) -> Result:
    # None removes the variable, so the command has to prompt.
    return CliRunner().invoke(pki_app, args, env={PASSPHRASE_ENV: passphrase}, input=stdin)


def test_cli_init_issue_request_approve(tmp_path: Path) -> None:
    ca_dir, site = tmp_path / "ca", tmp_path / "site"
    result = _invoke(["init", "--dir", str(ca_dir), "--consortium", "demo"])
    assert result.exit_code == 0, result.output
    assert str(ca_dir / "ca.key") in result.stdout
    assert _mode(ca_dir / "ca.key") == 0o600
    ca = pki.load_ca(ca_dir, b"cli passphrase")

    result = _invoke(
        [
            "issue", "--ca-dir", str(ca_dir), "--out", str(tmp_path / "hub"),
            "--role", "coordinator", "--name", "hub", "--org", "Operator",
            "--dns", "hub.example", "--ip", "10.0.0.1", "--valid-days", "30",
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "spiffe://demo/coordinator/hub" in result.stdout
    assert str(tmp_path / "hub" / "hub.key") in result.stdout
    _verify_server(ca, (tmp_path / "hub" / "hub.crt").read_bytes(), "hub.example")
    summary = pki.describe_certificate((tmp_path / "hub" / "hub.crt").read_bytes())
    assert summary.not_after - summary.not_before < dt.timedelta(days=31)

    # The member organization runs `request` itself; it needs no passphrase.
    result = _invoke(
        [
            "request", "--out", str(site), "--consortium", "demo", "--role", "client",
            "--name", "alice", "--org", "Beta",
        ],
        passphrase=None,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert str(site / "alice.csr") in result.stdout

    result = _invoke(
        [
            "approve", str(site / "alice.csr"), "--ca-dir", str(ca_dir),
            "--expect-role", "client", "--expect-name", "alice", "--expect-org", "Beta",
        ]
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "spiffe://demo/client/alice" in result.stdout
    assert "clientAuth" in result.stdout and "serverAuth" not in result.stdout
    assert str(site / "alice.crt") in result.stdout
    verified = _verify_client(ca, (site / "alice.crt").read_bytes())
    assert verified.subjects == [x509.UniformResourceIdentifier("spiffe://demo/client/alice")]


def test_cli_prompts_for_the_passphrase_when_the_variable_is_unset(tmp_path: Path) -> None:
    result = _invoke(
        ["init", "--dir", str(tmp_path), "--consortium", "demo"],
        passphrase=None,
        stdin="typed secret\ntyped secret\n",
    )
    assert result.exit_code == 0, result.output
    assert "typed secret" not in result.output
    assert pki.load_ca(tmp_path, b"typed secret").consortium == "demo"


def test_cli_errors_are_one_line_and_exit_1(tmp_path: Path) -> None:
    assert _invoke(["init", "--dir", str(tmp_path), "--consortium", "demo"]).exit_code == 0

    again = _invoke(["init", "--dir", str(tmp_path), "--consortium", "demo"])
    assert again.exit_code == 1
    assert again.stderr.startswith("error: ") and "refusing to overwrite" in again.stderr
    assert "Traceback" not in again.output

    wrong = _invoke(
        ["issue", "--ca-dir", str(tmp_path), "--out", str(tmp_path / "x"), "--role", "silo",
         "--name", "x", "--org", "X"],
        passphrase="wrong",
    )  # fmt: skip
    assert wrong.exit_code == 1
    assert "error: wrong CA passphrase" in wrong.stderr
    assert not (tmp_path / "x").exists()

    missing = _invoke(["approve", str(tmp_path / "nope.csr"), "--ca-dir", str(tmp_path)])
    assert missing.exit_code == 1
    assert "error: cannot read" in missing.stderr

    empty = _invoke(["init", "--dir", str(tmp_path / "new"), "--consortium", "demo"], "")
    assert empty.exit_code == 1
    assert "must not be empty" in empty.stderr
