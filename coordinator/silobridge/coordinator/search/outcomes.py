"""Outcomes of a federated query, per silo and merged: plain data, no transport."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from silobridge.coordinator.search.merge import MergedHit
from silobridge.core.spaces import FloatMatrix
from silobridge.core.vectors import FloatVector
from silobridge.rpc.silo_client import RemoteHit, SiloInfo
from silobridge.v1 import common_pb2


class SiloOutcome(enum.Enum):
    OK = "ok"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    DENIED = "denied"
    ERROR = "error"


@dataclass(frozen=True)
class SiloReport:
    """What one silo contributed to a federated query."""

    silo: str
    outcome: SiloOutcome
    message: str = ""
    adapter_id: str = ""
    hit_count: int = 0
    elapsed_ms: float = 0.0


@dataclass(frozen=True)
class FederatedAnswer:
    hits: list[MergedHit]
    reports: list[SiloReport] = field(default_factory=list)


@dataclass(frozen=True)
class Forwarded:
    """A client-signed query passed on as is: the silo verifies it and translates it itself."""

    signed: common_pb2.SignedQuery
    source_space: str
    adapter_id: str


class SiloGateway(Protocol):
    """How the coordinator reaches silos (gRPC in production: ``silo_links.GrpcSiloGateway``)."""

    async def describe(self, endpoint: str, *, timeout: float) -> SiloInfo: ...

    async def search(
        self,
        endpoint: str,
        vector: FloatVector,
        k: int,
        *,
        timeout: float,
        rerank_text: str = "",
        rerank_depth: int = 0,
        forward: Forwarded | None = None,
    ) -> list[RemoteHit]: ...

    async def embed_anchors(
        self, endpoint: str, anchor_set: str, texts: Sequence[str], *, timeout: float | None
    ) -> FloatMatrix: ...

    def outcome(self, error: BaseException) -> tuple[SiloOutcome, str]: ...

    async def close(self) -> None: ...
