"""What a silo's own policy tells callers: the fields it discloses, whether it takes query text,
and what it keeps of, or answers about, the traffic it receives."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class DisclosurePolicy:
    """The public part of a silo's policy (Describe and ListSilos carry it; the report shows it)."""

    disclose_fields: tuple[str, ...]
    accept_query_text: bool
    accept_spaces: tuple[str, ...]
    max_k: int
    # [receiving] in silo.toml: whether it answers PreferAnchors (a coarse picture of its
    # topics), the in-memory pool of translated queries it keeps (0: none; each for
    # ``traffic_lifetime_s``, at most ``traffic_max_share`` of it per signer), whether it fits
    # a correction on that pool, and the querying models it runs itself.
    anchor_preferences: bool = False
    traffic_pool: int = 0
    traffic_lifetime_s: float = 0.0
    traffic_max_share: float = 0.0
    refine: bool = False
    local_models: tuple[str, ...] = field(default=())
