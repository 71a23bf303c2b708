"""Validation of vectors and k from peers: property tests over arbitrary input."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from silobridge.core.errors import InvalidArgument
from silobridge.core.vectors import decode_float32, validate_k, validate_query_vector
from silobridge.rpc.convert import vector_from_proto, vector_to_proto
from silobridge.v1 import common_pb2

DIM = 16
floats = st.floats(width=32, allow_nan=True, allow_infinity=True)


@given(arrays(np.float32, st.integers(1, 40), elements=floats))
def test_validation_either_refuses_or_returns_a_unit_vector(vector: np.ndarray) -> None:
    try:
        out = validate_query_vector(vector, DIM)
    except InvalidArgument as error:
        assert error.message  # always a message a user can act on
        return
    assert vector.shape == (DIM,)
    assert np.all(np.isfinite(vector))
    assert out.dtype == np.float32
    assert math.isclose(float(np.linalg.norm(out)), 1.0, rel_tol=1e-4)


@given(st.binary(max_size=200), st.integers(0, 100))
def test_decoding_arbitrary_bytes_never_fails_otherwise(data: bytes, dim: int) -> None:
    try:
        vector = decode_float32(data, dim)
    except InvalidArgument:
        assert len(data) != 4 * dim
        return
    assert vector.shape == (dim,)


@given(arrays(np.float32, st.integers(0, 64), elements=st.floats(width=32)))
def test_wire_encoding_round_trips_bit_exactly(vector: np.ndarray) -> None:
    decoded = vector_from_proto(vector_to_proto(vector))
    assert decoded.tobytes() == vector.astype("<f4").tobytes()


def test_unknown_dtype_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="dtype"):
        vector_from_proto(common_pb2.Vector(dim=1, data=b"\0\0\0\0"))


@given(st.integers(-5, 200), st.integers(1, 150))
def test_k_outside_range_is_refused(k: int, max_k: int) -> None:
    if 1 <= k <= max_k:
        assert validate_k(k, max_k) == k
    else:
        with pytest.raises(InvalidArgument, match="outside"):
            validate_k(k, max_k)
