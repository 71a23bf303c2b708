"""What every servicer does around each call: a per-peer budget for every call before anything
else, refuse denylisted certificates, rate-limit askers, and leave an audit line for the outcome
(the gRPC boundary records every refusal; identical refusals are summarised, ``refusals``).
Each refusal is also told to an observer (the server's metrics), without who was refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from silobridge.audit.events import audit_event
from silobridge.audit.log import AuditLog, open_audit_log
from silobridge.core.config import AuditSettings
from silobridge.core.errors import PermissionDenied, ResourceExhausted
from silobridge.security.denylist import Denylist
from silobridge.security.identity import PeerIdentity
from silobridge.security.ratelimit import (
    DEFAULT_PEER_BURST,
    DEFAULT_PEER_RATE_PER_SECOND,
    RateLimiter,
)
from silobridge.security.refusals import DEFAULT_INTERVAL_SECONDS, RefusalSummary

log = logging.getLogger(__name__)

# Why the gatekeeper itself stopped a call (``RefusalObserver.stopped``).
PEER_RATE_LIMIT = "peer_rate_limit"  # the calling peer's per-call budget
RATE_LIMIT = "rate_limit"  # the asker's per-query budget
DENYLIST = "denylist"  # a denylisted certificate


class RefusalObserver(Protocol):
    """Told of refusals as they happen (the server's metrics); never of who was refused."""

    def refused(self, rpc: str, status: str) -> None:
        """A call (or one query of it) of ``rpc`` was refused with gRPC status ``status``."""
        ...

    def stopped(self, reason: str) -> None:
        """The gatekeeper's own check refused a call: ``PEER_RATE_LIMIT``, ``RATE_LIMIT`` or
        ``DENYLIST`` (the refusal itself is told to ``refused`` too, at the boundary)."""
        ...


class _Unobserved:
    def refused(self, rpc: str, status: str) -> None:
        pass

    def stopped(self, reason: str) -> None:
        pass


class Gatekeeper:
    """One per server. Thread-safe: its parts are."""

    def __init__(
        self,
        *,
        denylist: Denylist | None,
        limiter: RateLimiter,
        audit: AuditLog | None,
        peer_limiter: RateLimiter | None = None,
        refusal_summary_seconds: float = DEFAULT_INTERVAL_SECONDS,
    ) -> None:
        self.denylist = denylist
        self.limiter = limiter
        # Every call of a peer (its TLS identity), whatever the RPC and whether it is allowed:
        # spent before authorization, so refused calls cost the flooder, not the server.
        # (Not ``or``: an empty limiter has no keys, so it is falsy.)
        self.peer_limiter = (
            peer_limiter
            if peer_limiter is not None
            else RateLimiter(DEFAULT_PEER_RATE_PER_SECOND, DEFAULT_PEER_BURST)
        )
        self.audit = audit
        self.refusals = (
            RefusalSummary(audit.append, interval=refusal_summary_seconds)
            if audit is not None
            else None
        )
        # Replaced by the server when it serves metrics.
        self.observer: RefusalObserver = _Unobserved()

    @classmethod
    def open(
        cls,
        *,
        denylist: Path | None,
        rate_per_second: float,
        burst: int,
        audit: AuditSettings | None,
        peer_rate_per_second: float = DEFAULT_PEER_RATE_PER_SECOND,
        peer_burst: int = DEFAULT_PEER_BURST,
    ) -> Gatekeeper:
        log = None
        if audit is not None:
            log = open_audit_log(audit.log, audit.key, checkpoint_every=audit.checkpoint_every)
        return cls(
            denylist=Denylist(denylist) if denylist is not None else None,
            limiter=RateLimiter(rate_per_second, burst),
            audit=log,
            peer_limiter=RateLimiter(peer_rate_per_second, peer_burst),
            refusal_summary_seconds=(
                audit.refusal_summary_seconds if audit is not None else DEFAULT_INTERVAL_SECONDS
            ),
        )

    def admit_peer(self, peer: PeerIdentity) -> PeerIdentity:
        """The calling peer, once per call and before authorization: it spends one token of
        its per-peer budget (``ResourceExhausted`` when empty), then the denylist."""
        try:
            self.peer_limiter.check(peer.spiffe_id or "anonymous")
        except ResourceExhausted:
            self.observer.stopped(PEER_RATE_LIMIT)
            raise
        return self.admit(peer)

    def admit(self, caller: PeerIdentity) -> PeerIdentity:
        """The caller, unless its certificate is denylisted (``PermissionDenied``)."""
        if self.denylist is not None:
            try:
                self.denylist.check(caller)
            except PermissionDenied:
                self.observer.stopped(DENYLIST)
                raise
        return caller

    def limit(self, asker: PeerIdentity, cost: int = 1) -> None:
        """Spend ``cost`` tokens of ``asker``'s bucket, one per query (``ResourceExhausted``
        when it holds fewer)."""
        try:
            self.limiter.check(asker.spiffe_id or "anonymous", cost)
        except ResourceExhausted:
            self.observer.stopped(RATE_LIMIT)
            raise

    def record(
        self,
        who: PeerIdentity,
        rpc: str,
        *,
        allowed: bool,
        reason: str = "",
        silos: Sequence[str] = (),
        results: int | None = None,
        status: str = "",
        **extra: str | int | float | bool | None,
    ) -> None:
        """Append one audit line; never query text or vectors (``audit_event`` refuses them).

        A refusal identical to one written within the summary interval is counted instead, and
        written as one line with ``repeated`` when the interval ends (or at ``close``).
        ``status``: a refusal's gRPC status name, for the observer (``reason`` says it too).
        """
        if not allowed:
            self.observer.refused(rpc, status or "UNKNOWN")
        if self.audit is None:
            return
        event = audit_event(
            who=who, rpc=rpc, allowed=allowed, reason=reason, silos=silos, results=results, **extra
        )
        if not allowed and self.refusals is not None:
            self.refusals.record(event)
            return
        self.audit.append(event)

    def close(self) -> None:
        if self.refusals is not None:
            self.refusals.close()
        if self.audit is not None:
            self.audit.close()
