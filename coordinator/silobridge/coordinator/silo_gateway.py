"""How the coordinator reaches silos (a protocol; gRPC in ``silo_links``) and how a failure reads.

The gateway raises ``SiloBridgeError``s, so the domain turns a failed call into a per-silo
outcome without knowing the transport, and a test double exercises the same mapping.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from silobridge.core.errors import ErrorCode, SiloBridgeError
from silobridge.core.federation import SiloOutcome
from silobridge.core.hits import Hit
from silobridge.core.listings import AnchorSetRef, PreferenceRequest, SiloDescription
from silobridge.core.queries import SiloBatch, SiloQuery
from silobridge.core.spaces import FloatMatrix

log = logging.getLogger(__name__)

OUTCOME_FOR_CODE: Mapping[ErrorCode, SiloOutcome] = {
    ErrorCode.DEADLINE_EXCEEDED: SiloOutcome.TIMEOUT,
    ErrorCode.UNAVAILABLE: SiloOutcome.UNAVAILABLE,
    ErrorCode.PERMISSION_DENIED: SiloOutcome.DENIED,
}


class SiloGateway(Protocol):
    """Calls to one silo by endpoint; failures raise ``SiloBridgeError`` (or ``TimeoutError``).

    ``expect`` is the SPIFFE id the silo at ``endpoint`` must hold (its registered identity): a
    server with another certificate is refused before anything is sent (``Unavailable``).
    """

    async def describe(self, endpoint: str, *, expect: str, timeout: float) -> SiloDescription: ...

    async def search(
        self, endpoint: str, query: SiloQuery, *, expect: str, timeout: float
    ) -> list[Hit]: ...

    async def search_batch(
        self, endpoint: str, batch: SiloBatch, *, expect: str, timeout: float
    ) -> list[list[Hit]]:
        """One call for a whole batch: one hit list per vector, in order."""
        ...

    async def search_many(
        self, endpoint: str, queries: list[SiloQuery], *, expect: str, timeout: float
    ) -> list[list[Hit] | SiloBridgeError]:
        """One call for several separate queries: per query its hits or its own refusal."""
        ...

    async def embed_anchors(
        self,
        endpoint: str,
        anchors: AnchorSetRef,
        *,
        expect: str,
        timeout: float | None,
    ) -> FloatMatrix:
        """The silo's vectors of ``anchors``, which it fetches from the coordinator and checks
        by hash itself (it embeds no texts sent to it)."""
        ...

    async def prefer_anchors(
        self,
        endpoint: str,
        request: PreferenceRequest,
        *,
        expect: str,
        timeout: float | None,
    ) -> list[int]:
        """The positions of the silo's preferred texts of a public pool, best first (it
        fetches and checks the pool by hash itself)."""
        ...

    async def close(self) -> None: ...


def outcome_of(error: BaseException) -> tuple[SiloOutcome, str]:
    """How a failed silo call shows in the caller's per-silo status: an outcome and why."""
    if isinstance(error, SiloBridgeError):
        outcome = OUTCOME_FOR_CODE.get(error.code, SiloOutcome.ERROR)
        if error.status_name:
            # "PERMISSION_DENIED: <the silo's words>": the silo's address is not the asker's
            # business (it may not be allowed to list silos), so only its own details go back.
            return outcome, f"{error.status_name}: {error.peer_details}".rstrip(": ")
        return outcome, error.message
    if isinstance(error, TimeoutError):
        return SiloOutcome.TIMEOUT, "no answer within the deadline"
    log.warning("a silo call failed unexpectedly", exc_info=error)
    return SiloOutcome.ERROR, "the silo call failed; the coordinator logged the details"
