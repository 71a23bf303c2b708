"""Protobuf <-> domain for what travels with each query: spaces, vectors, signed queries,
hits, per-silo statuses, federated answers, and the queries themselves.

``x_to_proto`` / ``x_from_proto`` pairs; a ``_from_proto`` validates what it can (a message from
a peer is input) and raises ``InvalidArgument``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from silobridge.core.errors import InvalidArgument
from silobridge.core.federation import FederatedAnswer, MergeMode, SiloOutcome, SiloStatus
from silobridge.core.hits import Hit
from silobridge.core.queries import FederatedQuery, SignedQuery, SiloQuery
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor
from silobridge.core.vectors import FloatVector, WireVector
from silobridge.v1 import common_pb2, coordinator_pb2, silo_pb2

_METRIC_TO_PROTO = {"cosine": common_pb2.METRIC_COSINE}
_METRIC_FROM_PROTO = {value: key for key, value in _METRIC_TO_PROTO.items()}
_STATE_TO_PROTO: Mapping[SiloOutcome, common_pb2.SiloState.ValueType] = {
    SiloOutcome.OK: common_pb2.SILO_STATE_OK,
    SiloOutcome.TIMEOUT: common_pb2.SILO_STATE_TIMEOUT,
    SiloOutcome.UNAVAILABLE: common_pb2.SILO_STATE_UNAVAILABLE,
    SiloOutcome.DENIED: common_pb2.SILO_STATE_DENIED,
    SiloOutcome.ERROR: common_pb2.SILO_STATE_ERROR,
}
_STATE_FROM_PROTO = {value: key for key, value in _STATE_TO_PROTO.items()}
_MERGE_TO_PROTO: Mapping[MergeMode, coordinator_pb2.MergeMode.ValueType] = {
    MergeMode.CALIBRATED: coordinator_pb2.MERGE_MODE_CALIBRATED,
    MergeMode.RRF: coordinator_pb2.MERGE_MODE_RRF,
}
_MERGE_FROM_PROTO = {value: key for key, value in _MERGE_TO_PROTO.items()}


# --- spaces and vectors ---------------------------------------------------------------------


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


def wire_vector_to_proto(vector: WireVector) -> common_pb2.Vector:
    return common_pb2.Vector(
        dtype=vector.dtype,  # type: ignore[arg-type]  # a peer's dtype is forwarded as sent
        dim=vector.dim,
        data=vector.data,
    )


def wire_vector_from_proto(message: common_pb2.Vector) -> WireVector:
    """The vector as the peer sent it, undecoded (``WireVector.decode`` checks it)."""
    return WireVector(dtype=int(message.dtype), dim=message.dim, data=message.data)


def vector_to_proto(vector: npt.ArrayLike) -> common_pb2.Vector:
    return wire_vector_to_proto(WireVector.of(vector))


def vector_from_proto(message: common_pb2.Vector) -> FloatVector:
    """Decode a wire vector; an unknown dtype or inconsistent length is InvalidArgument."""
    return wire_vector_from_proto(message).decode()


def matrix_from_protos(messages: Iterable[common_pb2.Vector], dimension: int) -> FloatMatrix:
    """Stack decoded vectors; an empty list is a (0, dimension) matrix."""
    rows = [vector_from_proto(message) for message in messages]
    if any(row.shape != rows[0].shape for row in rows):
        raise InvalidArgument("vectors of one message must share one dimension")
    return np.stack(rows) if rows else np.zeros((0, dimension), np.float32)


# --- signed queries -------------------------------------------------------------------------


def signed_query_to_proto(signed: SignedQuery) -> common_pb2.SignedQuery:
    return common_pb2.SignedQuery(
        claims=signed.claims, signature=signed.signature, certificate=signed.certificate
    )


def signed_query_from_proto(message: common_pb2.SignedQuery) -> SignedQuery:
    return SignedQuery(
        claims=message.claims, signature=message.signature, certificate=message.certificate
    )


# --- hits, statuses, answers ----------------------------------------------------------------


def hit_to_proto(hit: Hit) -> common_pb2.Hit:
    return common_pb2.Hit(doc_id=hit.doc_id, score=hit.score, fields=dict(hit.fields))


def hit_from_proto(message: common_pb2.Hit, *, silo: str = "") -> Hit:
    return Hit(doc_id=message.doc_id, score=message.score, fields=dict(message.fields), silo=silo)


def status_to_proto(status: SiloStatus) -> common_pb2.SiloStatus:
    return common_pb2.SiloStatus(
        silo=status.silo,
        state=_STATE_TO_PROTO[status.state],
        message=status.message,
        adapter_id=status.adapter_id,
        hit_count=status.hit_count,
        elapsed_ms=status.elapsed_ms,
    )


def status_from_proto(message: common_pb2.SiloStatus) -> SiloStatus:
    return SiloStatus(
        silo=message.silo,
        # A state this client does not know (a newer coordinator) is reported as an error.
        state=_STATE_FROM_PROTO.get(message.state, SiloOutcome.ERROR),
        message=message.message,
        adapter_id=message.adapter_id,
        hit_count=message.hit_count,
        elapsed_ms=message.elapsed_ms,
    )


def answer_to_proto(answer: FederatedAnswer) -> coordinator_pb2.FederatedSearchResponse:
    return coordinator_pb2.FederatedSearchResponse(
        hits=[
            coordinator_pb2.FederatedHit(
                silo=hit.silo, hit=hit_to_proto(hit), merged_score=hit.merged_score
            )
            for hit in answer.hits
        ],
        statuses=[status_to_proto(status) for status in answer.statuses],
    )


def answer_from_proto(
    message: coordinator_pb2.FederatedSearchResponse, source_space: str
) -> FederatedAnswer:
    return FederatedAnswer(
        hits=[
            dataclasses.replace(
                hit_from_proto(hit.hit, silo=hit.silo), merged_score=hit.merged_score
            )
            for hit in message.hits
        ],
        statuses=[status_from_proto(status) for status in message.statuses],
        source_space=source_space,
    )


# --- queries --------------------------------------------------------------------------------


def silo_query_to_proto(query: SiloQuery) -> silo_pb2.SearchRequest:
    return silo_pb2.SearchRequest(
        vector=wire_vector_to_proto(query.vector),
        k=query.k,
        rerank_text=query.rerank_text,
        rerank_depth=query.rerank_depth,
        signed=signed_query_to_proto(query.signed) if query.signed is not None else None,
        source_space=query.source_space,
        adapter_id=query.adapter_id,
    )


def silo_query_from_proto(message: silo_pb2.SearchRequest) -> SiloQuery:
    return SiloQuery(
        vector=wire_vector_from_proto(message.vector),
        k=message.k,
        rerank_text=message.rerank_text,
        rerank_depth=message.rerank_depth,
        signed=signed_query_from_proto(message.signed) if message.HasField("signed") else None,
        source_space=message.source_space,
        adapter_id=message.adapter_id,
    )


def federated_query_to_proto(query: FederatedQuery) -> coordinator_pb2.FederatedSearchRequest:
    return coordinator_pb2.FederatedSearchRequest(
        vector=wire_vector_to_proto(query.vector),
        source_space=query.source_space,
        k=query.k,
        silos=list(query.silos),
        merge=_MERGE_TO_PROTO[query.merge],
        rerank_text=query.rerank_text,
        rerank_depth=query.rerank_depth,
        signed=signed_query_to_proto(query.signed) if query.signed is not None else None,
    )


def federated_query_from_proto(message: coordinator_pb2.FederatedSearchRequest) -> FederatedQuery:
    if message.merge == coordinator_pb2.MERGE_MODE_UNSPECIFIED:
        merge = MergeMode.CALIBRATED
    elif message.merge in _MERGE_FROM_PROTO:
        merge = _MERGE_FROM_PROTO[message.merge]
    else:
        choices = ", ".join(mode.value for mode in MergeMode)
        raise InvalidArgument(f"unknown merge mode {message.merge}; choose one of {choices}")
    return FederatedQuery(
        vector=wire_vector_from_proto(message.vector),
        source_space=message.source_space,
        k=message.k,
        silos=tuple(message.silos),
        merge=merge,
        rerank_text=message.rerank_text,
        rerank_depth=message.rerank_depth,
        signed=signed_query_from_proto(message.signed) if message.HasField("signed") else None,
    )
