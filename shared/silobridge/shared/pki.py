"""The consortium PKI: a private ECDSA P-256 CA, participants' own keys and CSRs, and approvals.

Organizations generate their own key and certificate signing request; the CA operator approves
the request and sends back a certificate. Private keys never travel. Every certificate names its
holder with one URI SAN, ``spiffe://<consortium>/<role>/<name>`` (see ``identity``).

ECDSA P-256 throughout: gRPC's TLS stack does not accept Ed25519 certificates here.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from silobridge.shared.errors import ConfigError, InvalidArgument, PermissionDenied
from silobridge.shared.identity import (
    SPIFFE_SCHEME,
    Role,
    make_spiffe_id,
    parse_spiffe_id,
    validate_component,
    validate_role,
)

CA_CERT_FILE = "ca.crt"
CA_KEY_FILE = "ca.key"
CONSORTIUM_FILE = "consortium.txt"
# Certificates start a little in the past so a peer whose clock runs slightly behind accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)
# X.520 upper bound for organizationName.
_MAX_ORG_LENGTH = 64
_DNS_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclass(frozen=True)
class CaFiles:
    """What ``init_ca`` wrote."""

    cert: Path
    key: Path
    consortium_file: Path


@dataclass(frozen=True)
class RequestFiles:
    """What ``request_certificate`` wrote: the requester's private key and its CSR."""

    key: Path
    csr: Path


@dataclass(frozen=True)
class IssuedFiles:
    """A participant's startup credentials: its key, its certificate and the CA certificate."""

    key: Path
    cert: Path
    ca_cert: Path


@dataclass(frozen=True)
class CertificateAuthority:
    """A loaded consortium CA, able to sign requests for its own consortium only."""

    certificate: x509.Certificate
    private_key: ec.EllipticCurvePrivateKey
    consortium: str

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


@dataclass(frozen=True)
class CertificateSummary:
    """What a certificate says, in the terms an operator checks before trusting it."""

    spiffe_id: str
    org: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    not_before: dt.datetime
    not_after: dt.datetime
    serial_number: int
    server_auth: bool
    client_auth: bool


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _write_new_file(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` from the first byte on; refuse to replace anything."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; refusing to overwrite it") from None
    try:
        # The umask may have removed bits; set exactly what was asked for.
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            fd = -1
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        if fd != -1:
            os.close(fd)
        path.unlink(missing_ok=True)
        raise


def _refuse_existing(paths: Sequence[Path]) -> None:
    existing = [str(path) for path in paths if path.exists()]
    if existing:
        raise ConfigError(
            f"refusing to overwrite {', '.join(existing)}; move the old files away first"
        )


def _require_passphrase(passphrase: bytes) -> None:
    if not passphrase:
        raise ConfigError("the CA passphrase must not be empty: the CA key is encrypted with it")


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _subject(common_name: str, org: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        ]
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    """A CA key signs certificates and CRLs only; a participant key signs TLS handshakes only."""
    return x509.KeyUsage(
        digital_signature=not signs_certificates,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


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
    _refuse_existing([files.cert, files.key, files.consortium_file])
    directory.mkdir(parents=True, exist_ok=True)

    key = _new_key()
    subject = _subject(f"SiloBridge CA {consortium}", consortium)
    not_before = _now() - CLOCK_SKEW
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
            _key_usage(signs_certificates=True),
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
    _write_new_file(files.key, key_pem, 0o600)
    _write_new_file(files.cert, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    _write_new_file(files.consortium_file, f"{consortium}\n".encode(), 0o644)
    return files


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"no {what} at {path}: is this a CA directory made by `silobridge pki init`?"
        ) from None


def load_ca(directory: Path, passphrase: bytes) -> CertificateAuthority:
    """Load the CA in ``directory``, decrypting its key with ``passphrase``."""
    _require_passphrase(passphrase)
    key_pem = _read(directory / CA_KEY_FILE, "CA key")
    cert_pem = _read(directory / CA_CERT_FILE, "CA certificate")
    consortium = _read(directory / CONSORTIUM_FILE, "consortium name").decode().strip()
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


def _validate_org(org: str) -> str:
    if not org or len(org) > _MAX_ORG_LENGTH or not org.isprintable():
        raise InvalidArgument(
            f"invalid organization {org!r}: use 1 to {_MAX_ORG_LENGTH} printable characters"
        )
    return org


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
    _validate_org(org)
    parsed_role = validate_role(role)
    dns = [_validate_dns_name(host) for host in dns_names]
    ips = [_parse_ip(address) for address in ip_addresses]
    if parsed_role is Role.CLIENT and (dns or ips):
        raise InvalidArgument("a client certificate carries no DNS or IP names; drop --dns/--ip")
    if parsed_role is not Role.CLIENT and not dns and not ips:
        # Servers on one machine (tests, the local launcher) are reached on loopback.
        dns = ["localhost"]
        ips = [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")]

    files = RequestFiles(key=out_dir / f"{name}.key", csr=out_dir / f"{name}.csr")
    _refuse_existing([files.key, files.csr])
    out_dir.mkdir(parents=True, exist_ok=True)

    key = _new_key()
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    names += [x509.DNSName(host) for host in dns]
    names += [x509.IPAddress(address) for address in ips]
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(_subject(name, org))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write_new_file(files.key, key_pem, 0o600)
    _write_new_file(files.csr, csr.public_bytes(serialization.Encoding.PEM), 0o644)
    return files


@dataclass(frozen=True)
class _CheckedRequest:
    csr: x509.CertificateSigningRequest
    public_key: ec.EllipticCurvePublicKey
    spiffe_id: str
    role: Role
    name: str


def _checked_request(ca: CertificateAuthority, csr_pem: bytes) -> _CheckedRequest:
    """Validate a CSR against the CA's rules before anything is signed."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError:
        raise InvalidArgument("not a PEM certificate signing request") from None
    public_key = csr.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        kind = type(public_key).__name__.removeprefix("_").replace("PublicKey", "")
        raise InvalidArgument(
            f"the request carries a {kind} key; TLS here needs ECDSA P-256 keys "
            "(make a new request with `silobridge pki request`)"
        )
    if not csr.is_signature_valid:
        raise InvalidArgument("the request's signature does not verify; it was altered or damaged")
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise InvalidArgument("the request names no identity: it has no SAN extension") from None
    allowed = (x509.UniformResourceIdentifier, x509.DNSName, x509.IPAddress)
    if any(not isinstance(general_name, allowed) for general_name in san):
        raise InvalidArgument("the request asks for SAN types other than URI, DNS and IP")
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1 or not uris[0].startswith(SPIFFE_SCHEME):
        raise InvalidArgument(
            "the request must carry exactly one URI SAN, spiffe://<consortium>/<role>/<name>; "
            f"it carries {uris}"
        )
    consortium, role, name = parse_spiffe_id(uris[0])
    if consortium != ca.consortium:
        raise PermissionDenied(
            f"the request is for consortium {consortium!r}, but this CA signs for {ca.consortium!r}"
        )
    return _CheckedRequest(
        csr=csr, public_key=public_key, spiffe_id=uris[0], role=Role(role), name=name
    )


def _request_org(csr: x509.CertificateSigningRequest) -> str:
    orgs = csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(orgs) != 1 or not isinstance(orgs[0].value, str):
        raise InvalidArgument("the request's subject must name exactly one organization (O)")
    return _validate_org(orgs[0].value)


def _validity(
    ca: CertificateAuthority,
    valid_days: int,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
) -> tuple[dt.datetime, dt.datetime]:
    if valid_days < 1:
        raise InvalidArgument(f"valid_days must be at least 1, got {valid_days}")
    start = not_before if not_before is not None else _now() - CLOCK_SKEW
    end = not_after if not_after is not None else start + dt.timedelta(days=valid_days)
    # Naive datetimes are read as UTC, which is how X.509 stores them anyway.
    start = start if start.tzinfo else start.replace(tzinfo=dt.UTC)
    end = end if end.tzinfo else end.replace(tzinfo=dt.UTC)
    if end <= start:
        raise InvalidArgument(f"certificate would end ({end}) before it starts ({start})")
    if end > ca.certificate.not_valid_after_utc:
        raise InvalidArgument(
            f"certificate would outlive the CA (valid until {ca.certificate.not_valid_after_utc}); "
            "ask for fewer days"
        )
    return start, end


def approve_request(
    ca: CertificateAuthority,
    csr_pem: bytes,
    *,
    valid_days: int = 365,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> bytes:
    """Sign a participant's CSR after checking it; return the certificate as PEM.

    The subject is rebuilt (CN = the SPIFFE name, O = the requested organization) rather than
    copied, so a request cannot smuggle other attributes into a consortium certificate.
    """
    request = _checked_request(ca, csr_pem)
    csr, spiffe_id, role, name = request.csr, request.spiffe_id, request.role, request.name
    org = _request_org(csr)
    start, end = _validity(ca, valid_days, not_before, not_after)
    san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
    if role is Role.CLIENT:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    else:
        names += [x509.DNSName(host) for host in san.get_values_for_type(x509.DNSName)]
        names += [x509.IPAddress(address) for address in san.get_values_for_type(x509.IPAddress)]
        # Silos and the coordinator call each other, so each is both server and client.
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_subject(name, org))
        .issuer_name(ca.certificate.subject)
        .public_key(request.public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(signs_certificates=False),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(request.public_key), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca.private_key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM)


def describe_certificate(cert_pem: bytes) -> CertificateSummary:
    """Summarise a SiloBridge certificate (for the CLI and for checks before trusting it)."""
    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
    except ValueError:
        raise InvalidArgument("not a PEM certificate") from None
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise InvalidArgument("the certificate has no SAN extension") from None
    uris = [uri for uri in san.get_values_for_type(x509.UniformResourceIdentifier)]
    orgs = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        usages = set(eku)
    except x509.ExtensionNotFound:
        usages = set()
    return CertificateSummary(
        spiffe_id=uris[0] if len(uris) == 1 else "",
        org=str(orgs[0].value) if len(orgs) == 1 else "",
        dns_names=tuple(san.get_values_for_type(x509.DNSName)),
        ip_addresses=tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
        not_before=certificate.not_valid_before_utc,
        not_after=certificate.not_valid_after_utc,
        serial_number=certificate.serial_number,
        server_auth=ExtendedKeyUsageOID.SERVER_AUTH in usages,
        client_auth=ExtendedKeyUsageOID.CLIENT_AUTH in usages,
    )


def write_certificate(path: Path, cert_pem: bytes) -> Path:
    """Write an approved certificate to a new file (0644); refuse to replace an existing one."""
    _write_new_file(path, cert_pem, 0o644)
    return path


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
    _refuse_existing([cert_path])
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
        _write_new_file(ca_cert_path, ca.certificate_pem, 0o644)
    return IssuedFiles(key=request.key, cert=cert_path, ca_cert=ca_cert_path)
