"""The queries that cross the wire, as domain values: to one silo, and to the federation."""

from __future__ import annotations

from dataclasses import dataclass

from silobridge.core.federation import MergeMode
from silobridge.core.vectors import WireVector


@dataclass(frozen=True)
class SignedQuery:
    """A client's signed query as it travels: the claims exactly as signed, and who signed them.

    ``claims`` stays the client's own bytes all the way to the silo; nobody re-encodes it
    (``silobridge.security.signed_query`` signs and verifies it).
    """

    claims: bytes
    signature: bytes
    certificate: bytes


@dataclass(frozen=True)
class SiloQuery:
    """A search of one silo: a vector in its space, or a signed query to translate and answer.

    For a forwarded federated query ``vector`` is the client's own vector in ``source_space``,
    exactly as signed, and the silo translates it with the signed adapter ``adapter_id``.
    """

    vector: WireVector
    k: int
    rerank_text: str = ""
    rerank_depth: int = 0
    signed: SignedQuery | None = None
    source_space: str = ""
    adapter_id: str = ""


@dataclass(frozen=True)
class FederatedQuery:
    """A client's query to the coordinator; ``silos`` empty means every silo it may query."""

    vector: WireVector
    source_space: str
    k: int
    silos: tuple[str, ...] = ()
    merge: MergeMode = MergeMode.CALIBRATED
    rerank_text: str = ""
    rerank_depth: int = 0
    signed: SignedQuery | None = None


@dataclass(frozen=True)
class SiloBatch:
    """A batch of queries to one silo under one client signature, as a coordinator forwards it:
    the client's vectors in ``source_space`` exactly as signed, translated by the silo itself
    with the signed adapter ``adapter_id`` (no re-ranking text in a batch)."""

    vectors: tuple[WireVector, ...]
    k: int
    signed: SignedQuery | None = None
    source_space: str = ""
    adapter_id: str = ""


@dataclass(frozen=True)
class FederatedBatch:
    """A client's batch of queries to the coordinator, one signature over all of them."""

    vectors: tuple[WireVector, ...]
    source_space: str
    k: int
    silos: tuple[str, ...] = ()
    merge: MergeMode = MergeMode.CALIBRATED
    signed: SignedQuery | None = None
