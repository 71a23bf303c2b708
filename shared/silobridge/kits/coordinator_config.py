"""``coordinator.toml`` of the coordinator's kit: every key the coordinator reads, documented."""

from __future__ import annotations

from silobridge.kits.party import Links, Party
from silobridge.kits.render import Key, Table
from silobridge.kits.shared_tables import (
    audit_table,
    denylist_key,
    metrics_tables,
    peer_limit_keys,
    server_table,
    tls_table,
)
from silobridge.security.identity import Role


def coordinator_tables(party: Party, links: Links) -> list[Table]:
    silos = party.spiffe(Role.SILO, "*")
    clients = party.spiffe(Role.CLIENT, "*")
    admin = party.spiffe(Role.CLIENT, links.admin)
    return [
        Table(
            "coordinator",
            "The consortium's coordinator.",
            [
                Key(
                    "name",
                    party.name,
                    f"Must equal the name in {party.cert} ({party.spiffe_id}).",
                    active=True,
                ),
                Key(
                    "state_dir",
                    "state",
                    "Silo registry, anchor sets, signed adapters: back it up.",
                    active=True,
                ),
                Key(
                    "signing_key",
                    "state/adapter-signing.key",
                    "The adapter signing key (0600); silos pin its .pub beside it.",
                    active=True,
                ),
            ],
        ),
        server_table(
            links.listen or "0.0.0.0:50050",
            [
                Key("train_workers", 1, "Adapter fits run at once."),
                Key("silo_timeout_seconds", 10.0, "Deadline of each call to a silo."),
                Key("max_k", 100, "Most hits per federated query."),
                Key(
                    "silo_calls_in_flight",
                    2,
                    "Search calls per silo at once; the queries waiting "
                    "behind them go together in one SearchMany (0: no coalescing).",
                ),
                Key("max_batch", 256, "Most queries per federated batch."),
                Key(
                    "probe_cache_seconds",
                    5.0,
                    "How long one health probe per silo serves listings.",
                ),
                Key("anchor_stream_seconds", 1800.0, "Longest anchor stream to a silo."),
            ],
        ),
        tls_table(party),
        Table(
            "training",
            "How adapters are fitted.",
            [
                Key("kind", "auto", "Adapter kind: auto, procrustes, affine, mlp, local."),
                Key("seed", 0, "Random seed of the fits."),
                Key("mlp_epochs", 300, "Epochs of an MLP adapter."),
                Key(
                    "min_heldout_ndcg",
                    0.01,
                    "Adapters below this held-out nDCG@10 are refused "
                    "(raise it for real models: they fit 0.5 and more).",
                ),
            ],
        ),
        Table(
            "policy",
            "Who may do what here (a silo's own policy still has the last word).",
            [
                Key("register", [silos], "Silos that may register themselves.", active=True),
                Key("anchors", [silos], "Who may push anchor vectors.", active=True),
                Key("adapters", [silos], "Who may fetch signed adapters.", active=True),
                Key("list", [clients, silos], "Who may list silos and adapters.", active=True),
                Key("train", [admin], "Who may train adapters.", active=True),
                Key("manage", [admin], "Who may disable, enable and remove silos.", active=True),
                Key(
                    "require_signed_queries",
                    True,
                    "Refuse federated queries the client did not sign.",
                ),
                denylist_key(),
                Key("rate_per_second", 50.0, "Federated queries per second per caller."),
                Key("burst", 100, "Burst above that rate."),
                *peer_limit_keys(),
            ],
        ),
        Table(
            "policy.query",
            'Who may query which silo; "*" applies to silos without a row.',
            [
                Key("*", [clients], "Every member organization's clients.", active=True),
            ],
            open=True,
        ),
        audit_table("state/audit"),
        *metrics_tables(links),
    ]
