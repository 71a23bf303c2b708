"""What a client signs for one query, and the exact bytes the signature covers."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from google.protobuf.message import DecodeError

from silobridge.core.errors import PermissionDenied
from silobridge.core.queries import SignedQuery
from silobridge.v1 import common_pb2

# Domain separation: a signature over a query can never be passed off as one over anything else.
SIGNATURE_CONTEXT = b"silobridge-query-v1\n"
NONCE_BYTES = 16
MAX_CLAIMS_BYTES = 64 * 1024
MAX_K = 2**32 - 1

__all__ = ["QueryClaims", "SignedQuery", "decode_claims", "encode_claims", "text_sha256"]


@dataclass(frozen=True)
class QueryClaims:
    """The signed statement: this vector, from this space, to these silos through this
    coordinator (the audience), for k hits, now."""

    source_space: str
    vector_sha256: bytes
    # Sorted and de-duplicated, never empty: verifiers refuse a query that names no silo.
    silos: tuple[str, ...]
    k: int
    issued_unix_ms: int
    nonce: bytes
    # sha256 of the query text sent for re-ranking; empty when no text is sent.
    rerank_text_sha256: bytes = b""
    # The SPIFFE id of the coordinator that may forward it; silos accept it only from that caller.
    audience: str = ""
    # 0 for a single query; for a batch its number of vectors (``vector_sha256`` is then
    # ``core.vectors.batch_sha256`` over them), so neither passes as the other.
    batch_size: int = 0


def text_sha256(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def encode_claims(claims: QueryClaims) -> bytes:
    """The signed bytes: deterministic protobuf (``silobridge.v1.QueryClaims``), the wire format."""
    message = common_pb2.QueryClaims(
        source_space=claims.source_space,
        vector_sha256=claims.vector_sha256,
        silos=list(claims.silos),
        k=claims.k,
        issued_unix_ms=claims.issued_unix_ms,
        nonce=claims.nonce,
        rerank_text_sha256=claims.rerank_text_sha256,
        audience=claims.audience,
        batch_size=claims.batch_size,
    )
    return message.SerializeToString(deterministic=True)


def decode_claims(data: bytes) -> QueryClaims:
    """Parse signed claims; only ever called once the signature showed they are the client's."""
    try:
        message = common_pb2.QueryClaims.FromString(data)
    except DecodeError:
        raise PermissionDenied("the signed query's claims are not a readable QueryClaims") from None
    return QueryClaims(
        source_space=message.source_space,
        vector_sha256=message.vector_sha256,
        silos=tuple(message.silos),
        k=message.k,
        issued_unix_ms=message.issued_unix_ms,
        nonce=message.nonce,
        rerank_text_sha256=message.rerank_text_sha256,
        audience=message.audience,
        batch_size=message.batch_size,
    )
