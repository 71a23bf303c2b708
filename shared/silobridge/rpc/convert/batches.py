"""Protobuf <-> domain for batches of queries: to the coordinator, to one silo, and the answers.

A batch carries no re-ranking text (its messages have no such field): one signature covers its
vectors in order, and the answers come back in the same order.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from silobridge.core.errors import InvalidArgument
from silobridge.core.federation import FederatedBatchAnswer, MergeMode
from silobridge.core.hits import Hit
from silobridge.core.queries import FederatedBatch, SiloBatch
from silobridge.core.spaces import SpaceDescriptor
from silobridge.rpc.convert.queries import (
    _MERGE_FROM_PROTO,
    _MERGE_TO_PROTO,
    hit_from_proto,
    hit_to_proto,
    signed_query_from_proto,
    signed_query_to_proto,
    space_to_proto,
    status_from_proto,
    status_to_proto,
    wire_vector_from_proto,
    wire_vector_to_proto,
)
from silobridge.v1 import coordinator_pb2, silo_pb2


def _merge_from_proto(value: int) -> MergeMode:
    if value == coordinator_pb2.MERGE_MODE_UNSPECIFIED:
        return MergeMode.CALIBRATED
    if value in _MERGE_FROM_PROTO:
        return _MERGE_FROM_PROTO[value]  # type: ignore[index]
    choices = ", ".join(mode.value for mode in MergeMode)
    raise InvalidArgument(f"unknown merge mode {value}; choose one of {choices}")


def federated_batch_to_proto(batch: FederatedBatch) -> coordinator_pb2.FederatedSearchBatchRequest:
    return coordinator_pb2.FederatedSearchBatchRequest(
        vectors=[wire_vector_to_proto(vector) for vector in batch.vectors],
        source_space=batch.source_space,
        k=batch.k,
        silos=list(batch.silos),
        merge=_MERGE_TO_PROTO[batch.merge],
        signed=signed_query_to_proto(batch.signed) if batch.signed is not None else None,
    )


def federated_batch_from_proto(
    message: coordinator_pb2.FederatedSearchBatchRequest,
) -> FederatedBatch:
    return FederatedBatch(
        vectors=tuple(wire_vector_from_proto(vector) for vector in message.vectors),
        source_space=message.source_space,
        k=message.k,
        silos=tuple(message.silos),
        merge=_merge_from_proto(message.merge),
        signed=signed_query_from_proto(message.signed) if message.HasField("signed") else None,
    )


def silo_batch_to_proto(batch: SiloBatch) -> silo_pb2.SearchBatchRequest:
    return silo_pb2.SearchBatchRequest(
        vectors=[wire_vector_to_proto(vector) for vector in batch.vectors],
        k=batch.k,
        signed=signed_query_to_proto(batch.signed) if batch.signed is not None else None,
        source_space=batch.source_space,
        adapter_id=batch.adapter_id,
    )


def silo_batch_from_proto(message: silo_pb2.SearchBatchRequest) -> SiloBatch:
    return SiloBatch(
        vectors=tuple(wire_vector_from_proto(vector) for vector in message.vectors),
        k=message.k,
        signed=signed_query_from_proto(message.signed) if message.HasField("signed") else None,
        source_space=message.source_space,
        adapter_id=message.adapter_id,
    )


def hit_lists_to_proto(
    results: Sequence[Sequence[Hit]], space: SpaceDescriptor
) -> silo_pb2.SearchBatchResponse:
    return silo_pb2.SearchBatchResponse(
        results=[silo_pb2.HitList(hits=[hit_to_proto(hit) for hit in hits]) for hits in results],
        space=space_to_proto(space),
    )


def hit_lists_from_proto(
    message: silo_pb2.SearchBatchResponse, *, silo: str = ""
) -> list[list[Hit]]:
    return [[hit_from_proto(hit, silo=silo) for hit in result.hits] for result in message.results]


def batch_answer_to_proto(
    answer: FederatedBatchAnswer,
) -> coordinator_pb2.FederatedSearchBatchResponse:
    return coordinator_pb2.FederatedSearchBatchResponse(
        answers=[
            coordinator_pb2.BatchAnswer(
                hits=[
                    coordinator_pb2.FederatedHit(
                        silo=hit.silo, hit=hit_to_proto(hit), merged_score=hit.merged_score
                    )
                    for hit in hits
                ]
            )
            for hits in answer.answers
        ],
        statuses=[status_to_proto(status) for status in answer.statuses],
    )


def batch_answer_from_proto(
    message: coordinator_pb2.FederatedSearchBatchResponse, source_space: str
) -> FederatedBatchAnswer:
    return FederatedBatchAnswer(
        answers=[
            [
                dataclasses.replace(
                    hit_from_proto(hit.hit, silo=hit.silo), merged_score=hit.merged_score
                )
                for hit in answer.hits
            ]
            for answer in message.answers
        ],
        statuses=[status_from_proto(status) for status in message.statuses],
        source_space=source_space,
    )
