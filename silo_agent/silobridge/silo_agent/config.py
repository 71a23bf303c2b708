"""The silo agent's configuration (``silo.toml``): identity, model, storage, server, limits, access.

Access rules fail closed: an RPC whose rule list is absent or empty is denied to everyone.
A rule is a glob over the caller's SPIFFE id (``spiffe://demo/coordinator/*``), ``org:<O>`` (any
certificate of organization O) or ``org:<O>/<role>``. Query text (two-stage re-ranking) is refused
unless ``[access] accept_query_text = true``. An optional ``[coordinator]`` section makes
``silo serve`` register the silo with a coordinator.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from silobridge.shared.config_io import (
    AuditSettings,
    Section,
    audit_settings,
    load_toml,
    refuse_unknown_sections,
)
from silobridge.shared.errors import ConfigError, InvalidArgument
from silobridge.shared.identity import PeerIdentity, identity_matches, validate_rule
from silobridge.shared.transport import TlsFiles, tls_from_config
from silobridge.silo_agent.index import IndexSettings

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
RPCS = ("describe", "embed", "embed_anchors", "search")


@dataclass(frozen=True)
class ServerSettings:
    listen: str = "127.0.0.1:50051"
    # Threads for CPU work (embedding, FAISS); the event loop itself never blocks on them.
    workers: int = 2
    # Intra-op threads per call for torch/onnxruntime/FAISS, so parallel calls do not oversubscribe.
    threads: int = 1
    insecure: bool = False
    grace_seconds: float = 5.0


@dataclass(frozen=True)
class Limits:
    max_k: int = 100
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


@dataclass(frozen=True)
class AccessPolicy:
    """Who may call what; the silo's own and final word."""

    rules: dict[str, tuple[str, ...]] = field(default_factory=dict)
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

    def allows(self, rpc: str, identity: PeerIdentity) -> bool:
        return any(identity_matches(identity, rule) for rule in self.rules.get(rpc, ()))

    def may_ask(self, identity: PeerIdentity) -> bool:
        return any(identity_matches(identity, rule) for rule in self.query)

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


@dataclass(frozen=True)
class SiloConfig:
    source: Path
    name: str
    data_dir: Path
    model: str
    server: ServerSettings
    tls: TlsFiles | None
    index: IndexSettings
    limits: Limits
    access: AccessPolicy
    coordinator: CoordinatorLink | None = None
    audit: AuditSettings | None = None


def _rule(path: Path, key: str, rule: str) -> str:
    try:
        return validate_rule(rule)
    except InvalidArgument as error:
        raise ConfigError(f"{path}: [access] {key}: {error.message}") from None


def check_host_port(value: str, where: str) -> str:
    """``host:port`` with a non-empty host and a port in 1..65535 (IPv6 as ``[::1]:port``)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ConfigError(f"{where} must be host:port (port 1-65535), got {value!r}")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise ConfigError(f"{where}: write an IPv6 host in brackets, e.g. [::1]:50051")
    return value


def load_silo_config(path: Path) -> SiloConfig:
    """Read and check ``silo.toml``; every problem is a ConfigError naming the key."""
    path = path.resolve()
    doc = load_toml(path)
    refuse_unknown_sections(
        path,
        doc,
        {"silo", "server", "tls", "index", "limits", "access", "coordinator", "audit"},
    )

    silo = Section.of(path, doc, "silo")
    name = silo.require("name", str)
    if not _NAME.match(name):
        raise ConfigError(f"{path}: [silo] name {name!r} must match {_NAME.pattern}")
    data_dir = silo.path("data_dir", default=f"data/{name}")
    model = silo.require("model", str)
    silo.finish()

    srv = Section.of(path, doc, "server")
    server = ServerSettings(
        listen=srv.get("listen", str, ServerSettings.listen),
        workers=srv.positive("workers", ServerSettings.workers),
        threads=srv.positive("threads", ServerSettings.threads),
        insecure=srv.get("insecure", bool, False),
        grace_seconds=srv.get("grace_seconds", float, ServerSettings.grace_seconds),
    )
    srv.finish()

    tls = tls_from_config(path, doc, insecure=server.insecure, insecure_key="server.insecure")

    idx = Section.of(path, doc, "index")
    index = IndexSettings(
        exact_threshold=idx.positive("exact_threshold", IndexSettings.exact_threshold),
        hnsw_factory=idx.get("hnsw_factory", str, IndexSettings.hnsw_factory),
        hnsw_ef_search=idx.positive("ef_search", IndexSettings.hnsw_ef_search),
        hnsw_ef_construction=idx.positive("ef_construction", IndexSettings.hnsw_ef_construction),
    )
    idx.finish()

    lim = Section.of(path, doc, "limits")
    limits = Limits(
        max_k=lim.positive("max_k", Limits.max_k),
        max_embed_texts=lim.positive("max_embed_texts", Limits.max_embed_texts),
        max_text_chars=lim.positive("max_text_chars", Limits.max_text_chars),
        max_anchor_texts=lim.positive("max_anchor_texts", Limits.max_anchor_texts),
        batch_size=lim.positive("batch_size", Limits.batch_size),
        max_rerank_depth=lim.positive("max_rerank_depth", Limits.max_rerank_depth),
        rate_per_second=lim.get("rate_per_second", float, Limits.rate_per_second),
        burst=lim.positive("burst", Limits.burst),
    )
    if not limits.rate_per_second > 0:
        raise ConfigError(f"{path}: [limits] rate_per_second must be positive")
    lim.finish()

    acc = Section.of(path, doc, "access")
    access = AccessPolicy(
        rules={rpc: acc.strings(rpc) for rpc in RPCS},
        disclose_fields=acc.strings("disclose_fields"),
        accept_query_text=acc.get("accept_query_text", bool, False),
        query=tuple(_rule(path, "query", r) for r in acc.strings("query")),
        accept_spaces=acc.strings("accept_spaces"),
        require_signed=acc.get("require_signed", bool, True),
        denylist=acc.path("denylist") if "denylist" in doc.get("access", {}) else None,
    )
    acc.finish()

    coordinator: CoordinatorLink | None = None
    if "coordinator" in doc:
        coord = Section.of(path, doc, "coordinator")
        endpoint = check_host_port(
            coord.require("endpoint", str), f"{path}: [coordinator] endpoint"
        )
        advertise = coord.get("advertise", str, "")
        adapter_key = coord.path("adapter_key") if "adapter_key" in doc["coordinator"] else None
        coord.finish()
        coordinator = CoordinatorLink(
            adapter_key=adapter_key,
            endpoint=endpoint,
            advertise=check_host_port(advertise, f"{path}: [coordinator] advertise")
            if advertise
            else None,
        )

    # Always on: every call, allowed or denied, leaves a hash-chained line.
    audit = audit_settings(path, doc, default_dir="audit")

    return SiloConfig(
        audit=audit,
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
