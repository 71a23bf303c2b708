"""``[receiving]`` in ``silo.toml``: the receiving-side steps a silo applies to translated queries.

```toml
[receiving]
hubness = true              # hubness correction of queries that arrive through an adapter
hubness_k = 10              # reference neighbours per document
hubness_depth = 100         # candidates re-scored per query (at least k)
hubness_off_for = []        # source space ids to answer without it
local_models = []           # model specs the silo also runs, to fit its own adapters from
local_fit_sample = 4096     # own documents embedded per local model for that fit
traffic_pool = 0            # translated queries kept (in memory) as the hubness reference; 0: none
traffic_max_share = 0.05    # of the pool one signer may hold
traffic_lifetime_s = 3600   # each kept query is dropped after this long
traffic_min = 1000          # queries in the pool before it replaces the anchors as reference
traffic_refresh = 500       # new queries before the correction is rebuilt from the pool
refine = false              # fit a correction after the adapter on the pool (label-free guard)
refine_lambda = 30.0        # its pull towards the identity (larger: a smaller correction)
anchor_preferences = false  # answer PreferAnchors: which texts of a public pool lie near this
                            # silo's documents (a coarse picture of its topics; never a
                            # document, vector or score)
```
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from silobridge.adapters.hubness import DEFAULT_K
from silobridge.core.config import Section
from silobridge.core.errors import ConfigError

SECTION = "receiving"
# Re-scoring more candidates than this costs more than a search; refused in the config.
MAX_HUBNESS_DEPTH = 1_000
# A local fit on fewer documents than this is noise (as the migration's own fit).
MIN_LOCAL_FIT_SAMPLE = 64
# Translated queries kept per source space at most (about 1.5 KiB each at 384 dimensions).
MAX_TRAFFIC_POOL = 100_000


@dataclass(frozen=True)
class ReceivingSettings:
    hubness: bool = True
    hubness_k: int = DEFAULT_K
    hubness_depth: int = 100
    hubness_off_for: tuple[str, ...] = ()
    local_models: tuple[str, ...] = ()
    local_fit_sample: int = 4096
    traffic_pool: int = 0
    traffic_max_share: float = 0.05
    traffic_lifetime_s: float = 3600.0
    traffic_min: int = 1000
    traffic_refresh: int = 500
    refine: bool = False
    refine_lambda: float = 30.0
    anchor_preferences: bool = False

    def hubness_for(self, source_space: str) -> bool:
        """Whether queries translated from ``source_space`` are hubness-corrected here."""
        return self.hubness and source_space not in self.hubness_off_for


def receiving_settings(path: Path, doc: Mapping[str, Any]) -> ReceivingSettings:
    """The ``[receiving]`` table of ``doc`` (defaults where it is absent)."""
    section = Section.of(path, doc, SECTION)
    settings = ReceivingSettings(
        hubness=section.get("hubness", bool, ReceivingSettings.hubness),
        hubness_k=section.positive("hubness_k", ReceivingSettings.hubness_k),
        hubness_depth=section.positive("hubness_depth", ReceivingSettings.hubness_depth),
        hubness_off_for=section.strings("hubness_off_for"),
        local_models=section.strings("local_models"),
        local_fit_sample=section.positive("local_fit_sample", ReceivingSettings.local_fit_sample),
        traffic_pool=section.get("traffic_pool", int, ReceivingSettings.traffic_pool),
        traffic_max_share=section.get(
            "traffic_max_share", float, ReceivingSettings.traffic_max_share
        ),
        traffic_lifetime_s=section.get(
            "traffic_lifetime_s", float, ReceivingSettings.traffic_lifetime_s
        ),
        traffic_min=section.positive("traffic_min", ReceivingSettings.traffic_min),
        traffic_refresh=section.positive("traffic_refresh", ReceivingSettings.traffic_refresh),
        refine=section.get("refine", bool, ReceivingSettings.refine),
        refine_lambda=section.get("refine_lambda", float, ReceivingSettings.refine_lambda),
        anchor_preferences=section.get(
            "anchor_preferences", bool, ReceivingSettings.anchor_preferences
        ),
    )
    section.finish()
    if settings.hubness_depth > MAX_HUBNESS_DEPTH:
        raise ConfigError(
            f"{path}: [{SECTION}] hubness_depth must be at most {MAX_HUBNESS_DEPTH}, "
            f"got {settings.hubness_depth}"
        )
    where = f"{path}: [{SECTION}]"
    if not 0 <= settings.traffic_pool <= MAX_TRAFFIC_POOL:
        raise ConfigError(f"{where} traffic_pool must be between 0 and {MAX_TRAFFIC_POOL}")
    if not 0 < settings.traffic_max_share <= 1:
        raise ConfigError(f"{where} traffic_max_share must be in (0, 1]")
    if not settings.traffic_lifetime_s > 0:
        raise ConfigError(f"{where} traffic_lifetime_s must be positive")
    if settings.refine and settings.traffic_pool == 0:
        raise ConfigError(
            f"{where} refine = true is fitted on the traffic pool: set traffic_pool too "
            f"(at least traffic_min = {settings.traffic_min})"
        )
    if not (math.isfinite(settings.refine_lambda) and settings.refine_lambda >= 0):
        raise ConfigError(f"{where} refine_lambda must be a finite number >= 0")
    if settings.local_fit_sample < MIN_LOCAL_FIT_SAMPLE:
        raise ConfigError(
            f"{path}: [{SECTION}] local_fit_sample must be at least {MIN_LOCAL_FIT_SAMPLE}, "
            f"got {settings.local_fit_sample}"
        )
    return settings
