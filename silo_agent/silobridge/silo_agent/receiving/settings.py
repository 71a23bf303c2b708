"""``[receiving]`` in ``silo.toml``: the receiving-side steps a silo applies to translated queries.

```toml
[receiving]
hubness = true              # hubness correction of queries that arrive through an adapter
hubness_k = 10              # reference neighbours per document
hubness_depth = 100         # candidates re-scored per query (at least k)
hubness_off_for = []        # source space ids to answer without it
local_models = []           # model specs the silo also runs, to fit its own adapters from
local_fit_sample = 4096     # own documents embedded per local model for that fit
```
"""

from __future__ import annotations

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


@dataclass(frozen=True)
class ReceivingSettings:
    hubness: bool = True
    hubness_k: int = DEFAULT_K
    hubness_depth: int = 100
    hubness_off_for: tuple[str, ...] = ()
    local_models: tuple[str, ...] = ()
    local_fit_sample: int = 4096

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
    )
    section.finish()
    if settings.hubness_depth > MAX_HUBNESS_DEPTH:
        raise ConfigError(
            f"{path}: [{SECTION}] hubness_depth must be at most {MAX_HUBNESS_DEPTH}, "
            f"got {settings.hubness_depth}"
        )
    if settings.local_fit_sample < MIN_LOCAL_FIT_SAMPLE:
        raise ConfigError(
            f"{path}: [{SECTION}] local_fit_sample must be at least {MIN_LOCAL_FIT_SAMPLE}, "
            f"got {settings.local_fit_sample}"
        )
    return settings
