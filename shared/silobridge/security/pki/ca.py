"""The consortium PKI: a private ECDSA P-256 CA, participants' own keys and CSRs, and approvals.

Organizations generate their own key and certificate signing request; the CA operator approves
the request and sends back a certificate. Private keys never travel. Every certificate names its
holder with one URI SAN, ``spiffe://<consortium>/<role>/<name>`` (see ``identity``).

ECDSA P-256 throughout: gRPC's TLS stack does not accept Ed25519 certificates here.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.security.identity import (
    SERVER_NAME_SUFFIX,
    Role,
    is_reserved_dns_name,
    make_spiffe_id,
    validate_component,
    validate_role,
)
from silobridge.security.pki.approve import (
    CLOCK_SKEW,
    CertificateAuthority,
    CertificateSummary,
    approve_request,
    describe_certificate,
    key_usage,
    subject_name,
    utc_now,
    validate_org,
)
from silobridge.security.pki.files import (
    CaFiles,
    IssuedFiles,
    RequestFiles,
    read_ca_file,
    refuse_existing,
    write_certificate,
    write_new_file,
)

# Approval and the file records live in ``pki_approve`` and ``pki_files``; callers import them here.
__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "CLOCK_SKEW",
    "CONSORTIUM_FILE",
    "CaFiles",
    "CertificateAuthority",
    "CertificateSummary",
    "IssuedFiles",
    "RequestFiles",
    "approve_request",
    "describe_certificate",
    "init_ca",
    "issue_certificate",
    "load_ca",
    "request_certificate",
    "write_certificate",
]

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CONSORTIUM_FILE = "consortium.txt"
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _require_passphrase(passphrase: bytes) -> None:
    if not passphrase:
        raise ConfigError("the CA passphrase must not be empty: the CA key is encrypted with it")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def init_ca(
    directory: Path, consortium: str, passphrase: bytes, *, valid_days: int = 3650
) -> CaFiles:
    """Create a new consortium CA in ``directory``; its key is encrypted with ``passphrase``."""
    validate_component(consortium, "consortium")
    _require_passphrase(passphrase)
    if valid_days < 1:
        raise InvalidArgument(f"valid_days must be at least 1, got {valid_days}")
    files = CaFiles(
        cert=directory / CA_CERT_FILE,
        key=directory / CA_KEY_FILE,
        consortium_file=directory / CONSORTIUM_FILE,
    )
    refuse_existing([files.cert, files.key, files.consortium_file])
    directory.mkdir(parents=True, exist_ok=True)

    key = _new_key()
    subject = subject_name(f"SiloBridge CA {consortium}", consortium)
    not_before = utc_now() - CLOCK_SKEW
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_before + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            key_usage(signs_certificates=True),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase),
    )
    # Key first: if anything later fails, a rerun refuses instead of minting a second CA key.
    write_new_file(files.key, key_pem, 0o600)
    write_new_file(files.cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    write_new_file(files.consortium_file, f"{consortium}\n".encode(), 0o644)
    return files


def load_ca(directory: Path, passphrase: bytes) -> CertificateAuthority:
    """Load the CA in ``directory``, decrypting its key with ``passphrase``."""
    _require_passphrase(passphrase)
    key_pem = read_ca_file(directory / CA_KEY_FILE, "CA key")
    cert_pem = read_ca_file(directory / CA_CERT_FILE, "CA certificate")
    consortium = read_ca_file(directory / CONSORTIUM_FILE, "consortium name").decode().strip()
    try:
        key = serialization.load_pem_private_key(key_pem, password=passphrase)
    except ValueError:
        raise ConfigError(
            f"wrong CA passphrase for {directory / CA_KEY_FILE} (or the key file is damaged)"
        ) from None
    except TypeError:
        raise ConfigError(
            f"{directory / CA_KEY_FILE} is not encrypted; a CA key must be encrypted at rest"
        ) from None
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise ConfigError(f"{directory / CA_CERT_FILE} is not a PEM certificate") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != (
        certificate.public_key()
    ):
        raise ConfigError(f"{directory / CA_KEY_FILE} does not belong to {CA_CERT_FILE}")
    validate_component(consortium, "consortium")
    return CertificateAuthority(certificate=certificate, private_key=key, consortium=consortium)


def _validate_dns_name(name: str) -> str:
    labels = name.rstrip(".").split(".")
    if len(name) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels):
        raise InvalidArgument(f"invalid DNS name {name!r}: use host names such as silo-a.example")
    return name


def _parse_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(address)
    except ValueError:
        raise InvalidArgument(f"invalid IP address {address!r}") from None


def request_certificate(
    out_dir: Path,
    *,
    consortium: str,
    role: str,
    name: str,
    org: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> RequestFiles:
    """Make the requester's own key and a CSR for ``spiffe://<consortium>/<role>/<name>``.

    The key is written unencrypted (0600): silo agents and coordinators must start unattended,
    with nobody to type a passphrase. The file mode and the host are what protect it.
    """
    spiffe_id = make_spiffe_id(consortium, role, name)
    validate_org(org)
    parsed_role = validate_role(role)
    dns = [_validate_dns_name(host) for host in dns_names]
    ips = [_parse_ip(address) for address in ip_addresses]
    if parsed_role is Role.CLIENT and (dns or ips):
        raise InvalidArgument("a client certificate carries no DNS or IP names; drop --dns/--ip")
    reserved = [host for host in dns if is_reserved_dns_name(host)]
    if reserved:
        raise InvalidArgument(
            f"{', '.join(reserved)}: names under {SERVER_NAME_SUFFIX} are assigned by the CA; "
            "drop them from --dns"
        )
    # No default names: the CA adds the server's own name (derived from its SPIFFE id), which is
    # what peers expecting it check; --dns/--ip add names for callers that dial without one.

    files = RequestFiles(key=out_dir / f"{name}.key", csr=out_dir / f"{name}.csr")
    refuse_existing([files.key, files.csr])
    out_dir.mkdir(parents=True, exist_ok=True)

    key = _new_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    names += [x509.DNSName(host) for host in dns]
    names += [x509.IPAddress(address) for address in ips]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject_name(name, org))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    write_new_file(files.key, key_pem, 0o600)
    write_new_file(files.csr, csr.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


def issue_certificate(
    ca: CertificateAuthority,
    out_dir: Path,
    *,
    role: str,
    name: str,
    org: str,
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
    valid_days: int = 365,
) -> IssuedFiles:
    """Request and approve in one step, leaving key, certificate and CA certificate in ``out_dir``.

    For an operator provisioning a participant it runs itself (a local demo, tests); a real
    member organization runs ``request_certificate`` on its own machine instead.
    """
    cert_path = out_dir / f"{name}.crt"
    ca_cert_path = out_dir / CA_CERT_FILE
    refuse_existing([cert_path])
    if ca_cert_path.exists() and ca_cert_path.read_bytes() != ca.certificate_pem:
        raise ConfigError(f"{ca_cert_path} holds a different CA certificate; refusing to mix CAs")
    request = request_certificate(
        out_dir,
        consortium=ca.consortium,
        role=role,
        name=name,
        org=org,
        dns_names=dns_names,
        ip_addresses=ip_addresses,
    )
    try:
        cert_pem = approve_request(ca, request.csr.read_bytes(), valid_days=valid_days)
    except BaseException:
        # Leave nothing half-made: a rerun with corrected options should simply work.
        request.key.unlink(missing_ok=True)
        raise
    finally:
        # The request has served its purpose; a startup folder holds key, certificate and CA.
        request.csr.unlink(missing_ok=True)
    write_certificate(cert_path, cert_pem)
    if not ca_cert_path.exists():
        write_new_file(ca_cert_path, ca.certificate_pem, 0o644)
    return IssuedFiles(key=request.key, cert=cert_path, ca_cert=ca_cert_path)
