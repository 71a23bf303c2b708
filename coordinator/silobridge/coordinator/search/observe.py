"""What a federated search tells its observer (the server's metrics): each silo's outcome and
how long the fan-out took. The domain knows only this protocol; no metrics library here."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from silobridge.core.federation import SiloStatus

# What ``fanned_out`` is told a fan-out was for.
SEARCH = "search"  # one FederatedSearch: one call per routed silo (coalesced under load)
BATCH = "batch"  # one FederatedSearchBatch: one SearchBatch per routed silo


class SearchObserver(Protocol):
    def silo_answered(self, status: SiloStatus) -> None:
        """One silo's part of a query or batch, as its caller sees it (``elapsed_ms`` is 0
        where no call was made: a silo the policy denied, or no time left)."""
        ...

    def fanned_out(self, kind: str, seconds: float) -> None:
        """A fan-out of ``kind`` (``SEARCH``, ``BATCH``) ended after ``seconds``: from the first
        silo call sent to the last one settled."""
        ...


class Unobserved:
    """The observer of a coordinator that serves no metrics."""

    def silo_answered(self, status: SiloStatus) -> None:
        pass

    def fanned_out(self, kind: str, seconds: float) -> None:
        pass


def tell(
    observer: SearchObserver, kind: str, seconds: float, statuses: Iterable[SiloStatus]
) -> None:
    """Every silo's status, then the fan-out's time."""
    for status in statuses:
        observer.silo_answered(status)
    observer.fanned_out(kind, seconds)
