"""The silo agent's configuration (``silo.toml``): identity, model, storage, server, limits, access.

Access rules fail closed: an RPC whose rule list is absent or empty is denied to everyone
(``prefer_anchors``, when absent, has ``embed_anchors``' rules: normally the coordinator only).
A rule is a glob over the caller's SPIFFE id (``spiffe://demo/coordinator/*``), ``org:<O>`` (any
certificate of organization O) or ``org:<O>/<role>``. Query text (two-stage re-ranking) is refused
unless ``[access] accept_query_text = true``. An optional ``[coordinator]`` section makes
``silo serve`` register the silo with a coordinator.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
from silobridge.core.disclosure import DisclosurePolicy
from silobridge.core.errors import ConfigError, InvalidArgument
from silobridge.security.identity import PeerIdentity, validate_component
from silobridge.security.ratelimit import DEFAULT_PEER_BURST, DEFAULT_PEER_RATE_PER_SECOND
from silobridge.security.rules import RulePolicy, matches_any, rules_of
from silobridge.security.signed_query.replay import DEFAULT_MAX_AGE_S, DEFAULT_MAX_SKEW_S
from silobridge.silo_agent.receiving.settings import ReceivingSettings, receiving_settings
from silobridge.silo_agent.store.index import IndexSettings
from silobridge.silo_agent.store.milvus_settings import milvus_settings

# What the consortium's coordinator is conventionally called (its certificate's name).
DEFAULT_COORDINATOR_NAME = "hub"

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
# Access rule keys: one per RPC of SiloService, and "admin" for SiloAdminService (live writes).
RPCS = ("describe", "embed", "embed_anchors", "prefer_anchors", "search", "admin")
# Without its own rule, PreferAnchors is allowed to whoever may call EmbedAnchors (the
# coordinator): both name a public set the silo fetches itself. [receiving]
# anchor_preferences still has to be on.
_DEFAULT_RULE_FROM = {"prefer_anchors": "embed_anchors"}


DEFAULT_LISTEN = "127.0.0.1:50051"


@dataclass(frozen=True)
class SiloServerSettings(ServerSettings):
    listen: str = DEFAULT_LISTEN
    # Intra-op threads per call for torch/onnxruntime/FAISS, so parallel calls do not oversubscribe.
    threads: int = 1


@dataclass(frozen=True)
class Limits:
    max_k: int = 100
    # Queries in one SearchBatch; a larger batch is refused (RESOURCE_EXHAUSTED).
    max_batch: int = 256
    max_embed_texts: int = 256
    max_text_chars: int = 8_192
    max_anchor_texts: int = 200_000
    batch_size: int = 64
    # Candidates a two-stage re-rank may fetch and re-score per search.
    max_rerank_depth: int = 200
    # Per asking identity (the signer of a forwarded query, or the direct caller): a token
    # bucket refilled at this rate. Beyond it: RESOURCE_EXHAUSTED, audited.
    rate_per_second: float = 50.0
    burst: int = 100
    # Per calling peer (its certificate's identity), every call of both services, spent before
    # authorization: the coordinator's calls carry every client's queries, so keep it well
    # above the per-asker budget. Beyond it: RESOURCE_EXHAUSTED (refusals summarised in audit).
    peer_rate_per_second: float = DEFAULT_PEER_RATE_PER_SECOND
    peer_burst: int = DEFAULT_PEER_BURST
    # How far in the future (by this silo's clock) a signed query may have been signed.
    max_clock_skew_s: float = DEFAULT_MAX_SKEW_S


@dataclass(frozen=True)
class AccessPolicy(RulePolicy):
    """Who may call what (``rules``: RPC -> rules); the silo's own and final word."""

    disclose_fields: tuple[str, ...] = ()
    # Two-stage re-ranking sends the query text itself here; off unless the silo opts in.
    accept_query_text: bool = False
    # On whose behalf queries are served: the signer of a forwarded query, or a direct caller.
    query: tuple[str, ...] = ()
    # Source spaces (space ids, or "*") whose queries this silo translates and serves; its own
    # space always. Translation uses adapters signed by the coordinator's adapter key.
    accept_spaces: tuple[str, ...] = ()
    # Queries arriving through a coordinator must carry the client's signature.
    require_signed: bool = True
    # Certificates refused outright (serials or sha256 fingerprints, one per line).
    denylist: Path | None = None

    def may_ask(self, identity: PeerIdentity) -> bool:
        return matches_any(identity, self.query)

    def accepts_space(self, space_id: str) -> bool:
        return "*" in self.accept_spaces or space_id in self.accept_spaces


@dataclass(frozen=True)
class CoordinatorLink:
    """Where to register on ``silo serve``, and the address the coordinator should call back."""

    endpoint: str
    # None: the listen host with the port actually bound.
    advertise: str | None = None
    # The coordinator's Ed25519 adapter public key: adapters fetched from it must verify.
    adapter_key: Path | None = None
    # The coordinator's certificate name: the silo connects expecting
    # spiffe://<its own consortium>/coordinator/<name> and refuses any other server there.
    name: str = DEFAULT_COORDINATOR_NAME


@dataclass(frozen=True)
class SiloConfig:
    source: Path
    name: str
    data_dir: Path
    model: str
    server: SiloServerSettings
    tls: TlsFiles | None
    index: IndexSettings
    limits: Limits
    access: AccessPolicy
    coordinator: CoordinatorLink | None = None
    audit: AuditSettings | None = None
    receiving: ReceivingSettings = dataclasses.field(default_factory=ReceivingSettings)
    # Off unless ``[metrics] listen`` names where to serve them.
    metrics: MetricsSettings = dataclasses.field(default_factory=MetricsSettings)


def load_silo_config(path: Path) -> SiloConfig:
    """Read and check ``silo.toml``; every problem is a ConfigError naming the key."""
    path = path.resolve()
    doc = load_toml(path)
    refuse_unknown_sections(
        path,
        doc,
        {
            "silo",
            "server",
            "tls",
            "index",
            "limits",
            "access",
            "coordinator",
            "audit",
            "receiving",
            "metrics",
        },
    )

    silo = Section.of(path, doc, "silo")
    name = silo.require("name", str)
    if not _NAME.match(name):
        raise ConfigError(f"{path}: [silo] name {name!r} must match {_NAME.pattern}")
    data_dir = silo.path("data_dir", default=f"data/{name}")
    model = silo.require("model", str)
    silo.finish()

    srv = Section.of(path, doc, "server")
    server = SiloServerSettings(
        **server_basics(srv, default_listen=DEFAULT_LISTEN),
        threads=srv.positive("threads", SiloServerSettings.threads),
    )
    srv.finish()

    tls = tls_from_config(path, doc, insecure=server.insecure, insecure_key="server.insecure")

    idx = Section.of(path, doc, "index")
    hnsw_factory = idx.get("hnsw_factory", str, IndexSettings.hnsw_factory)
    index = IndexSettings(
        exact_threshold=idx.positive("exact_threshold", IndexSettings.exact_threshold),
        hnsw_factory=hnsw_factory,
        hnsw_ef_search=idx.positive("ef_search", IndexSettings.hnsw_ef_search),
        hnsw_ef_construction=idx.positive("ef_construction", IndexSettings.hnsw_ef_construction),
        # backend = "milvus": uri, token_file, db_name, collection_prefix (store/milvus_settings)
        milvus=milvus_settings(
            idx, doc.get("index", {}), silo_name=name, data_dir=data_dir, hnsw_factory=hnsw_factory
        ),
    )
    idx.finish()

    lim = Section.of(path, doc, "limits")
    limits = Limits(
        max_k=lim.positive("max_k", Limits.max_k),
        max_batch=lim.positive("max_batch", Limits.max_batch),
        max_embed_texts=lim.positive("max_embed_texts", Limits.max_embed_texts),
        max_text_chars=lim.positive("max_text_chars", Limits.max_text_chars),
        max_anchor_texts=lim.positive("max_anchor_texts", Limits.max_anchor_texts),
        batch_size=lim.positive("batch_size", Limits.batch_size),
        max_rerank_depth=lim.positive("max_rerank_depth", Limits.max_rerank_depth),
        rate_per_second=lim.get("rate_per_second", float, Limits.rate_per_second),
        burst=lim.positive("burst", Limits.burst),
        peer_rate_per_second=lim.get("peer_rate_per_second", float, Limits.peer_rate_per_second),
        peer_burst=lim.positive("peer_burst", Limits.peer_burst),
        max_clock_skew_s=lim.get("max_clock_skew_s", float, Limits.max_clock_skew_s),
    )
    if not limits.rate_per_second > 0:
        raise ConfigError(f"{path}: [limits] rate_per_second must be positive")
    if not limits.peer_rate_per_second > 0:
        raise ConfigError(f"{path}: [limits] peer_rate_per_second must be positive")
    if not 0 <= limits.max_clock_skew_s <= DEFAULT_MAX_AGE_S:
        raise ConfigError(
            f"{path}: [limits] max_clock_skew_s must be between 0 and {DEFAULT_MAX_AGE_S:g} "
            f"seconds, got {limits.max_clock_skew_s}"
        )
    lim.finish()

    acc = Section.of(path, doc, "access")
    access = AccessPolicy(
        rules=_access_rules(acc, doc.get("access", {})),
        disclose_fields=acc.strings("disclose_fields"),
        accept_query_text=acc.get("accept_query_text", bool, False),
        query=rules_of(acc, "query"),
        accept_spaces=acc.strings("accept_spaces"),
        require_signed=acc.get("require_signed", bool, True),
        denylist=acc.path("denylist") if "denylist" in doc.get("access", {}) else None,
    )
    acc.finish()

    coordinator: CoordinatorLink | None = None
    if "coordinator" in doc:
        coord = Section.of(path, doc, "coordinator")
        endpoint = coord.endpoint("endpoint")
        # An empty advertise means unset: the listen host and the bound port.
        advertise = coord.get("advertise", str, "")
        if advertise:
            advertise = coord.endpoint("advertise")
        adapter_key = coord.path("adapter_key") if "adapter_key" in doc["coordinator"] else None
        coordinator_name = coord.get("name", str, DEFAULT_COORDINATOR_NAME)
        coord.finish()
        try:
            validate_component(coordinator_name, "coordinator name")
        except InvalidArgument as error:
            raise ConfigError(f"{path}: [coordinator] name: {error.message}") from None
        coordinator = CoordinatorLink(
            adapter_key=adapter_key,
            endpoint=endpoint,
            advertise=advertise or None,
            name=coordinator_name,
        )

    # Always on: every call, allowed or denied, leaves a hash-chained line.
    audit = audit_settings(path, doc, default_dir="audit")

    return SiloConfig(
        audit=audit,
        receiving=receiving_settings(path, doc),
        metrics=metrics_settings(path, doc),
        source=path,
        name=name,
        data_dir=data_dir,
        model=model,
        server=server,
        tls=tls,
        index=index,
        limits=limits,
        access=access,
        coordinator=coordinator,
    )


def _access_rules(section: Section, table: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """The rule list per RPC; an RPC in ``_DEFAULT_RULE_FROM`` that ``table`` (the file's
    ``[access]``) gives no rule of its own takes the rules of the RPC named there."""
    rules = {rpc: rules_of(section, rpc) for rpc in RPCS}
    for rpc, fallback in _DEFAULT_RULE_FROM.items():
        if rpc not in table:
            rules[rpc] = rules[fallback]
    return rules


def disclosure_policy(config: SiloConfig) -> DisclosurePolicy:
    """The public part of the silo's policy, as Describe (and so ListSilos) carries it."""
    access, receiving = config.access, config.receiving
    return DisclosurePolicy(
        disclose_fields=access.disclose_fields,
        accept_query_text=access.accept_query_text,
        accept_spaces=access.accept_spaces,
        max_k=config.limits.max_k,
        anchor_preferences=receiving.anchor_preferences,
        traffic_pool=receiving.traffic_pool,
        traffic_lifetime_s=receiving.traffic_lifetime_s,
        traffic_max_share=receiving.traffic_max_share,
        refine=receiving.refine,
        local_models=receiving.local_models,
    )
