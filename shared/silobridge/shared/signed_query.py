"""Client-signed queries: the client signs what it asks, each silo verifies it and refuses replays.

A client signs ``QueryClaims`` (hash of the query vector, source space, target silos, k, time,
nonce) with the key of its consortium certificate. The coordinator forwards the claims, the
signature and the certificate untouched; the silo checks them against the consortium CA, so a
coordinator can neither forge a query for an organization nor replay one it has seen.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import heapq
import hmac
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf.message import DecodeError

from silobridge.shared.errors import (
    ConfigError,
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
)
from silobridge.shared.identity import PeerIdentity, Role, identity_from_certificate
from silobridge.v1 import common_pb2

# Domain separation: a signature over a query can never be passed off as one over anything else.
SIGNATURE_CONTEXT = b"silobridge-query-v1\n"
DEFAULT_MAX_AGE_S = 120.0
NONCE_BYTES = 16
MAX_CLAIMS_BYTES = 64 * 1024
MAX_CERTIFICATE_BYTES = 16 * 1024
# A DER ECDSA P-256 signature is at most 72 bytes; anything much longer is not one.
MAX_SIGNATURE_BYTES = 256
_SIGNATURE_ALGORITHM = ec.ECDSA(hashes.SHA256())
_MAX_K = 2**32 - 1


def vector_sha256(vector: common_pb2.Vector) -> bytes:
    """sha256 over dtype (1 byte), dim (4 bytes big-endian) and data: the vector as sent."""
    if not 0 <= vector.dtype <= 0xFF:
        raise InvalidArgument(f"unsupported vector dtype {vector.dtype}; send DTYPE_FLOAT32")
    # Fixed-width prefix fields keep the encoding injective: no (dtype, dim, data) collide.
    prefix = bytes([vector.dtype]) + vector.dim.to_bytes(4, "big")
    return hashlib.sha256(prefix + vector.data).digest()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _text_sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def _load_signing_key(key_pem: bytes, certificate_pem: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(
            "the client key is not an unencrypted PEM private key; pass the .key file "
            "written beside the client certificate"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError("the client key is not an ECDSA P-256 key; queries are signed with one")
    try:
        certificate = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError:
        raise ConfigError("the client certificate is not a PEM certificate") from None
    if certificate.public_key() != key.public_key():
        raise ConfigError(
            "the client key does not belong to the client certificate; "
            "use the key and certificate issued together"
        )
    return key


def _sign_with_key(
    key: ec.EllipticCurvePrivateKey,
    certificate_pem: bytes,
    *,
    vector: common_pb2.Vector,
    source_space: str,
    silos: Sequence[str],
    k: int,
    rerank_text: str,
    now_ms: int | None,
    nonce: bytes | None,
) -> common_pb2.SignedQuery:
    if not source_space:
        raise InvalidArgument("a signed query needs the source space its vector was embedded in")
    if not 1 <= k <= _MAX_K:
        raise InvalidArgument(f"k must be between 1 and {_MAX_K}, got {k}")
    if nonce is None:
        nonce = os.urandom(NONCE_BYTES)
    elif len(nonce) != NONCE_BYTES:
        raise InvalidArgument(f"the nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
    claims = common_pb2.QueryClaims(
        source_space=source_space,
        vector_sha256=vector_sha256(vector),
        # Sorted and de-duplicated so the same target set always signs the same bytes.
        silos=sorted(set(silos)),
        k=k,
        issued_unix_ms=_now_ms() if now_ms is None else now_ms,
        nonce=nonce,
        rerank_text_sha256=_text_sha256(rerank_text) if rerank_text else b"",
    )
    claims_bytes = claims.SerializeToString(deterministic=True)
    signature = key.sign(SIGNATURE_CONTEXT + claims_bytes, _SIGNATURE_ALGORITHM)
    return common_pb2.SignedQuery(
        claims=claims_bytes, signature=signature, certificate=certificate_pem
    )


def sign_query(
    *,
    vector: common_pb2.Vector,
    source_space: str,
    silos: Sequence[str],
    k: int,
    key_pem: bytes,
    certificate_pem: bytes,
    rerank_text: str = "",
    now_ms: int | None = None,
    nonce: bytes | None = None,
) -> common_pb2.SignedQuery:
    """Sign a query with the client's key (ECDSA P-256, SHA-256); a fresh nonce unless given."""
    key = _load_signing_key(key_pem, certificate_pem)
    return _sign_with_key(
        key,
        certificate_pem,
        vector=vector,
        source_space=source_space,
        silos=silos,
        k=k,
        rerank_text=rerank_text,
        now_ms=now_ms,
        nonce=nonce,
    )


@dataclass(frozen=True)
class QuerySigner:
    """A client's key and certificate, loaded once; call it like ``sign_query`` without them."""

    key: ec.EllipticCurvePrivateKey
    certificate_pem: bytes

    def __call__(
        self,
        *,
        vector: common_pb2.Vector,
        source_space: str,
        silos: Sequence[str],
        k: int,
        rerank_text: str = "",
        now_ms: int | None = None,
        nonce: bytes | None = None,
    ) -> common_pb2.SignedQuery:
        return _sign_with_key(
            self.key,
            self.certificate_pem,
            vector=vector,
            source_space=source_space,
            silos=silos,
            k=k,
            rerank_text=rerank_text,
            now_ms=now_ms,
            nonce=nonce,
        )


def load_client_signer(key_path: Path, cert_path: Path) -> QuerySigner:
    """Read a client's key and certificate files and return a signer for its queries."""
    contents = []
    for what, path in (("client key", key_path), ("client certificate", cert_path)):
        try:
            contents.append(path.read_bytes())
        except OSError as err:
            raise ConfigError(f"cannot read {what} {path}: {err.strerror}") from None
    key_pem, certificate_pem = contents
    return QuerySigner(_load_signing_key(key_pem, certificate_pem), certificate_pem)


class ReplayCache:
    """Nonces seen per signer, each kept until its query is older than the window. Thread-safe.

    Entries expire by the time the query was issued, not when it arrived, so a query signed
    slightly in the future is remembered until it would be refused as too old anyway. When the
    cache is full it refuses new queries (fail closed) rather than forgetting nonces early.
    """

    def __init__(self, window_s: float = DEFAULT_MAX_AGE_S, max_entries: int = 1_000_000) -> None:
        if not window_s > 0:
            raise InvalidArgument(f"the replay window must be positive, got {window_s} s")
        if max_entries < 1:
            raise InvalidArgument(f"the replay cache needs room for an entry, got {max_entries}")
        self.window_s = window_s
        self.max_entries = max_entries
        self._window_ms = window_s * 1000.0
        self._lock = threading.Lock()
        self._expiry_ms: dict[tuple[str, bytes], float] = {}
        # Every key in _expiry_ms has exactly one heap entry, so expiring is a pop from the front.
        self._heap: list[tuple[float, str, bytes]] = []

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry_ms)

    def _forget_expired(self, now_ms: int) -> None:
        while self._heap and self._heap[0][0] < now_ms:
            _expiry, signer, nonce = heapq.heappop(self._heap)
            del self._expiry_ms[(signer, nonce)]

    def check_and_remember(self, signer: str, nonce: bytes, issued_ms: int, now_ms: int) -> None:
        """Record ``(signer, nonce)``; raise ``PermissionDenied`` if it was already used."""
        expiry_ms = issued_ms + self._window_ms
        if expiry_ms < now_ms:
            # Remembering it would be pointless; accepting it would leave replays unguarded.
            raise PermissionDenied(
                f"query issued {(now_ms - issued_ms) / 1000:.1f} s ago, beyond the replay "
                f"window of {self.window_s:g} s; sign a fresh query"
            )
        key = (signer, nonce)
        with self._lock:
            self._forget_expired(now_ms)
            if key in self._expiry_ms:
                raise PermissionDenied(
                    f"replayed query: nonce {nonce.hex()} was already used by {signer}"
                )
            if len(self._expiry_ms) >= self.max_entries:
                raise ResourceExhausted(
                    f"too many signed queries in the last {self.window_s:g} s "
                    f"(replay cache holds {self.max_entries}); try again shortly"
                )
            self._expiry_ms[key] = expiry_ms
            heapq.heappush(self._heap, (expiry_ms, signer, nonce))


@dataclass(frozen=True)
class VerifiedQuery:
    """A signed query whose signature, certificate, time and target checked out."""

    signer: PeerIdentity
    claims: common_pb2.QueryClaims


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
        public_key.verify(signature, SIGNATURE_CONTEXT + claims_bytes, _SIGNATURE_ALGORITHM)
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
    signed: common_pb2.SignedQuery,
    *,
    ca_certificate_pem: bytes,
    vector: common_pb2.Vector,
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
    try:
        claims = common_pb2.QueryClaims.FromString(signed.claims)
    except DecodeError:
        raise PermissionDenied("the signed query's claims are not a readable QueryClaims") from None

    if not hmac.compare_digest(claims.vector_sha256, vector_sha256(vector)):
        raise PermissionDenied("the query vector was altered after signing")
    if claims.source_space != source_space:
        raise PermissionDenied(
            f"the query was signed for source space {claims.source_space!r}, not {source_space!r}"
        )
    if silo is not None and claims.silos and silo not in claims.silos:
        raise PermissionDenied(f"the query was not addressed to silo {silo!r}")
    _check_time(claims.issued_unix_ms, now_ms, max_age_s)
    if rerank_text and not hmac.compare_digest(
        claims.rerank_text_sha256, _text_sha256(rerank_text)
    ):
        raise PermissionDenied("the re-rank text is not the text the client signed")
    if len(claims.nonce) != NONCE_BYTES:
        raise PermissionDenied(
            f"the query nonce is {len(claims.nonce)} bytes; a nonce is {NONCE_BYTES} bytes"
        )
    if replay is not None:
        replay.check_and_remember(signer.spiffe_id, claims.nonce, claims.issued_unix_ms, now_ms)
    return VerifiedQuery(signer=signer, claims=claims)
