"""Conversions between domain dataclasses and protobuf messages: protobuf lives only at the wire."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from silobridge.shared.errors import InvalidArgument
from silobridge.shared.spaces import SpaceDescriptor
from silobridge.shared.vectors import FloatVector, decode_float32, encode_float32
from silobridge.v1 import common_pb2

_METRIC_TO_PROTO = {"cosine": common_pb2.METRIC_COSINE}
_METRIC_FROM_PROTO = {value: key for key, value in _METRIC_TO_PROTO.items()}


def space_to_proto(space: SpaceDescriptor) -> common_pb2.SpaceDescriptor:
    return common_pb2.SpaceDescriptor(
        space_id=space.space_id,
        model_id=space.model_id,
        dimension=space.dimension,
        metric=_METRIC_TO_PROTO[space.metric],
        fingerprint=space.fingerprint,
    )


def space_from_proto(message: common_pb2.SpaceDescriptor) -> SpaceDescriptor:
    if message.metric not in _METRIC_FROM_PROTO:
        raise InvalidArgument(f"unsupported metric {message.metric} in space {message.space_id!r}")
    return SpaceDescriptor(
        space_id=message.space_id,
        model_id=message.model_id,
        dimension=message.dimension,
        fingerprint=message.fingerprint,
        metric=_METRIC_FROM_PROTO[message.metric],
    )


def vector_to_proto(vector: npt.ArrayLike) -> common_pb2.Vector:
    array = np.asarray(vector, dtype=np.float32).reshape(-1)
    return common_pb2.Vector(
        dtype=common_pb2.DTYPE_FLOAT32, dim=int(array.shape[0]), data=encode_float32(array)
    )


def vector_from_proto(message: common_pb2.Vector) -> FloatVector:
    """Decode a wire vector; an unknown dtype or inconsistent length is InvalidArgument."""
    if message.dtype != common_pb2.DTYPE_FLOAT32:
        raise InvalidArgument(
            f"unsupported vector dtype {message.dtype}; send DTYPE_FLOAT32 (little-endian)"
        )
    return decode_float32(message.data, message.dim)


def hit_to_proto(doc_id: str, score: float, fields: dict[str, str]) -> common_pb2.Hit:
    return common_pb2.Hit(doc_id=doc_id, score=score, fields=fields)
