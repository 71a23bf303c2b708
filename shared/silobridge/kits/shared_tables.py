"""What every server's config has: ``[server]``'s shared keys, ``[tls]``, ``[audit]``,
``[metrics]``, and the denylist and per-peer limit both policies take."""

from __future__ import annotations

from collections.abc import Sequence

from silobridge.core.config import ServerSettings
from silobridge.kits.party import Links, Party
from silobridge.kits.render import Key, Table


def tls_table(party: Party) -> Table:
    return Table(
        "tls",
        "Mutual TLS: this participant's certificate and key, the consortium CA.",
        [
            Key(
                "cert",
                party.cert,
                f"Certificate of {party.spiffe_id}, signed by the CA.",
                active=True,
            ),
            Key(
                "key",
                party.key,
                "Private key (0600): made here, never leaves this machine.",
                active=True,
            ),
            Key("ca", party.ca, "The consortium CA certificate.", active=True),
        ],
    )


def audit_table(directory: str) -> Table:
    return Table(
        "audit",
        "The hash-chained audit log: every call, allowed or denied.",
        [
            Key("log", f"{directory}/audit.log", "The log file."),
            Key("key", "keys/audit.key", "Its checkpoint signing key (made on first start)."),
            Key("checkpoint_every", 100, "Lines between signed checkpoints."),
            Key("refusal_summary_seconds", 10.0, "Identical refusals summarised per this period."),
        ],
    )


METRICS_OFF = "off"


def metrics_tables(links: Links) -> list[Table]:
    """``[metrics]``, on by default in a kit; ``--metrics off`` leaves the table out."""
    if links.metrics == METRICS_OFF:
        return []
    return [_metrics_table(links)]


def _metrics_table(links: Links) -> Table:
    return Table(
        "metrics",
        "Prometheus metrics over plain HTTP: keep the port internal.",
        [
            Key(
                "listen",
                links.metrics or "127.0.0.1:9464",
                "host:port of /metrics (remove the table to turn metrics off).",
                active=True,
            ),
        ],
    )


def server_table(listen: str, keys: Sequence[Key]) -> Table:
    """``[server]``: where it listens, the role's own ``keys``, then what every server reads."""
    return Table(
        "server",
        "The gRPC server (mutual TLS only).",
        [
            Key("listen", listen, "Address to listen on; host:0 picks a free port.", active=True),
            *keys,
            Key(
                "workers",
                ServerSettings.workers,
                "Threads for CPU work; the event loop never blocks on it.",
            ),
            Key(
                "grace_seconds",
                ServerSettings.grace_seconds,
                "On SIGTERM, how long calls in flight may finish.",
            ),
            Key(
                "insecure",
                ServerSettings.insecure,
                "Plaintext without authentication: never outside a throwaway local test.",
            ),
        ],
    )


def denylist_key() -> Key:
    return Key(
        "denylist",
        "denylist.txt",
        "Certificates refused outright (serial or sha256 per line); none by default.",
        example=True,
    )


def peer_limit_keys() -> list[Key]:
    """The per-peer budget every server's gatekeeper applies before anything else."""
    return [
        Key("peer_rate_per_second", 1000.0, "Calls per second per calling peer (any RPC)."),
        Key("peer_burst", 2000, "Burst above that rate."),
    ]
