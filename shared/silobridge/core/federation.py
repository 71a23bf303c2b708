"""A federated answer as every party sees it: merged hits and one status per silo asked."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from silobridge.core.errors import InvalidArgument
from silobridge.core.hits import Hit


class SiloOutcome(enum.StrEnum):
    """How one silo's part of a federated query went (a slow or dead silo never hangs it)."""

    OK = "ok"
    TIMEOUT = "timeout"
    UNAVAILABLE = "unavailable"
    DENIED = "denied"
    ERROR = "error"


class MergeMode(enum.StrEnum):
    """How per-silo hit lists become one: calibrated z-scores, or reciprocal-rank fusion."""

    CALIBRATED = "calibrated"
    RRF = "rrf"


def merge_mode(name: str) -> MergeMode:
    """The merge mode called ``name``; ``InvalidArgument`` naming the choices otherwise."""
    try:
        return MergeMode(name)
    except ValueError:
        choices = ", ".join(mode.value for mode in MergeMode)
        raise InvalidArgument(f"unknown merge mode {name!r}; choose one of {choices}") from None


@dataclass(frozen=True)
class SiloStatus:
    """What one silo contributed to a federated query."""

    silo: str
    state: SiloOutcome
    message: str = ""
    adapter_id: str = ""  # "" when the spaces matched and no translation was needed
    hit_count: int = 0
    elapsed_ms: float = 0.0

    @property
    def ok(self) -> bool:
        return self.state is SiloOutcome.OK


@dataclass(frozen=True)
class FederatedAnswer:
    """Merged hits (each naming its silo) and the status of every silo asked."""

    hits: list[Hit]
    statuses: list[SiloStatus] = field(default_factory=list)
    source_space: str = ""

    @property
    def failed(self) -> list[SiloStatus]:
        """The silos that did not answer fully: the answer is partial when this is not empty."""
        return [status for status in self.statuses if not status.ok]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary: ``{"source_space", "hits": [...], "statuses": [...]}``."""
        return {
            "source_space": self.source_space,
            "hits": [
                {
                    "silo": hit.silo,
                    "doc_id": hit.doc_id,
                    "score": hit.score,
                    "merged_score": hit.merged_score,
                    "fields": dict(hit.fields),
                }
                for hit in self.hits
            ],
            "statuses": [
                {**asdict(status), "state": status.state.value} for status in self.statuses
            ],
        }


def _hit_dict(hit: Hit) -> dict[str, Any]:
    return {
        "silo": hit.silo,
        "doc_id": hit.doc_id,
        "score": hit.score,
        "merged_score": hit.merged_score,
        "fields": dict(hit.fields),
    }


@dataclass(frozen=True)
class FederatedBatchAnswer:
    """The merged hits of each query of a batch, in order, and one status per silo asked for
    the whole batch (a silo that failed, failed for every query of it)."""

    answers: list[list[Hit]]
    statuses: list[SiloStatus] = field(default_factory=list)
    source_space: str = ""

    @property
    def failed(self) -> list[SiloStatus]:
        """The silos that did not answer: every answer is partial when this is not empty."""
        return [status for status in self.statuses if not status.ok]

    @classmethod
    def joined(cls, parts: Sequence[FederatedBatchAnswer]) -> FederatedBatchAnswer:
        """Consecutive batches' answers as one: per silo its first failure, or else OK with
        the hits of every batch counted."""
        statuses: dict[str, SiloStatus] = {}
        for part in parts:
            for status in part.statuses:
                seen = statuses.get(status.silo)
                if seen is None or (seen.ok and not status.ok):
                    statuses[status.silo] = status
                elif seen.ok:
                    statuses[status.silo] = replace(
                        seen,
                        hit_count=seen.hit_count + status.hit_count,
                        elapsed_ms=seen.elapsed_ms + status.elapsed_ms,
                    )
        return cls(
            answers=[hits for part in parts for hits in part.answers],
            statuses=list(statuses.values()),
            source_space=parts[0].source_space if parts else "",
        )

    def answer(self, position: int) -> FederatedAnswer:
        """Query ``position`` as a single ``FederatedAnswer``, with the batch's statuses."""
        return FederatedAnswer(
            hits=self.answers[position], statuses=self.statuses, source_space=self.source_space
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"source_space", "answers": [{"hits": [...]}, ...], "statuses"}``."""
        return {
            "source_space": self.source_space,
            "answers": [{"hits": [_hit_dict(hit) for hit in hits]} for hits in self.answers],
            "statuses": [
                {**asdict(status), "state": status.state.value} for status in self.statuses
            ],
        }
