"""Vector validation and wire encoding: every vector from a peer is checked here before use."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from silobridge.shared.errors import InvalidArgument

FloatVector = npt.NDArray[np.float32]
FLOAT32_BYTES = 4
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


def validate_k(k: int, max_k: int) -> int:
    """Check that ``1 <= k <= max_k``."""
    if not 1 <= k <= max_k:
        raise InvalidArgument(f"k={k} is outside the allowed range [1, {max_k}]")
    return k
