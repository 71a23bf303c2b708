"""Moving a silo to another embedding model: what the plan of a migration says."""

from __future__ import annotations

from dataclasses import dataclass

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
