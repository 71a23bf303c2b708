"""What a silo's own policy tells callers: the fields it discloses, whether it takes query text."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DisclosurePolicy:
    """The public part of a silo's policy (Describe and ListSilos carry it; the report shows it)."""

    disclose_fields: tuple[str, ...]
    accept_query_text: bool
    accept_spaces: tuple[str, ...]
    max_k: int
