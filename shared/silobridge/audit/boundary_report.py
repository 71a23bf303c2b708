"""Data-boundary report: who sees what in a consortium, filled with the silos' live policies.

``boundary_report`` builds the "What crosses each boundary" table of docs/ARCHITECTURE.md and a
per-party view from what each silo says of its own policy; ``silobridge audit boundary``
fetches those policies and prints the report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from silobridge.core.disclosure import DisclosurePolicy
from silobridge.core.listings import SiloListing


@dataclass(frozen=True)
class Row:
    """One line of the report; ``surprising`` lines are shown in yellow."""

    columns: tuple[str, ...]
    surprising: bool = False


@dataclass(frozen=True)
class BoundaryReport:
    """The report: boundary flows, what each party sees, and the silos it was built from."""

    flows: list[Row]  # flow, from -> to, content now, never
    parties: list[Row]  # party, what it sees
    silos: list[SiloListing]


def disclosed_fields(policy: DisclosurePolicy | None) -> str:
    """The fields a silo's hits carry, for a table cell ("none", or "unknown" if it did not say)."""
    if policy is None:
        return "unknown (the silo did not report its policy)"
    return ", ".join(policy.disclose_fields) or "none"


def silo_is_surprising(view: SiloListing) -> bool:
    """Worth a second look: it discloses fields, accepts query text, or did not say."""
    policy = view.policy
    return policy is None or bool(policy.disclose_fields) or policy.accept_query_text


def _row(*columns: str, surprising: bool = False) -> Row:
    return Row(columns, surprising)


def preference_flow(silos: list[SiloListing]) -> Row:
    """Which silos answer PreferAnchors: each names the public anchors nearest its corpus."""
    answering = [s.silo for s in silos if s.policy is not None and s.policy.anchor_preferences]
    unknown = [s.silo for s in silos if s.policy is None]
    who = ", ".join(answering) or "no silo"
    if unknown:
        who += f" (unknown for {', '.join(unknown)})"
    return _row("anchor preferences", f"{who} -> coordinator (train --prefer)",
                "positions of the public pool texts nearest the silo's documents: a coarse "
                "picture of its topics", "documents, vectors or scores",
                surprising=bool(answering or unknown))  # fmt: skip


def traffic_flow(silos: list[SiloListing]) -> Row:
    """What each silo keeps of the translated queries it receives ([receiving] traffic_pool)."""
    kept = []
    for view in silos:
        policy = view.policy
        if policy is None:
            kept.append(f"{view.silo}: unknown")
        elif policy.traffic_pool:
            refine = ", refits a correction on them" if policy.refine else ""
            kept.append(
                f"{view.silo}: up to {policy.traffic_pool} for {policy.traffic_lifetime_s:g} s "
                f"each, at most {policy.traffic_max_share:.0%} per signer{refine}"
            )
    content = "; ".join(kept) or "none: no silo keeps translated queries"
    return _row("translated queries kept by a silo", "inside each silo (its receiving side)",
                content, "disk: in memory only, gone at restart",
                surprising=bool(kept))  # fmt: skip


def boundary_report(
    silos: list[SiloListing], *, client: str, home_endpoint: str, coordinator: str
) -> BoundaryReport:
    """The boundary table and a per-party view, filled with the silos' live policies."""
    home = next((s for s in silos if s.endpoint == home_endpoint), None)
    home_name = f"{home.silo} (org {home.org})" if home else f"{home_endpoint} (not registered)"
    names = ", ".join(s.silo for s in silos) or "none registered"
    text_silos = ", ".join(s.silo for s in silos if s.policy and s.policy.accept_query_text)
    disclosing = any(s.policy is None or s.policy.disclose_fields for s in silos)
    hits = "; ".join(f"{s.silo}: {disclosed_fields(s.policy)}" for s in silos) or "no silos"
    rerank = f"with --rerank, to {text_silos}" if text_silos else ""
    flows = [
        _row("anchor texts", f"coordinator -> {names}", "a versioned public anchor set",
             "private text"),
        _row("anchor embeddings", "each silo -> coordinator",
             "the anchors' vectors in that silo's space", "document vectors"),
        _row("query embedding", f"client -> home silo {home_name} -> client",
             "the query text, inside the client's organization", "—", surprising=home is None),
        _row("query vector", f"client -> coordinator {coordinator} -> {names}",
             "one vector per query (invertible: each target learns the query), signed by the "
             "client", "query text" + (f" (except {rerank})" if rerank else ""),
             surprising=bool(text_silos)),
        _row("hits", "silo -> coordinator -> client",
             f"opaque doc ids, scores and disclosed fields: {hits}",
             "document text or vectors beyond policy", surprising=disclosing),
        _row("adapter artifacts", "coordinator -> silo (optional)",
             "signed weights + manifest; the hubness reference (public anchors as the adapter "
             "maps them into the silo's space) and the refinement guard's check pairs (some of "
             "them, beside the silo's own vectors of them)",
             "code: an artifact is data, never imported"),
        preference_flow(silos),
        traffic_flow(silos),
    ]  # fmt: skip
    parties = [
        _row(f"client {client}", f"doc ids, scores and disclosed fields of its hits: {hits}"),
        _row(f"home silo {home_name}", "the client's query text (it embeds it)",
             surprising=home is None),
        _row(f"coordinator {coordinator}",
             "every query vector with its space, targets and asker; every silo's hits and "
             "disclosed fields; anchors' vectors; "
             + (f"the query text {rerank}" if rerank else "never the query text"),
             surprising=bool(text_silos)),
    ]  # fmt: skip
    for view in silos:
        sees = "the query vector (invertible: the query is disclosed to it), k, who asked"
        if view.policy is not None:
            spaces = ", ".join(view.policy.accept_spaces) or "its own only"
            text = "query text with --rerank" if view.policy.accept_query_text else "never text"
            sees += f"; {text}; max k {view.policy.max_k}; translates from: {spaces}"
            if view.policy.anchor_preferences:
                sees += "; answers anchor preferences"
            if view.policy.local_models:
                sees += f"; runs querying models {', '.join(view.policy.local_models)}"
        parties.append(
            _row(f"target silo {view.silo} (org {view.org})",
                 f"{sees}; discloses fields: {disclosed_fields(view.policy)}",
                 surprising=silo_is_surprising(view))
        )  # fmt: skip
    return BoundaryReport(flows, parties, silos)


def report_to_dict(report: BoundaryReport) -> dict[str, Any]:
    """A JSON-ready form of the report (``--json``)."""
    return {
        "flows": [
            dict(zip(("flow", "path", "content", "never"), row.columns, strict=True))
            | {"surprising": row.surprising}
            for row in report.flows
        ],
        "parties": [
            {"party": row.columns[0], "sees": row.columns[1], "surprising": row.surprising}
            for row in report.parties
        ],
        "silos": [_silo_to_dict(view) for view in report.silos],
    }


def _silo_to_dict(view: SiloListing) -> dict[str, Any]:
    return {
        "silo": view.silo,
        "org": view.org,
        "endpoint": view.endpoint,
        "healthy": view.healthy,
        "space_id": view.space.space_id if view.space is not None else "",
        "policy": asdict(view.policy) if view.policy is not None else None,
        "surprising": silo_is_surprising(view),
    }
