"""PreferAnchors on the wire: the pool a silo is asked to rank, and the positions it answers."""

from __future__ import annotations

from collections.abc import Sequence

from silobridge.core.listings import PreferenceRequest
from silobridge.v1 import silo_pb2


def preference_request_to_proto(request: PreferenceRequest) -> silo_pb2.PreferAnchorsRequest:
    return silo_pb2.PreferAnchorsRequest(
        anchor_set=request.name,
        version=request.version,
        sha256=request.sha256,
        count=request.count,
    )


def preference_request_from_proto(message: silo_pb2.PreferAnchorsRequest) -> PreferenceRequest:
    return PreferenceRequest(
        name=message.anchor_set,
        version=message.version,
        sha256=message.sha256,
        count=message.count,
    )


def positions_to_proto(positions: Sequence[int]) -> silo_pb2.PreferAnchorsResponse:
    return silo_pb2.PreferAnchorsResponse(positions=list(positions))


def positions_from_proto(message: silo_pb2.PreferAnchorsResponse) -> list[int]:
    return [int(position) for position in message.positions]
