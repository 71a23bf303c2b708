"""Peer identities: SPIFFE ids in certificates, parsing them, and matching them against rules.

A SiloBridge identity is the single URI SAN ``spiffe://<consortium>/<role>/<name>`` of a
certificate issued by the consortium CA, plus the certificate subject's organization (O).
Identity comes from the TLS peer certificate only, never from a request field. Policies match
identities with the rules of ``silobridge.security.rules``.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID

from silobridge.core.errors import ConfigError, InvalidArgument, PermissionDenied

SPIFFE_SCHEME = "spiffe://"
# Lower-case so ids compare byte for byte; 63 characters so a name also fits a DNS label.
_COMPONENT = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
# Longest id a parser looks at: the scheme, three components and two slashes, with room to spare.
_MAX_ID_LENGTH = 256
# The CA-assigned DNS names of servers live under this suffix. ".invalid" never resolves
# (RFC 6761), so no real host is named like this, and the CA refuses requests that ask for it.
SERVER_NAME_SUFFIX = "id.silobridge.invalid"


class Role(enum.StrEnum):
    """What a certificate holder is in the consortium; the SPIFFE path's first segment."""

    SILO = "silo"
    COORDINATOR = "coordinator"
    CLIENT = "client"


ROLE_NAMES: frozenset[str] = frozenset(role.value for role in Role)


@dataclass(frozen=True)
class PeerIdentity:
    """Who is on the other end of a TLS connection, as its certificate says.

    ``serial`` (lower-case hex, no leading zeros) and ``fingerprint`` (SHA-256 of the DER
    certificate, lower-case hex) name the certificate, not the holder: they are left out of
    equality so a renewed certificate is still the same identity. Empty when not read from a
    certificate.
    """

    spiffe_id: str
    consortium: str
    role: str
    name: str
    org: str
    serial: str = field(default="", compare=False)
    fingerprint: str = field(default="", compare=False)


def validate_component(value: str, what: str) -> str:
    """Return ``value`` if it is a valid consortium or participant name, else raise."""
    if not _COMPONENT.fullmatch(value):
        raise InvalidArgument(
            f"invalid {what} {value!r}: use 1 to 63 characters of lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return value


def validate_role(value: str) -> Role:
    """Return the ``Role`` named by ``value``, or raise ``InvalidArgument`` listing the roles."""
    if value not in ROLE_NAMES:
        roles = ", ".join(role.value for role in Role)
        raise InvalidArgument(f"invalid role {value!r}: expected one of {roles}")
    return Role(value)


def make_spiffe_id(consortium: str, role: str, name: str) -> str:
    """Build ``spiffe://<consortium>/<role>/<name>`` after validating every part."""
    validate_component(consortium, "consortium")
    validate_role(role)
    validate_component(name, "name")
    return f"{SPIFFE_SCHEME}{consortium}/{role}/{name}"


def parse_spiffe_id(uri: str) -> tuple[str, str, str]:
    """Split a SiloBridge SPIFFE id into ``(consortium, role, name)``; raise ``InvalidArgument``."""
    if len(uri) > _MAX_ID_LENGTH:
        raise InvalidArgument(f"SPIFFE id is {len(uri)} characters long; at most 256 allowed")
    if not uri.startswith(SPIFFE_SCHEME):
        raise InvalidArgument(
            f"invalid SPIFFE id {uri!r}: expected spiffe://<consortium>/<role>/<name>"
        )
    parts = uri[len(SPIFFE_SCHEME) :].split("/")
    if len(parts) != 3:
        raise InvalidArgument(
            f"invalid SPIFFE id {uri!r}: expected exactly three path parts, "
            "spiffe://<consortium>/<role>/<name>"
        )
    consortium, role, name = parts
    validate_component(consortium, "consortium")
    validate_role(role)
    validate_component(name, "name")
    return consortium, role, name


def server_dns_name(spiffe_id: str) -> str:
    """The DNS name the CA writes into the certificate of a server holding ``spiffe_id``.

    A channel that expects ``spiffe_id`` checks the server's certificate against this name
    (``grpc.ssl_target_name_override``), so only that identity's certificate passes gRPC's own
    hostname check. A hash keeps every valid id (dots, underscores, 63-character names) inside
    one DNS label and makes the mapping one-to-one; the role stays readable.
    """
    _consortium, role, _name = parse_spiffe_id(spiffe_id)
    digest = hashlib.sha256(spiffe_id.encode("utf-8")).hexdigest()[:40]
    return f"{digest}.{role}.{SERVER_NAME_SUFFIX}"


def is_reserved_dns_name(host: str) -> bool:
    """Whether ``host`` lies under the CA-assigned suffix (a request may never ask for one)."""
    normalised = host.lower().rstrip(".")
    return normalised == SERVER_NAME_SUFFIX or normalised.endswith("." + SERVER_NAME_SUFFIX)


def _subject_org(certificate: x509.Certificate) -> str:
    orgs = certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(orgs) != 1:
        # Several O attributes would make "org:" rules ambiguous, so none of them count.
        return ""
    value = orgs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def identity_from_certificate(certificate: x509.Certificate) -> PeerIdentity:
    """Read the SiloBridge identity of a parsed certificate, or raise ``PermissionDenied``."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    except x509.ExtensionNotFound:
        uris = []
    spiffe_uris = [uri for uri in uris if uri.startswith(SPIFFE_SCHEME)]
    if len(spiffe_uris) != 1:
        raise PermissionDenied(
            "certificate carries no SiloBridge identity: expected exactly one "
            f"spiffe://<consortium>/<role>/<name> URI SAN, found {len(spiffe_uris)}"
        )
    spiffe_id = spiffe_uris[0]
    try:
        consortium, role, name = parse_spiffe_id(spiffe_id)
    except InvalidArgument as err:
        raise PermissionDenied(
            f"certificate carries no SiloBridge identity: {err.message}"
        ) from None
    return PeerIdentity(
        spiffe_id=spiffe_id,
        consortium=consortium,
        role=role,
        name=name,
        org=_subject_org(certificate),
        serial=certificate_serial_hex(certificate),
        fingerprint=certificate.fingerprint(hashes.SHA256()).hex(),
    )


def certificate_serial_hex(certificate: x509.Certificate) -> str:
    """The serial number as lower-case hex without colons or leading zeros (denylists use it)."""
    return format(certificate.serial_number, "x")


@functools.lru_cache(maxsize=1024)
def identity_from_certificate_pem(pem: bytes) -> PeerIdentity:
    """Read the SiloBridge identity of a PEM certificate (as the TLS auth context gives it).

    Cached by the certificate's exact bytes (a pure function of them: the TLS handshake has
    checked the chain and validity already): every call of a connection presents the same
    certificate, and parsing it cost more than the rest of admitting the call.
    """
    try:
        certificate = x509.load_pem_x509_certificate(pem)
    except ValueError:
        raise PermissionDenied(
            "certificate carries no SiloBridge identity: it is not a readable PEM certificate"
        ) from None
    return identity_from_certificate(certificate)


def identity_from_certificate_file(path: Path) -> PeerIdentity:
    """Our own identity, read from our certificate file; ``ConfigError`` if it carries none."""
    try:
        pem = path.read_bytes()
    except OSError as err:
        raise ConfigError(f"cannot read certificate {path}: {err.strerror}") from None
    try:
        return identity_from_certificate_pem(pem)
    except PermissionDenied as err:
        raise ConfigError(f"{path}: {err.message}") from None


def expected_peer(own_certificate: Path, role: Role, name: str) -> str:
    """The SPIFFE id of the ``role`` named ``name`` in our own consortium (from our certificate)."""
    consortium = identity_from_certificate_file(own_certificate).consortium
    return make_spiffe_id(consortium, role.value, validate_component(name, f"{role.value} name"))
