"""Documents as a silo's admins write them, and what a live write or delete reports back."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Document:
    """One document: its id (unique in the silo), its text and string metadata."""

    doc_id: str
    text: str
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteReceipt:
    """A durable write of one batch: what it did, and how many documents the silo now holds."""

    inserted: int
    updated: int
    unchanged: int
    document_count: int


@dataclass(frozen=True)
class DeleteReceipt:
    """A durable delete: how many were removed, the requested ids not held, the new count."""

    deleted: int
    missing: tuple[str, ...]
    document_count: int
