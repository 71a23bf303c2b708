"""A silo's metrics: documents and index sizes per generation, the migration's progress (read at
scrape time from a ``SiloReading``), and live writes as they happen (``WriteMetrics``, the
admin's ``WriteObserver``)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from silobridge.core.migration import MigrationState, MigrationStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GenerationSize:
    """One generation (a space's vectors) as the silo serves it now."""

    space: str
    slot: str  # "source", or "target" while migrating
    vectors: int  # in its saved index
    pending: int  # changes served beside the index until the next rebuild folds them in


@dataclass(frozen=True)
class SiloReading:
    documents: int
    generations: tuple[GenerationSize, ...]
    migration: MigrationStatus


class SiloMetrics:
    """A collector calling ``read`` at each scrape; a failed read leaves its metrics out of that
    scrape (logged) rather than failing the whole page."""

    def __init__(self, read: Callable[[], SiloReading]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        try:
            reading = self._read()
        except Exception:  # a scrape during shutdown, a busy docstore: the rest still shows
            log.warning("could not read the silo's sizes for metrics", exc_info=True)
            return
        yield GaugeMetricFamily(
            "silobridge_documents", "Documents in the silo's docstore.", value=reading.documents
        )
        vectors = GaugeMetricFamily(
            "silobridge_index_vectors",
            "Vectors in each generation's saved index, by space and slot (source, target).",
            labels=["space", "slot"],
        )
        pending = GaugeMetricFamily(
            "silobridge_index_pending_changes",
            "Rows written or deleted since each generation's index was built (searched beside "
            "it until a rebuild folds them in).",
            labels=["space", "slot"],
        )
        for generation in reading.generations:
            labels = [generation.space, generation.slot]
            vectors.add_metric(labels, generation.vectors)
            pending.add_metric(labels, generation.pending)
        yield vectors
        yield pending
        yield from _migration(reading.migration)


def _migration(status: MigrationStatus) -> Iterable[Metric]:
    state = GaugeMetricFamily(
        "silobridge_migration_state",
        "1 for the state the silo's model migration is in (none: no migration), else 0.",
        labels=["state"],
    )
    for each in MigrationState:
        state.add_metric([each.value], 1.0 if each is status.state else 0.0)
    yield state
    yield GaugeMetricFamily(
        "silobridge_migration_documents",
        "Documents the migration re-encodes (all of the docstore).",
        value=status.documents,
    )
    yield GaugeMetricFamily(
        "silobridge_migration_reencoded",
        "Documents already re-encoded with the new model.",
        value=status.reencoded,
    )
    yield GaugeMetricFamily(
        "silobridge_migration_progress_ratio",
        "Share of the documents re-encoded (1 without a migration).",
        value=status.fraction,
    )
    yield GaugeMetricFamily(
        "silobridge_migration_reencode_rate",
        "Documents re-encoded per second, measured (0 while not running).",
        value=status.documents_per_second,
    )


CHANGES = ("inserted", "updated", "unchanged", "deleted")


class WriteMetrics:
    """``silobridge_documents_written_total{change}``: live writes and deletes, once durable."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.documents = Counter(
            "silobridge_documents_written",
            "Documents of live writes (silo ingest --live) and deletes, once durable, by change "
            f"({', '.join(CHANGES)}).",
            ["change"],
            registry=registry,
        )
        for change in CHANGES:
            self.documents.labels(change)  # shown at 0 before the first write

    def written(self, inserted: int, updated: int, unchanged: int) -> None:
        self.documents.labels("inserted").inc(inserted)
        self.documents.labels("updated").inc(updated)
        self.documents.labels("unchanged").inc(unchanged)

    def deleted(self, count: int) -> None:
        self.documents.labels("deleted").inc(count)
