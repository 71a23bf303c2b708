"""The coordinator's fan-out metrics: each silo's outcome and call time, each fan-out's time, and
the coalesced calls to silos. ``SearchMetrics`` is the fan-out's ``SearchObserver``."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily
from prometheus_client.metrics_core import Metric

from silobridge.core.federation import SiloOutcome, SiloStatus

# A silo call is bounded by ``[server] silo_timeout_seconds`` (10 s by default).
CALL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
OUTCOMES = tuple(outcome.value for outcome in SiloOutcome)


class SearchMetrics:
    """Per-silo outcomes and latencies of federated queries and batches."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "silobridge_silo_outcomes",
            "Per-silo parts of federated queries and batches, by silo and outcome "
            f"({', '.join(OUTCOMES)}); a silo the policy denied counts without a call.",
            ["silo", "outcome"],
            registry=registry,
        )
        self.silo_seconds = Histogram(
            "silobridge_silo_call_duration_seconds",
            "Time of each call to a silo, from sending to its answer or failure.",
            ["silo"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )
        self.fanout_seconds = Histogram(
            "silobridge_fanout_duration_seconds",
            "Time of each fan-out, from the first silo call to the last settled, by kind "
            "(search, batch).",
            ["kind"],
            buckets=CALL_BUCKETS,
            registry=registry,
        )

    def silo_answered(self, status: SiloStatus) -> None:
        self.outcomes.labels(status.silo, status.state.value).inc()
        if status.elapsed_ms > 0:  # a call was made and timed
            self.silo_seconds.labels(status.silo).observe(status.elapsed_ms / 1000)

    def fanned_out(self, kind: str, seconds: float) -> None:
        self.fanout_seconds.labels(kind).observe(seconds)


class CoalescedCalls:
    """``SearchMany`` calls the coordinator sent and the queries they carried, read at scrape
    time from ``read`` (``(calls, queries)``)."""

    def __init__(self, read: Callable[[], tuple[int, int]]) -> None:
        self._read = read

    def collect(self) -> Iterable[Metric]:
        calls, queries = self._read()
        yield CounterMetricFamily(
            "silobridge_coalesced_calls",
            "SearchMany calls sent to silos: queries that waited behind busy calls, together.",
            value=calls,
        )
        yield CounterMetricFamily(
            "silobridge_coalesced_queries",
            "Queries carried by those SearchMany calls.",
            value=queries,
        )
