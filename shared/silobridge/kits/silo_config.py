"""``silo.toml`` of a silo's kit: every key the silo agent reads, documented."""

from __future__ import annotations

from silobridge.kits.party import ADAPTER_KEY, Links, Party
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
from silobridge.silo_agent.store.milvus_settings import default_prefix


def silo_tables(party: Party, links: Links) -> list[Table]:
    hub = party.spiffe(Role.COORDINATOR, links.coordinator_name)
    clients = party.spiffe(Role.CLIENT, "*")
    org = party.org
    return [
        Table(
            "silo",
            "Who this silo is and what it holds.",
            [
                Key(
                    "name",
                    party.name,
                    f"Must equal the name in {party.cert} ({party.spiffe_id}).",
                    active=True,
                ),
                Key(
                    "data_dir",
                    "data",
                    "Docstore, vector index, migration state: private, back it up.",
                    active=True,
                ),
                Key(
                    "model",
                    links.model or "minilm-l6",
                    "The embedding model the documents are "
                    "embedded with (a spec: minilm-l6, minilm-l3-onnx, static-64, onnx:<path>).",
                    active=True,
                ),
            ],
        ),
        server_table(
            links.listen or "0.0.0.0:50051",
            [Key("threads", 1, "Intra-op threads per call (torch, onnxruntime, FAISS).")],
        ),
        tls_table(party),
        Table(
            "coordinator",
            "The consortium's coordinator: the silo registers itself there.",
            [
                Key(
                    "endpoint",
                    links.coordinator or "EDIT-ME.coordinator.example:50050",
                    "host:port of the coordinator.",
                    active=True,
                ),
                Key(
                    "name",
                    links.coordinator_name,
                    f"Its certificate name: any server there but {hub} is refused.",
                    active=True,
                ),
                Key(
                    "adapter_key",
                    ADAPTER_KEY,
                    "The coordinator's adapter signing public key "
                    "(`silobridge kit install --adapter-key`): adapters not signed by it are "
                    "refused.",
                    active=True,
                ),
                Key(
                    "advertise",
                    links.advertise,
                    "host:port the coordinator dials this silo at "
                    "(default: the listen host and port).",
                    active=bool(links.advertise),
                ),
            ],
        ),
        Table(
            "access",
            "Who may call what: SPIFFE ids (wildcards allowed), org:<org>, org:<org>/<role>.",
            [
                Key(
                    "describe",
                    [hub, f"org:{org}"],
                    "Describe: the space, size, policy.",
                    active=True,
                ),
                Key(
                    "embed",
                    [f"org:{org}/client"],
                    "Embed: text to this silo's model (only your own people).",
                    active=True,
                ),
                Key(
                    "embed_anchors",
                    [hub],
                    "EmbedAnchors: public anchor texts, for training.",
                    active=True,
                ),
                Key("prefer_anchors", [hub], "PreferAnchors (default: the embed_anchors rules)."),
                Key(
                    "search",
                    [hub, f"org:{org}/client"],
                    "Search: who may forward queries here.",
                    active=True,
                ),
                Key("query", [clients], "On whose behalf: the signer of each query.", active=True),
                Key(
                    "admin",
                    [],
                    "Live writes, deletes and migrations (silobridge silo ingest "
                    "--live, silo migrate).",
                    active=True,
                ),
                Key(
                    "accept_spaces",
                    ["*"],
                    "Query spaces translated here (with a signed adapter).",
                    active=True,
                ),
                Key(
                    "disclose_fields",
                    [],
                    "Metadata fields returned with hits (never the text).",
                    active=True,
                ),
                Key(
                    "accept_query_text",
                    False,
                    "Take query text for re-ranking (--rerank).",
                    active=True,
                ),
                Key("require_signed", True, "Refuse queries their client did not sign."),
                denylist_key(),
            ],
        ),
        Table(
            "limits",
            "Bounds per call and rates per caller.",
            [
                Key("max_k", 100, "Most hits per query."),
                Key("max_batch", 256, "Most queries per batch."),
                Key("max_embed_texts", 256, "Most texts per Embed call."),
                Key("max_text_chars", 8192, "Longest text accepted."),
                Key("max_anchor_texts", 200_000, "Largest anchor set embedded."),
                Key("batch_size", 64, "Texts per model batch."),
                Key("max_rerank_depth", 200, "Most candidates re-ranked."),
                Key("rate_per_second", 50.0, "Queries per second per signer."),
                Key("burst", 100, "Burst above that rate."),
                *peer_limit_keys(),
                Key("max_clock_skew_s", 5.0, "Accepted clock skew of a signed query."),
            ],
        ),
        Table(
            "index",
            "The vector index (FAISS files in data_dir, or Milvus).",
            [
                Key(
                    "exact_threshold", 20_000, "Below this many vectors: exact search; above: HNSW."
                ),
                Key("hnsw_factory", "HNSW32,Flat", "FAISS factory of the approximate index."),
                Key("ef_search", 128, "HNSW search breadth."),
                Key("ef_construction", 80, "HNSW build breadth."),
                Key("backend", "faiss", "faiss, or milvus (README: Pointing a silo at Milvus)."),
                Key(
                    "uri",
                    "milvus.db",
                    "milvus: a .db file (Milvus Lite, in data_dir) or http(s)://host:port.",
                    example=True,
                ),
                Key(
                    "token_file",
                    "milvus.token",
                    "milvus server: the file holding its token.",
                    example=True,
                ),
                Key("db_name", "silos", "milvus: its database (default: default).", example=True),
                Key(
                    "collection_prefix",
                    default_prefix(party.name),
                    "milvus: names its aliases and collections (default: the silo name).",
                    example=True,
                ),
            ],
        ),
        Table(
            "receiving",
            "Steps applied to queries translated into this space.",
            [
                Key("hubness", True, "Hubness correction of translated queries."),
                Key("hubness_k", 10, "Neighbours of the hubness reference."),
                Key("hubness_depth", 100, "Candidates re-scored."),
                Key("hubness_off_for", [], "Source spaces left uncorrected."),
                Key(
                    "local_models",
                    [],
                    "Querying models this silo also runs, to fit its own "
                    "adapter on its own documents.",
                ),
                Key("local_fit_sample", 4096, "Documents such a local fit uses."),
                Key(
                    "traffic_pool",
                    0,
                    "Translated queries kept in memory as hubness reference (0: none).",
                ),
                Key("traffic_max_share", 0.05, "Share of that pool one signer may hold."),
                Key("traffic_lifetime_s", 3600.0, "How long a pooled query is kept."),
                Key("traffic_min", 1000, "Pool size before it is used."),
                Key("traffic_refresh", 500, "New queries between refreshes."),
                Key("refine", False, "Refinement from the pool, behind the label-free guard."),
                Key("refine_lambda", 30.0, "Its pull towards the identity."),
                Key("anchor_preferences", False, "Answer PreferAnchors (train --prefer)."),
            ],
        ),
        audit_table("audit"),
        *metrics_tables(links),
    ]
