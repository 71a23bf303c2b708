"""Vector validation and wire encoding: every vector from a peer is checked here before use."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from silobridge.core.errors import InvalidArgument

FloatVector = npt.NDArray[np.float32]
FLOAT32_BYTES = 4
# The wire's code for little-endian float32 (``silobridge.v1.DType.DTYPE_FLOAT32``).
DTYPE_FLOAT32 = 1
# Below this norm a vector has no direction worth searching with.
MIN_NORM = 1e-6


def decode_float32(data: bytes, dim: int) -> FloatVector:
    """Decode ``dim`` little-endian float32 values, refusing a byte length that does not match."""
    if len(data) != dim * FLOAT32_BYTES:
        raise InvalidArgument(
            f"vector data holds {len(data)} bytes but dim={dim} float32 needs {dim * FLOAT32_BYTES}"
        )
    return np.frombuffer(data, dtype="<f4").astype(np.float32)


def encode_float32(vector: npt.ArrayLike) -> bytes:
    """Pack a 1-D vector as little-endian float32 bytes."""
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


@dataclass(frozen=True)
class WireVector:
    """A vector exactly as a peer sent it: what a client signs and a coordinator forwards.

    Kept as bytes so that a forwarded query reaches the silo byte for byte as it was signed;
    ``decode`` is where its length and dtype are checked.
    """

    dtype: int
    dim: int
    data: bytes

    @classmethod
    def of(cls, vector: npt.ArrayLike) -> WireVector:
        array = np.asarray(vector, dtype=np.float32).reshape(-1)
        return cls(DTYPE_FLOAT32, int(array.shape[0]), encode_float32(array))

    def decode(self) -> FloatVector:
        if self.dtype != DTYPE_FLOAT32:
            raise InvalidArgument(
                f"unsupported vector dtype {self.dtype}; send DTYPE_FLOAT32 (little-endian)"
            )
        return decode_float32(self.data, self.dim)

    def sha256(self) -> bytes:
        """sha256 over dtype (1 byte), dim (4 bytes big-endian) and data: the vector as sent."""
        if not 0 <= self.dtype <= 0xFF:
            raise InvalidArgument(f"unsupported vector dtype {self.dtype}; send DTYPE_FLOAT32")
        if not 0 <= self.dim < 2**32:
            raise InvalidArgument(f"vector dim {self.dim} is out of range")
        # Fixed-width prefix fields keep the encoding injective: no (dtype, dim, data) collide.
        prefix = bytes([self.dtype]) + self.dim.to_bytes(4, "big")
        return hashlib.sha256(prefix + self.data).digest()


# Domain separation of the batch digest: never equal to a single vector's ``sha256``.
BATCH_DIGEST_CONTEXT = b"silobridge-batch-v1\n"


def batch_sha256(vectors: Sequence[WireVector]) -> bytes:
    """sha256 over the context, the count (4 bytes big-endian) and each vector's ``sha256`` in
    order: what a client signs for a batch (order and content sensitive)."""
    if not 0 <= len(vectors) < 2**32:
        raise InvalidArgument(f"a batch of {len(vectors)} vectors is out of range")
    digest = hashlib.sha256(BATCH_DIGEST_CONTEXT + len(vectors).to_bytes(4, "big"))
    for vector in vectors:
        digest.update(vector.sha256())
    return digest.digest()


def validate_query_vector(vector: FloatVector, expected_dim: int) -> FloatVector:
    """Check dimension, finiteness and norm; return the L2-normalised vector.

    Raises ``InvalidArgument`` with a message naming what is wrong and what was expected.
    """
    if vector.ndim != 1:
        raise InvalidArgument(f"expected a 1-D vector, got shape {vector.shape}")
    if vector.shape[0] != expected_dim:
        raise InvalidArgument(
            f"vector has dimension {vector.shape[0]}, this space expects {expected_dim}"
        )
    if not np.all(np.isfinite(vector)):
        bad = int(np.count_nonzero(~np.isfinite(vector)))
        raise InvalidArgument(f"vector has {bad} non-finite value(s) (NaN or infinity)")
    norm = float(np.linalg.norm(vector.astype(np.float64)))
    if norm < MIN_NORM:
        raise InvalidArgument(f"vector norm is {norm:.3g}; a zero vector cannot be searched")
    return (vector / norm).astype(np.float32)


# How far from 1 the norm of an embedding a model L2-normalised may be (float32 rounding is
# ~1e-7; anything further off was not produced by a SiloBridge embedder).
UNIT_NORM_TOLERANCE = 1e-3


def validate_unit_rows(rows: npt.NDArray[Any], expected_dim: int, what: str) -> None:
    """Check that ``rows`` are ``expected_dim``-wide, finite, non-zero and of unit norm.

    What every embedding a peer hands in as its model's output must be (anchor vectors, like
    query vectors); ``what`` names them in the ``InvalidArgument`` raised, with the first bad row.
    """
    if rows.ndim != 2 or rows.shape[1] != expected_dim:
        raise InvalidArgument(
            f"{what} have shape {rows.shape}; expected (count, {expected_dim}) for this space"
        )
    finite = np.isfinite(rows).all(axis=1)
    if not finite.all():
        first = int(np.argmin(finite))
        raise InvalidArgument(f"{what}: row {first} has non-finite values (NaN or infinity)")
    norms = np.linalg.norm(rows.astype(np.float64), axis=1)
    zero = norms < MIN_NORM
    if zero.any():
        raise InvalidArgument(f"{what}: row {int(np.argmax(zero))} is a zero vector")
    off = np.abs(norms - 1.0) > UNIT_NORM_TOLERANCE
    if off.any():
        first = int(np.argmax(off))
        raise InvalidArgument(
            f"{what}: row {first} has norm {norms[first]:.6g}, not 1 (within "
            f"{UNIT_NORM_TOLERANCE}); send the L2-normalised embeddings the model produces"
        )


def validate_k(k: int, max_k: int) -> int:
    """Check that ``1 <= k <= max_k``."""
    if not 1 <= k <= max_k:
        raise InvalidArgument(f"k={k} is outside the allowed range [1, {max_k}]")
    return k
