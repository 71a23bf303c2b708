"""Moving a silo to another embedding model: its plan, commands, states and status."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from silobridge.core.spaces import SpaceDescriptor


@dataclass(frozen=True)
class MigrationPlan:
    """What re-encoding the silo with ``target``'s model would take; measured, nothing changed."""

    current: SpaceDescriptor
    target: SpaceDescriptor
    documents: int
    sample_documents: int
    sample_seconds: float
    documents_per_second: float
    estimated_seconds: float
    disk_bytes: int


class MigrationCommand(StrEnum):
    """What an admin asks of a migration (``silobridge silo migrate <command>``)."""

    STATUS = "status"
    START = "start"
    PAUSE = "pause"
    RESUME = "resume"
    CUTOVER = "cutover"
    ROLLBACK = "rollback"
    FINISH = "finish"


class MigrationState(StrEnum):
    """Where a migration stands (docs/MIGRATION.md draws the machine)."""

    NONE = "none"  # no migration: one space, one index
    REENCODING = "reencoding"  # both spaces served; documents re-encoded in the background
    PAUSED = "paused"  # as reencoding, with the background re-encode stopped
    READY = "ready"  # every document re-encoded: cut-over may be asked for
    CUT_OVER = "cut_over"  # the new space is primary; the old one kept until finish


@dataclass(frozen=True)
class MigrationStatus:
    """A migration's state and progress, as ``silo migrate status`` prints it."""

    state: MigrationState
    source: SpaceDescriptor  # the space the silo was built in
    target: SpaceDescriptor | None  # the space it moves to (None: no migration)
    primary: SpaceDescriptor  # the space it answers in, registers under and embeds with
    documents: int
    reencoded: int
    documents_per_second: float = 0.0  # measured re-encode rate (0 until measured)
    eta_seconds: float = 0.0
    cpu_share: float = 0.0
    anchors: int = 0  # in-domain anchors the adapters were fitted on
    # Held-out nDCG@10 of each adapter finding its anchor's twin among the others.
    forward_ndcg: float = 0.0  # target -> source (new-space queries on the old index)
    backward_ndcg: float = 0.0  # source -> target (old-space queries on re-encoded documents)
    # Held-out: share of the native top 10 that the adapter route finds.
    adapter_agreement: float = 0.0
    # Expected share of native quality mixed search gives now (re-encoded share counted native).
    retention_estimate: float = 0.0
    message: str = ""  # what the command did, and what is chained or to train

    @property
    def fraction(self) -> float:
        return self.reencoded / self.documents if self.documents else 1.0
