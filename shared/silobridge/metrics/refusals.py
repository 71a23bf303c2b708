"""Refusal metrics, the gatekeeper's ``RefusalObserver``: every refused call by RPC and status,
and the refusals of the gatekeeper's own checks (rate limits, denylist). No label names a
caller: who was refused is the audit log's business."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter

from silobridge.metrics.audit import AuditMetrics
from silobridge.security.gatekeeper import DENYLIST, PEER_RATE_LIMIT, RATE_LIMIT, Gatekeeper

GATE_REASONS = (PEER_RATE_LIMIT, RATE_LIMIT, DENYLIST)


class RefusalMetrics:
    """``silobridge_refusals_total{rpc, code}`` and ``silobridge_gate_refusals_total{reason}``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.refusals = Counter(
            "silobridge_refusals",
            "Calls, or single queries of a call, refused and audited, by RPC and gRPC status "
            "(PERMISSION_DENIED: a policy, RESOURCE_EXHAUSTED: a rate or size limit).",
            ["rpc", "code"],
            registry=registry,
        )
        self.gate = Counter(
            "silobridge_gate_refusals",
            "Calls the gatekeeper's own checks refused, by reason (peer_rate_limit: the calling "
            "peer's budget, rate_limit: the asker's, denylist: a denylisted certificate).",
            ["reason"],
            registry=registry,
        )
        for reason in GATE_REASONS:
            self.gate.labels(reason)  # shown at 0 before the first refusal

    def refused(self, rpc: str, status: str) -> None:
        self.refusals.labels(rpc, status).inc()

    def stopped(self, reason: str) -> None:
        self.gate.labels(reason).inc()


def observe_gatekeeper(
    registry: CollectorRegistry, gatekeeper: Gatekeeper, recorded: Callable[[], int] | None = None
) -> RefusalMetrics:
    """Count ``gatekeeper``'s refusals and read its audit log into ``registry``; ``recorded``:
    the line of the newest head the coordinator holds (a silo's ``HeadAnchor``)."""
    refusals = RefusalMetrics(registry)
    gatekeeper.observer = refusals
    audit = gatekeeper.audit
    if audit is not None:
        registry.register(AuditMetrics(audit.progress, recorded))
    return refusals
