"""Checking a signed query: certificate from the consortium CA, signature, time, target, nonce."""

from __future__ import annotations

import datetime as dt
import functools
import hmac
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec

from silobridge.core.errors import ConfigError, PermissionDenied
from silobridge.core.vectors import WireVector
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
from silobridge.security.signed_query.replay import DEFAULT_MAX_AGE_S, ReplayCache
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
def _load_ca_certificate(ca_certificate_pem: bytes) -> x509.Certificate:
    # The CA certificate is the verifier's own configuration: parse it once, not per query.
    try:
        return x509.load_pem_x509_certificate(ca_certificate_pem)
    except ValueError:
        raise ConfigError("the consortium CA certificate is not a PEM certificate") from None


def _verified_certificate(
    certificate_pem: bytes, ca: x509.Certificate, now: dt.datetime
) -> x509.Certificate:
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
    try:
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        raise PermissionDenied(
            "the query's certificate was not issued by this consortium's CA"
        ) from None
    if now < certificate.not_valid_before_utc:
        raise PermissionDenied(
            f"the query's certificate is not valid before {certificate.not_valid_before_utc}"
        )
    if now > certificate.not_valid_after_utc:
        raise PermissionDenied(
            f"the query's certificate expired at {certificate.not_valid_after_utc}; "
            "the client needs a new one"
        )
    return certificate


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


def _check_time(issued_ms: int, now_ms: int, max_age_s: float) -> None:
    age_s = (now_ms - issued_ms) / 1000.0
    if age_s > max_age_s:
        raise PermissionDenied(
            f"the query was signed {age_s:.1f} s ago; at most {max_age_s:g} s allowed"
        )
    if -age_s > max_age_s:
        raise PermissionDenied(
            f"the query was signed {-age_s:.1f} s in the future; at most {max_age_s:g} s of "
            "clock skew allowed (check the client's clock)"
        )


def verify_signed_query(
    signed: SignedQuery,
    *,
    ca_certificate_pem: bytes,
    vector: WireVector,
    source_space: str,
    silo: str | None,
    replay: ReplayCache | None,
    now_ms: int | None = None,
    max_age_s: float = DEFAULT_MAX_AGE_S,
    rerank_text: str = "",
) -> VerifiedQuery:
    """Check a signed query against the request it came with; ``PermissionDenied`` if anything
    is off. ``k`` is not checked here: the caller compares ``claims.k`` with the request's.

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
    ca = _load_ca_certificate(ca_certificate_pem)
    now = dt.datetime.fromtimestamp(now_ms / 1000.0, tz=dt.UTC)
    certificate = _verified_certificate(signed.certificate, ca, now)
    signer = identity_from_certificate(certificate)
    if signer.role != Role.CLIENT:
        raise PermissionDenied(
            f"the query is signed by {signer.spiffe_id}, a {signer.role}; "
            "only client certificates sign queries"
        )
    # Claims are parsed only once the signature shows they are the client's own bytes.
    _check_signature(certificate, signed.claims, signed.signature)
    claims = decode_claims(signed.claims)

    if not hmac.compare_digest(claims.vector_sha256, vector.sha256()):
        raise PermissionDenied("the query vector was altered after signing")
    if claims.source_space != source_space:
        raise PermissionDenied(
            f"the query was signed for source space {claims.source_space!r}, not {source_space!r}"
        )
    if silo is not None and claims.silos and silo not in claims.silos:
        raise PermissionDenied(f"the query was not addressed to silo {silo!r}")
    _check_time(claims.issued_unix_ms, now_ms, max_age_s)
    if rerank_text and not hmac.compare_digest(claims.rerank_text_sha256, text_sha256(rerank_text)):
        raise PermissionDenied("the re-rank text is not the text the client signed")
    if len(claims.nonce) != NONCE_BYTES:
        raise PermissionDenied(
            f"the query nonce is {len(claims.nonce)} bytes; a nonce is {NONCE_BYTES} bytes"
        )
    if replay is not None:
        replay.check_and_remember(signer.spiffe_id, claims.nonce, claims.issued_unix_ms, now_ms)
    return VerifiedQuery(signer=signer, claims=claims)
