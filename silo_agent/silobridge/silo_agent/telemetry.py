"""What a silo's metrics read and are told: sizes and migration progress (read at each scrape),
live writes, refusals and the audit log."""

from __future__ import annotations

from silobridge.metrics.exporter import ServerMetrics, open_metrics
from silobridge.metrics.refusals import observe_gatekeeper
from silobridge.metrics.silo import GenerationSize, SiloMetrics, SiloReading, WriteMetrics
from silobridge.security.gatekeeper import Gatekeeper
from silobridge.silo_agent.admin import SiloAdmin
from silobridge.silo_agent.audit_anchor import HeadAnchor
from silobridge.silo_agent.migration.engine import MigrationEngine
from silobridge.silo_agent.service import SiloService


def silo_metrics(
    service: SiloService,
    gatekeeper: Gatekeeper,
    admin: SiloAdmin,
    migration: MigrationEngine,
    heads: HeadAnchor | None,
) -> ServerMetrics | None:
    """The silo's metrics, its parts observed, when ``[metrics]`` is on (else ``None``)."""
    metrics = open_metrics(service.config.metrics)
    if metrics is None:
        return None
    registry = metrics.registry
    observe_gatekeeper(
        registry, gatekeeper, (lambda: heads.recorded_covers) if heads is not None else None
    )
    admin.observer = WriteMetrics(registry)
    registry.register(SiloMetrics(lambda: read_silo(service, migration)))
    return metrics


def read_silo(service: SiloService, migration: MigrationEngine) -> SiloReading:
    """The silo's sizes and migration progress now (from the metrics endpoint's thread)."""
    data = service.data
    target = data.target
    sizes = []
    for generation in data.generations():
        index, overlay = generation.state()
        sizes.append(
            GenerationSize(
                space=generation.space.space_id,
                slot="target" if generation is target else "source",
                vectors=index.count if index is not None else 0,
                pending=overlay.size,
            )
        )
    return SiloReading(data.count(), tuple(sizes), migration.status())
