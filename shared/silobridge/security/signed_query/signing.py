"""The client side: load the key of its certificate once, then sign each query with it."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.core.vectors import WireVector, batch_sha256
from silobridge.security.identity import SPIFFE_SCHEME
from silobridge.security.signed_query.claims import (
    MAX_K,
    NONCE_BYTES,
    SIGNATURE_CONTEXT,
    QueryClaims,
    SignedQuery,
    encode_claims,
    text_sha256,
)

SIGNATURE_ALGORITHM = ec.ECDSA(hashes.SHA256())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


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


@dataclass(frozen=True)
class QuerySigner:
    """A client's key and certificate, loaded once; call it to sign one query."""

    key: ec.EllipticCurvePrivateKey
    certificate_pem: bytes

    @classmethod
    def from_pem(cls, key_pem: bytes, certificate_pem: bytes) -> QuerySigner:
        return cls(_load_signing_key(key_pem, certificate_pem), certificate_pem)

    def __call__(
        self,
        *,
        vector: WireVector,
        source_space: str,
        silos: Sequence[str],
        k: int,
        audience: str,
        rerank_text: str = "",
        now_ms: int | None = None,
        nonce: bytes | None = None,
    ) -> SignedQuery:
        """Sign a query (ECDSA P-256, SHA-256); a fresh nonce unless given.

        ``silos`` names every target (a query for "every silo" is resolved into names first)
        and ``audience`` is the SPIFFE id of the coordinator it is sent to: only that
        coordinator may forward it, so a captured query is worthless to anyone else.
        """
        return self._sign(
            vector_sha256=vector.sha256(),
            batch_size=0,
            source_space=source_space,
            silos=silos,
            k=k,
            audience=audience,
            rerank_text=rerank_text,
            now_ms=now_ms,
            nonce=nonce,
        )

    def sign_batch(
        self,
        *,
        vectors: Sequence[WireVector],
        source_space: str,
        silos: Sequence[str],
        k: int,
        audience: str,
        now_ms: int | None = None,
        nonce: bytes | None = None,
    ) -> SignedQuery:
        """Sign a batch of queries once: the claims carry ``batch_size`` and the batch digest
        (``batch_sha256``) of the vectors in order, with one nonce for the whole batch."""
        if not vectors:
            raise InvalidArgument("a batch holds at least one vector")
        return self._sign(
            vector_sha256=batch_sha256(vectors),
            batch_size=len(vectors),
            source_space=source_space,
            silos=silos,
            k=k,
            audience=audience,
            rerank_text="",
            now_ms=now_ms,
            nonce=nonce,
        )

    def _sign(
        self,
        *,
        vector_sha256: bytes,
        batch_size: int,
        source_space: str,
        silos: Sequence[str],
        k: int,
        audience: str,
        rerank_text: str,
        now_ms: int | None,
        nonce: bytes | None,
    ) -> SignedQuery:
        if not source_space:
            raise InvalidArgument(
                "a signed query needs the source space its vector was embedded in"
            )
        targets = tuple(sorted(set(silos)))
        if not targets or not all(targets):
            raise InvalidArgument(
                "a signed query names its target silos; list the silos to search "
                "(the client resolves 'every silo' through ListSilos)"
            )
        if not audience.startswith(SPIFFE_SCHEME):
            raise InvalidArgument(
                f"a signed query's audience is the coordinator's SPIFFE id "
                f"(spiffe://<consortium>/coordinator/<name>), got {audience!r}"
            )
        if not 1 <= k <= MAX_K:
            raise InvalidArgument(f"k must be between 1 and {MAX_K}, got {k}")
        if nonce is None:
            nonce = os.urandom(NONCE_BYTES)
        elif len(nonce) != NONCE_BYTES:
            raise InvalidArgument(f"the nonce must be {NONCE_BYTES} bytes, got {len(nonce)}")
        claims = QueryClaims(
            source_space=source_space,
            vector_sha256=vector_sha256,
            # Sorted and de-duplicated so the same target set always signs the same bytes.
            silos=targets,
            k=k,
            issued_unix_ms=_now() if now_ms is None else now_ms,
            nonce=nonce,
            rerank_text_sha256=text_sha256(rerank_text) if rerank_text else b"",
            audience=audience,
            batch_size=batch_size,
        )
        claims_bytes = encode_claims(claims)
        signature = self.key.sign(SIGNATURE_CONTEXT + claims_bytes, SIGNATURE_ALGORITHM)
        return SignedQuery(
            claims=claims_bytes, signature=signature, certificate=self.certificate_pem
        )


def _now() -> int:
    return now_ms()


def sign_query(
    *,
    vector: WireVector,
    source_space: str,
    silos: Sequence[str],
    k: int,
    key_pem: bytes,
    certificate_pem: bytes,
    audience: str,
    rerank_text: str = "",
    now_ms: int | None = None,
    nonce: bytes | None = None,
) -> SignedQuery:
    """Sign one query with a key given as PEM (a long-lived client loads a ``QuerySigner``)."""
    return QuerySigner.from_pem(key_pem, certificate_pem)(
        vector=vector,
        source_space=source_space,
        silos=silos,
        k=k,
        audience=audience,
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
    return QuerySigner.from_pem(key_pem, certificate_pem)
