"""Audit log metrics, read at scrape time: lines written, the newest signed checkpoint and its
age, and (at a silo) the newest checkpoint head its coordinator holds."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.metrics_core import Metric

from silobridge.audit.progress import AuditProgress


class AuditMetrics:
    """A collector over ``progress`` (the log's ``AuditLog.progress``) and, where the server
    sends its heads out, ``recorded`` (the line the acknowledged head covers)."""

    def __init__(
        self,
        progress: Callable[[], AuditProgress],
        recorded: Callable[[], int] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._progress = progress
        self._recorded = recorded
        self._clock = clock

    def collect(self) -> Iterable[Metric]:
        progress = self._progress()
        yield CounterMetricFamily(
            "silobridge_audit_lines",
            "Audit log lines this process appended (events and checkpoints).",
            value=progress.written,
        )
        yield GaugeMetricFamily(
            "silobridge_audit_log_lines", "Lines in the audit log.", value=progress.lines
        )
        yield GaugeMetricFamily(
            "silobridge_audit_checkpointed_line",
            "The line the newest signed checkpoint covers (0: none yet).",
            value=progress.checkpointed,
        )
        if progress.checkpoint_unix is not None:
            yield GaugeMetricFamily(
                "silobridge_audit_checkpoint_age_seconds",
                "Seconds since the newest signed checkpoint (absent before the first).",
                value=max(0.0, self._clock() - progress.checkpoint_unix),
            )
        if self._recorded is not None:
            yield GaugeMetricFamily(
                "silobridge_audit_head_recorded_line",
                "The line the newest checkpoint head the coordinator acknowledged covers.",
                value=self._recorded(),
            )
