"""Checking a signed query: certificate from the consortium CA, signature, time, target, nonce."""

from __future__ import annotations

import datetime as dt
import functools
import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from silobridge.core.errors import ConfigError, PermissionDenied
from silobridge.core.vectors import WireVector, batch_sha256
from silobridge.security.identity import PeerIdentity, Role, identity_from_certificate
from silobridge.security.signed_query.claims import (
    MAX_CLAIMS_BYTES,
    NONCE_BYTES,
    SIGNATURE_CONTEXT,
    QueryClaims,
    SignedQuery,
    decode_claims,
    text_sha256,
)
from silobridge.security.signed_query.replay import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_SKEW_S,
    ReplayCache,
)
from silobridge.security.signed_query.signing import SIGNATURE_ALGORITHM
from silobridge.security.signed_query.signing import now_ms as _now_ms

MAX_CERTIFICATE_BYTES = 16 * 1024
# A DER ECDSA P-256 signature is at most 72 bytes; anything much longer is not one.
MAX_SIGNATURE_BYTES = 256


@dataclass(frozen=True)
class VerifiedQuery:
    """A signed query whose signature, certificate, time and target checked out."""

    signer: PeerIdentity
    claims: QueryClaims


@functools.lru_cache(maxsize=8)
def _load_ca_certificates(ca_certificate_pem: bytes) -> tuple[x509.Certificate, ...]:
    # The CA bundle is the verifier's own configuration: parse it once per content, not per
    # query. Keyed on the bytes, so a rewritten CA file (rotation) is parsed afresh.
    try:
        certificates = tuple(x509.load_pem_x509_certificates(ca_certificate_pem))
    except ValueError:
        raise ConfigError("the consortium CA file holds no readable PEM certificate") from None
    return certificates


def _issued_by_any(certificate: x509.Certificate, cas: tuple[x509.Certificate, ...]) -> bool:
    # Every CA of the bundle is trusted: during a CA rotation both the old and the new one are.
    for ca in cas:
        try:
            certificate.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
            continue
        return True
    return False


def _check_signer_usage(certificate: x509.Certificate) -> None:
    """Refuse a certificate the CA did not issue for signing as a client.

    The CA's signature alone is not enough: a server-only certificate, a CA certificate or one
    whose key is not for digital signatures must not sign queries.
    """
    extensions = certificate.extensions
    try:
        usages = extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = x509.ExtendedKeyUsage([])
    if ExtendedKeyUsageOID.CLIENT_AUTH not in usages:
        raise PermissionDenied(
            "the query's certificate is not a client certificate (no clientAuth extended key "
            "usage); only client certificates sign queries"
        )
    try:
        key_usage = extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        key_usage = None
    if key_usage is None or not key_usage.digital_signature:
        raise PermissionDenied(
            "the query's certificate does not allow digital signatures (key usage "
            "digitalSignature); it cannot sign queries"
        )
    try:
        is_ca = extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if is_ca:
        raise PermissionDenied(
            "the query's certificate is a CA certificate (basic constraints CA:TRUE); "
            "only client certificates sign queries"
        )


def _verified_certificate(
    certificate_pem: bytes, ca_certificate_pem: bytes, now: dt.datetime
) -> tuple[x509.Certificate, PeerIdentity]:
    """The signer's certificate and identity if the CA issued it for signing and it is valid
    at ``now``. Only the validity window is checked per query: the rest is a pure function of
    the two byte strings, cached (a client signs every query with the same certificate, and the
    CA's signature check cost as much as the query's own)."""
    certificate, signer = _issued_signer(certificate_pem, ca_certificate_pem)
    if now < certificate.not_valid_before_utc:
        raise PermissionDenied(
            f"the query's certificate is not valid before {certificate.not_valid_before_utc}"
        )
    if now > certificate.not_valid_after_utc:
        raise PermissionDenied(
            f"the query's certificate expired at {certificate.not_valid_after_utc}; "
            "the client needs a new one"
        )
    return certificate, signer


@functools.lru_cache(maxsize=1024)
def _issued_signer(
    certificate_pem: bytes, ca_certificate_pem: bytes
) -> tuple[x509.Certificate, PeerIdentity]:
    # Keyed on the CA bundle's bytes too: after a CA rotation every signer is checked afresh.
    # A refusal raises and is never cached.
    cas = _load_ca_certificates(ca_certificate_pem)
    if not certificate_pem:
        raise PermissionDenied("the signed query carries no client certificate")
    if len(certificate_pem) > MAX_CERTIFICATE_BYTES:
        raise PermissionDenied(
            f"the signed query's certificate is {len(certificate_pem)} bytes; "
            f"at most {MAX_CERTIFICATE_BYTES} allowed"
        )
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError:
        raise PermissionDenied(
            "the signed query's certificate is not a readable PEM certificate"
        ) from None
    if not _issued_by_any(certificate, cas):
        raise PermissionDenied("the query's certificate was not issued by this consortium's CA")
    _check_signer_usage(certificate)
    return certificate, identity_from_certificate(certificate)


def _check_signature(certificate: x509.Certificate, claims_bytes: bytes, signature: bytes) -> None:
    public_key = certificate.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(
        public_key.curve, ec.SECP256R1
    ):
        raise PermissionDenied("the query's certificate does not hold an ECDSA P-256 key")
    if not signature or len(signature) > MAX_SIGNATURE_BYTES:
        raise PermissionDenied(
            f"the query signature is {len(signature)} bytes; an ECDSA P-256 signature is "
            f"1 to {MAX_SIGNATURE_BYTES}"
        )
    try:
        public_key.verify(signature, SIGNATURE_CONTEXT + claims_bytes, SIGNATURE_ALGORITHM)
    except InvalidSignature:
        raise PermissionDenied(
            "the query signature does not verify with the certificate's key: the claims were "
            "altered after signing, or signed with another key"
        ) from None


def _check_time(issued_ms: int, now_ms: int, max_age_s: float, max_skew_s: float) -> None:
    age_s = (now_ms - issued_ms) / 1000.0
    if age_s > max_age_s:
        raise PermissionDenied(
            f"the query was signed {age_s:.1f} s ago; at most {max_age_s:g} s allowed"
        )
    # Bounded apart from the age: a query from the future would stay valid for its whole age
    # window on top of its lead, and every silo would have to remember it that much longer.
    if -age_s > max_skew_s:
        raise PermissionDenied(
            f"the query was signed {-age_s:.1f} s in the future; at most {max_skew_s:g} s of "
            "clock skew allowed (check the client's clock)"
        )


def _check_scope(claims: QueryClaims, *, silo: str | None, audience: str) -> None:
    """The query names its targets and its audience, and they include ``silo`` and ``audience``.

    Without the audience anyone allowed to search could submit a captured signed query before
    its coordinator does and get the answers (the genuine forward then reads as a replay).
    """
    if not claims.silos:
        raise PermissionDenied(
            "the signed query names no target silos; a client signs the explicit list"
        )
    if silo is not None and silo not in claims.silos:
        raise PermissionDenied(f"the query was not addressed to silo {silo!r}")
    if not claims.audience:
        raise PermissionDenied(
            "the signed query names no audience; a client signs the coordinator it sends to"
        )
    if claims.audience != audience:
        raise PermissionDenied(
            f"the query was signed for {claims.audience}, not for {audience or 'this caller'}; "
            "only its audience may send it on"
        )


def _check_vectors(claims: QueryClaims, vector: WireVector | Sequence[WireVector]) -> None:
    """The claims sign this very vector, or this very batch, and say which of the two."""
    if isinstance(vector, WireVector):
        if claims.batch_size != 0:
            raise PermissionDenied(
                f"the signature is over a batch of {claims.batch_size} queries, not one query"
            )
        digest = vector.sha256()
    else:
        if claims.batch_size == 0:
            raise PermissionDenied("the signature is over a single query, not a batch")
        if claims.batch_size != len(vector):
            raise PermissionDenied(
                f"the signature is over a batch of {claims.batch_size} queries, "
                f"the request holds {len(vector)}"
            )
        digest = batch_sha256(vector)
    if not hmac.compare_digest(claims.vector_sha256, digest):
        raise PermissionDenied("the query vector was altered after signing")


def verify_signed_query(
    signed: SignedQuery,
    *,
    ca_certificate_pem: bytes,
    vector: WireVector | Sequence[WireVector],
    source_space: str,
    silo: str | None,
    audience: str,
    replay: ReplayCache | None,
    now_ms: int | None = None,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    max_skew_s: float = DEFAULT_MAX_SKEW_S,
    rerank_text: str = "",
) -> VerifiedQuery:
    """Check a signed query against the request it came with; ``PermissionDenied`` if anything
    is off. ``k`` is not checked here: the caller compares ``claims.k`` with the request's.

    ``audience`` is who must be named as the query's audience: a coordinator passes its own
    SPIFFE id, a silo the id of the caller forwarding the query. A query naming no silo is
    refused: "every silo" is resolved into names before signing.

    ``vector`` is the query's vector, or a batch's vectors in order (its claims must then name
    the batch: ``batch_size`` and the batch digest; a single query's must name none).

    The nonce is recorded in ``replay`` only after every other check passed, so a rejected
    query cannot burn a nonce for a later genuine one.
    """
    if replay is not None and replay.window_s < max_age_s:
        raise ConfigError(
            f"the replay window ({replay.window_s:g} s) is shorter than the accepted query age "
            f"({max_age_s:g} s): replays would pass once forgotten"
        )
    now_ms = _now_ms() if now_ms is None else now_ms
    if len(signed.claims) > MAX_CLAIMS_BYTES:
        raise PermissionDenied(
            f"the signed query's claims are {len(signed.claims)} bytes; "
            f"at most {MAX_CLAIMS_BYTES} allowed"
        )
    now = dt.datetime.fromtimestamp(now_ms / 1000.0, tz=dt.UTC)
    certificate, signer = _verified_certificate(signed.certificate, ca_certificate_pem, now)
    if signer.role != Role.CLIENT:
        raise PermissionDenied(
            f"the query is signed by {signer.spiffe_id}, a {signer.role}; "
            "only client certificates sign queries"
        )
    # Claims are parsed only once the signature shows they are the client's own bytes.
    _check_signature(certificate, signed.claims, signed.signature)
    claims = decode_claims(signed.claims)

    _check_vectors(claims, vector)
    if claims.source_space != source_space:
        raise PermissionDenied(
            f"the query was signed for source space {claims.source_space!r}, not {source_space!r}"
        )
    _check_scope(claims, silo=silo, audience=audience)
    _check_time(claims.issued_unix_ms, now_ms, max_age_s, max_skew_s)
    if rerank_text and not hmac.compare_digest(claims.rerank_text_sha256, text_sha256(rerank_text)):
        raise PermissionDenied("the re-rank text is not the text the client signed")
    if len(claims.nonce) != NONCE_BYTES:
        raise PermissionDenied(
            f"the query nonce is {len(claims.nonce)} bytes; a nonce is {NONCE_BYTES} bytes"
        )
    if replay is not None:
        replay.check_and_remember(signer.spiffe_id, claims.nonce, claims.issued_unix_ms, now_ms)
    return VerifiedQuery(signer=signer, claims=claims)
