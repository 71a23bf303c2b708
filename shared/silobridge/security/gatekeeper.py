"""What every servicer does around each call: refuse denylisted certificates, rate-limit askers,
and leave an audit line for the outcome (the gRPC boundary records every refusal).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from silobridge.audit.events import audit_event
from silobridge.audit.log import AuditLog, open_audit_log
from silobridge.core.config import AuditSettings
from silobridge.security.denylist import Denylist
from silobridge.security.identity import PeerIdentity
from silobridge.security.ratelimit import RateLimiter

log = logging.getLogger(__name__)


class Gatekeeper:
    """One per server. Thread-safe: its parts are."""

    def __init__(
        self,
        *,
        denylist: Denylist | None,
        limiter: RateLimiter,
        audit: AuditLog | None,
    ) -> None:
        self.denylist = denylist
        self.limiter = limiter
        self.audit = audit

    @classmethod
    def open(
        cls,
        *,
        denylist: Path | None,
        rate_per_second: float,
        burst: int,
        audit: AuditSettings | None,
    ) -> Gatekeeper:
        log = None
        if audit is not None:
            log = open_audit_log(audit.log, audit.key, checkpoint_every=audit.checkpoint_every)
        return cls(
            denylist=Denylist(denylist) if denylist is not None else None,
            limiter=RateLimiter(rate_per_second, burst),
            audit=log,
        )

    def admit(self, caller: PeerIdentity) -> PeerIdentity:
        """The caller, unless its certificate is denylisted (``PermissionDenied``)."""
        if self.denylist is not None:
            self.denylist.check(caller)
        return caller

    def limit(self, asker: PeerIdentity) -> None:
        """Spend one token of ``asker``'s bucket (``ResourceExhausted`` when empty)."""
        self.limiter.check(asker.spiffe_id or "anonymous")

    def record(
        self,
        who: PeerIdentity,
        rpc: str,
        *,
        allowed: bool,
        reason: str = "",
        silos: Sequence[str] = (),
        results: int | None = None,
        **extra: str | int | float | bool | None,
    ) -> None:
        """Append one audit line; never query text or vectors (``audit_event`` refuses them)."""
        if self.audit is None:
            return
        event = audit_event(
            who=who, rpc=rpc, allowed=allowed, reason=reason, silos=silos, results=results, **extra
        )
        self.audit.append(event)

    def close(self) -> None:
        if self.audit is not None:
            self.audit.close()
