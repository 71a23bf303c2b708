"""After a cut-over (or a rollback of one): tell the coordinator the silo's primary space changed.

The silo registers again (the coordinator calls Describe back and records the new space and the
space it also serves), then pushes the anchor embeddings of its new space for every anchor set
the coordinator's adapters into or out of the old space were trained on, so adapters into the
new space can be trained. Until they are, the coordinator's adapters into the old space stay
usable: the silo lists the old space as one it also serves.
"""

from __future__ import annotations

import logging

from silobridge.core.spaces import SpaceDescriptor
from silobridge.embedding.embedders import Embedder
from silobridge.silo_agent.config import SiloConfig
from silobridge.silo_agent.registration import (
    advertise_address,
    link_client,
    push_anchor_embeddings,
    register_with_coordinator,
)

log = logging.getLogger(__name__)
LIST_TIMEOUT_S = 10.0


async def announce_primary(
    config: SiloConfig, bound_port: int, old: SpaceDescriptor, embedder: Embedder
) -> list[str]:
    """Re-register and push anchors in ``embedder``'s space; the anchor sets pushed."""
    if config.coordinator is None:
        return []
    await register_with_coordinator(config, advertise_address(config, bound_port))
    link = config.coordinator
    async with link_client(config, link) as hub:
        adapters = await hub.list_adapters(timeout=LIST_TIMEOUT_S)
    wanted = sorted(
        {
            (a.anchor_set, a.version)
            for a in adapters
            if old.fingerprint in (a.source.fingerprint, a.target.fingerprint)
        }
    )
    pushed = []
    for name, version in wanted:
        push = await push_anchor_embeddings(
            config, embedder, name, version, batch_size=config.limits.batch_size
        )
        log.info("pushed %d anchors of %s %s in %s", push.stored, name, version, push.space_id)
        pushed.append(f"{name} {version}")
    return pushed
