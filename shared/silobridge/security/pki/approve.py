"""The CA's side of the consortium PKI: the loaded CA, approving CSRs, describing certificates."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from silobridge.core.errors import InvalidArgument, PermissionDenied
from silobridge.security.identity import (
    SPIFFE_SCHEME,
    Role,
    is_reserved_dns_name,
    parse_spiffe_id,
    server_dns_name,
)

# Certificates start a little in the past so a peer whose clock runs slightly behind accepts them.
CLOCK_SKEW = dt.timedelta(minutes=5)
# X.520 upper bound for organizationName.
_MAX_ORG_LENGTH = 64


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


# The certificate rules below are shared with CA creation and requests in ``pki``; they live here
# because ``pki`` imports approval, so keeping them there would make an import cycle.


def utc_now() -> dt.datetime:
    """The current time, timezone-aware in UTC."""
    return dt.datetime.now(dt.UTC)


def subject_name(common_name: str, org: str) -> x509.Name:
    """The subject every consortium certificate carries: CN and O, nothing else."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org),
        ]
    )


def key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
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


def validate_org(org: str) -> str:
    """Return ``org`` if it can be a certificate's organizationName, else raise."""
    if not org or len(org) > _MAX_ORG_LENGTH or not org.isprintable():
        raise InvalidArgument(
            f"invalid organization {org!r}: use 1 to {_MAX_ORG_LENGTH} printable characters"
        )
    return org


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
    except (ValueError, x509.InvalidVersion):
        raise InvalidArgument("not a PEM certificate signing request") from None
    try:
        public_key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm):  # parsed lazily: a damaged key only fails here
        raise InvalidArgument(
            "the request's public key cannot be read; it was altered or damaged"
        ) from None
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
    return validate_org(orgs[0].value)


@dataclass(frozen=True)
class RequestSummary:
    """What a CSR asks the CA to sign, shown to the approver before anything is signed."""

    spiffe_id: str
    role: Role
    name: str
    org: str
    dns_names: tuple[str, ...]
    ip_addresses: tuple[str, ...]
    key_type: str


@dataclass(frozen=True)
class ExpectedIdentity:
    """Who the approver expects a request to be for, as they learnt it outside the request."""

    role: str
    name: str
    org: str


def describe_request(ca: CertificateAuthority, csr_pem: bytes) -> RequestSummary:
    """Check a CSR as ``approve_request`` would and say what it asks for; nothing is signed."""
    request = _checked_request(ca, csr_pem)
    san = request.csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return RequestSummary(
        spiffe_id=request.spiffe_id,
        role=request.role,
        name=request.name,
        org=_request_org(request.csr),
        dns_names=tuple(san.get_values_for_type(x509.DNSName)),
        ip_addresses=tuple(str(ip) for ip in san.get_values_for_type(x509.IPAddress)),
        # ``_checked_request`` admits no other key.
        key_type="ECDSA P-256",
    )


def check_expected_request(
    request: RequestSummary, expected: ExpectedIdentity, *, allow_coordinator: bool
) -> None:
    """Refuse (``PermissionDenied``) a request that is not for whom the approver expects.

    A request names its own role, name and organization; without this check the CA would sign
    whatever a member asked for, a coordinator certificate included.
    """
    mismatches = [
        f"{what} {asked!r} (expected {wanted!r})"
        for what, asked, wanted in (
            ("role", request.role.value, expected.role),
            ("name", request.name, expected.name),
            ("organization", request.org, expected.org),
        )
        if asked != wanted
    ]
    if mismatches:
        raise PermissionDenied(
            f"refusing to sign {request.spiffe_id}: the request asks for "
            f"{', '.join(mismatches)}; check with the requester before approving"
        )
    if request.role is Role.COORDINATOR and not allow_coordinator:
        raise PermissionDenied(
            f"refusing to sign {request.spiffe_id}: a coordinator certificate can route every "
            "query of the consortium; approve it only with --allow-coordinator"
        )


def _validity(
    ca: CertificateAuthority,
    valid_days: int,
    not_before: dt.datetime | None,
    not_after: dt.datetime | None,
) -> tuple[dt.datetime, dt.datetime]:
    if valid_days < 1:
        raise InvalidArgument(f"valid_days must be at least 1, got {valid_days}")
    start = not_before if not_before is not None else utc_now() - CLOCK_SKEW
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
        requested = san.get_values_for_type(x509.DNSName)
        reserved = [host for host in requested if is_reserved_dns_name(host)]
        if reserved:
            raise PermissionDenied(
                f"the request asks for CA-assigned server names {reserved}; only the CA assigns "
                "those (drop them from --dns)"
            )
        # The name a channel expecting this identity checks: the CA's, derived from the id.
        names.append(x509.DNSName(server_dns_name(spiffe_id)))
        names += [x509.DNSName(host) for host in requested]
        names += [x509.IPAddress(address) for address in san.get_values_for_type(x509.IPAddress)]
        # Silos and the coordinator call each other, so each is both server and client.
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject_name(name, org))
        .issuer_name(ca.certificate.subject)
        .public_key(request.public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            key_usage(signs_certificates=False),
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
