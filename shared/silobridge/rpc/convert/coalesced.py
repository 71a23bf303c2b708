"""Protobuf <-> domain for SearchMany: independent queries to one silo in one call, and each
one's hits or refusal, in order (a refusal travels as its status name and the silo's message)."""

from __future__ import annotations

from collections.abc import Sequence

from silobridge.core.hits import Hit
from silobridge.core.queries import SiloQuery
from silobridge.core.spaces import SpaceDescriptor
from silobridge.rpc.convert.queries import (
    hit_from_proto,
    hit_to_proto,
    silo_query_from_proto,
    silo_query_to_proto,
    space_to_proto,
)
from silobridge.v1 import silo_pb2

# How one query of a SearchMany ended: its hits, or (status name, message) for a refusal.
Outcome = list[Hit] | tuple[str, str]


def silo_queries_to_proto(queries: Sequence[SiloQuery]) -> silo_pb2.SearchManyRequest:
    return silo_pb2.SearchManyRequest(queries=[silo_query_to_proto(query) for query in queries])


def silo_queries_from_proto(message: silo_pb2.SearchManyRequest) -> list[SiloQuery]:
    return [silo_query_from_proto(query) for query in message.queries]


def search_outcomes_to_proto(
    outcomes: Sequence[Outcome], space: SpaceDescriptor
) -> silo_pb2.SearchManyResponse:
    messages = []
    for outcome in outcomes:
        if isinstance(outcome, tuple):
            code, text = outcome
            refusal = silo_pb2.QueryRefusal(code=code, message=text)
            messages.append(silo_pb2.SearchOutcome(refusal=refusal))
        else:
            hits = silo_pb2.HitList(hits=[hit_to_proto(hit) for hit in outcome])
            messages.append(silo_pb2.SearchOutcome(hits=hits))
    return silo_pb2.SearchManyResponse(outcomes=messages, space=space_to_proto(space))


def search_outcomes_from_proto(message: silo_pb2.SearchManyResponse) -> list[Outcome]:
    outcomes: list[Outcome] = []
    for outcome in message.outcomes:
        if outcome.WhichOneof("outcome") == "refusal":
            outcomes.append((outcome.refusal.code, outcome.refusal.message))
        else:  # hits, or an empty outcome: no hits
            outcomes.append([hit_from_proto(hit) for hit in outcome.hits.hits])
    return outcomes
