"""A search hit, the one shape it has from a silo's index to the client's table."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Hit:
    """One document found: the silo's opaque id, its score in the silo's space, the fields the
    silo disclosed, and (in a federated answer) the silo it came from and its merged score."""

    doc_id: str
    score: float
    fields: Mapping[str, str] = field(default_factory=dict)
    silo: str = ""
    merged_score: float = 0.0
