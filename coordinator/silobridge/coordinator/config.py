"""The coordinator's configuration (``coordinator.toml``): storage, server, TLS, training, policy.

Policy rules fail closed: an action whose rule list is absent or empty is denied to everyone. A
rule is a glob over the caller's SPIFFE id (``spiffe://demo/client/*``), ``org:<O>`` or
``org:<O>/<role>`` (see ``silobridge.security.rules``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from silobridge.core.config import (
    AuditSettings,
    MetricsSettings,
    Section,
    ServerSettings,
    TlsFiles,
    audit_settings,
    load_toml,
    metrics_settings,
    refuse_unknown_sections,
    server_basics,
    tls_from_config,
)
from silobridge.core.errors import ConfigError
from silobridge.security.identity import PeerIdentity
from silobridge.security.ratelimit import DEFAULT_PEER_BURST, DEFAULT_PEER_RATE_PER_SECOND
from silobridge.security.rules import RulePolicy, matches_any, rules_of

# Actions of the consortium policy; every RPC but FederatedSearch (whose rules are per silo,
# ``[policy.query]``) checks one, in ``CoordinatorService``.
# ``manage``: disable, enable and remove silos (``silobridge coordinator silo ...``).
ACTIONS = ("register", "list", "anchors", "adapters", "train", "manage")
# Key of ``[policy.query]`` that applies to silos without an entry of their own.
DEFAULT_SILO = "*"


DEFAULT_LISTEN = "127.0.0.1:50050"


@dataclass(frozen=True)
class CoordinatorServerSettings(ServerSettings):
    listen: str = DEFAULT_LISTEN
    # Adapter fits run here, one at a time by default: they are CPU-heavy and rare.
    train_workers: int = 1
    # Per-silo deadline when the caller set none; a caller's own deadline always wins if sooner.
    silo_timeout_seconds: float = 10.0
    max_k: int = 100
    # Search calls in flight to one silo; queries beyond wait and go together in one SearchMany
    # call (each still signed, checked and audited on its own). 0: every query its own call.
    silo_calls_in_flight: int = 2
    # Queries in one FederatedSearchBatch; a larger batch is refused (RESOURCE_EXHAUSTED).
    max_batch: int = 256
    # One Describe of a silo answers every ListSilos for this long (0: probe at every listing).
    probe_cache_seconds: float = 5.0
    # A SubmitAnchorEmbeddings stream must end within this long, however slowly it trickles.
    anchor_stream_seconds: float = 1800.0


@dataclass(frozen=True)
class TrainingSettings:
    kind: str = "auto"
    seed: int = 0
    mlp_epochs: int = 300
    # An adapter whose held-out nDCG@10 on the anchors is below this is refused, not signed:
    # it would map queries to noise (or was fitted on poisoned anchor vectors). The default only
    # refuses adapters no better than nothing (the toy static-64 model fits ~0.03 on synthetic
    # anchors); a consortium of real models should raise it (real pairs fit 0.5 and more).
    min_heldout_ndcg: float = 0.01


@dataclass(frozen=True)
class CoordinatorPolicy(RulePolicy):
    """Who may do what (``rules``: action -> rules). A silo's own policy still has the last word."""

    # Silo name (or ``*``) -> rules of who may query it. A silo's own entry replaces ``*``.
    query: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Refuse federated queries the client did not sign (a silo demanding signatures would
    # refuse them anyway; this says so before any fan-out).
    require_signed: bool = True
    # Certificates refused outright (serials or sha256 fingerprints, one per line).
    denylist: Path | None = None
    # Per caller identity, on FederatedSearch: beyond it RESOURCE_EXHAUSTED, audited.
    rate_per_second: float = 50.0
    burst: int = 100
    # Per calling peer (its certificate's identity), every RPC, spent before authorization.
    peer_rate_per_second: float = DEFAULT_PEER_RATE_PER_SECOND
    peer_burst: int = DEFAULT_PEER_BURST

    def may_query(self, identity: PeerIdentity, silo: str) -> bool:
        rules = self.query.get(silo, self.query.get(DEFAULT_SILO, ()))
        return matches_any(identity, rules)


@dataclass(frozen=True)
class CoordinatorConfig:
    source: Path
    name: str
    state_dir: Path
    signing_key: Path
    server: CoordinatorServerSettings
    tls: TlsFiles | None
    training: TrainingSettings
    policy: CoordinatorPolicy
    audit: AuditSettings
    # Off unless ``[metrics] listen`` names where to serve them.
    metrics: MetricsSettings = field(default_factory=MetricsSettings)


def load_coordinator_config(path: Path) -> CoordinatorConfig:
    """Read and check ``coordinator.toml``; every problem is a ConfigError naming the key."""
    path = path.resolve()
    doc = load_toml(path)
    refuse_unknown_sections(
        path, doc, {"coordinator", "server", "tls", "training", "policy", "audit", "metrics"}
    )

    main = Section.of(path, doc, "coordinator")
    name = main.get("name", str, "coordinator")
    state_dir = main.path("state_dir", default="state")
    signing_key = main.path("signing_key", default=str(state_dir / "adapter-signing.key"))
    main.finish()

    srv = Section.of(path, doc, "server")
    timeout = srv.get("silo_timeout_seconds", float, CoordinatorServerSettings.silo_timeout_seconds)
    if not timeout > 0:
        raise ConfigError(f"{path}: [server] silo_timeout_seconds must be positive")
    server = CoordinatorServerSettings(
        **server_basics(srv, default_listen=DEFAULT_LISTEN),
        train_workers=srv.positive("train_workers", CoordinatorServerSettings.train_workers),
        silo_timeout_seconds=timeout,
        max_k=srv.positive("max_k", CoordinatorServerSettings.max_k),
        silo_calls_in_flight=srv.get(
            "silo_calls_in_flight", int, CoordinatorServerSettings.silo_calls_in_flight
        ),
        max_batch=srv.positive("max_batch", CoordinatorServerSettings.max_batch),
        probe_cache_seconds=srv.get(
            "probe_cache_seconds", float, CoordinatorServerSettings.probe_cache_seconds
        ),
        anchor_stream_seconds=srv.get(
            "anchor_stream_seconds", float, CoordinatorServerSettings.anchor_stream_seconds
        ),
    )
    if server.silo_calls_in_flight < 0:
        raise ConfigError(f"{path}: [server] silo_calls_in_flight must not be negative")
    if not server.probe_cache_seconds >= 0:
        raise ConfigError(f"{path}: [server] probe_cache_seconds must not be negative")
    if not server.anchor_stream_seconds > 0:
        raise ConfigError(f"{path}: [server] anchor_stream_seconds must be positive")
    srv.finish()

    tls = tls_from_config(path, doc, insecure=server.insecure, insecure_key="server.insecure")

    trn = Section.of(path, doc, "training")
    training = TrainingSettings(
        kind=trn.get("kind", str, TrainingSettings.kind),
        seed=trn.get("seed", int, TrainingSettings.seed),
        mlp_epochs=trn.positive("mlp_epochs", TrainingSettings.mlp_epochs),
        min_heldout_ndcg=trn.get("min_heldout_ndcg", float, TrainingSettings.min_heldout_ndcg),
    )
    if not 0.0 <= training.min_heldout_ndcg <= 1.0:
        raise ConfigError(
            f"{path}: [training] min_heldout_ndcg must be between 0 and 1 (an nDCG), "
            f"got {training.min_heldout_ndcg}"
        )
    trn.finish()

    raw_policy = doc.get("policy", {})
    if not isinstance(raw_policy, dict):
        raise ConfigError(f"{path}: [policy] must be a table")
    raw_query = raw_policy.get("query", {})
    if not isinstance(raw_query, dict):
        raise ConfigError(f"{path}: [policy.query] must be a table of silo = [rules]")
    pol = Section(path, "policy", {k: v for k, v in raw_policy.items() if k != "query"})
    rules = {action: rules_of(pol, action) for action in ACTIONS}
    require_signed = pol.get("require_signed_queries", bool, True)
    denylist = pol.path("denylist") if "denylist" in raw_policy else None
    rate = pol.get("rate_per_second", float, CoordinatorPolicy.rate_per_second)
    if not rate > 0:
        raise ConfigError(f"{path}: [policy] rate_per_second must be positive")
    burst = pol.positive("burst", CoordinatorPolicy.burst)
    peer_rate = pol.get("peer_rate_per_second", float, CoordinatorPolicy.peer_rate_per_second)
    if not peer_rate > 0:
        raise ConfigError(f"{path}: [policy] peer_rate_per_second must be positive")
    peer_burst = pol.positive("peer_burst", CoordinatorPolicy.peer_burst)
    pol.finish()
    qry = Section(path, "policy.query", raw_query)
    query = {silo: rules_of(qry, silo) for silo in raw_query}
    qry.finish()

    # Always on: every call, allowed or denied, leaves a hash-chained line.
    audit = audit_settings(path, doc, default_dir=str(state_dir / "audit"))

    return CoordinatorConfig(
        audit=audit,
        metrics=metrics_settings(path, doc),
        source=path,
        name=name,
        state_dir=state_dir,
        signing_key=signing_key,
        server=server,
        tls=tls,
        training=training,
        policy=CoordinatorPolicy(
            rules=rules,
            query=query,
            require_signed=require_signed,
            denylist=denylist,
            rate_per_second=rate,
            burst=burst,
            peer_rate_per_second=peer_rate,
            peer_burst=peer_burst,
        ),
    )
