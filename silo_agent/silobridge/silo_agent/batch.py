"""A batch of forwarded queries under one client signature: admitted once, answered per query.

Admission mirrors ``SiloService.admit_query`` (which checks one vector): the batch signature is
verified once over every vector in order, then the same policy checks apply to its signer. The
per-query answer (translation, hubness correction, disclosure) is ``SiloService.answer``.
"""

from __future__ import annotations

from silobridge.core.errors import InvalidArgument, PermissionDenied, ResourceExhausted
from silobridge.core.hits import Hit
from silobridge.core.queries import SiloBatch, SiloQuery
from silobridge.core.vectors import WireVector
from silobridge.security.identity import PeerIdentity
from silobridge.security.signed_query.claims import decode_claims
from silobridge.security.signed_query.signing import now_ms
from silobridge.security.signed_query.verify import verify_signed_query
from silobridge.silo_agent.adapter_fetch import Translation
from silobridge.silo_agent.service import SiloService, refused_on_behalf_of


def check_batch(service: SiloService, batch: SiloBatch) -> None:
    """At least one vector, at most ``[limits] max_batch`` (``ResourceExhausted``)."""
    check_count(service, len(batch.vectors))


def check_count(service: SiloService, count: int) -> None:
    """At least one query in one call, at most ``[limits] max_batch`` (``ResourceExhausted``);
    for ``SearchBatch`` and ``SearchMany`` alike."""
    limit = service.config.limits.max_batch
    if not count:
        raise InvalidArgument("a batch holds at least one query")
    if count > limit:
        raise ResourceExhausted(
            f"{count} queries in one call; silo {service.config.name!r} accepts at most {limit} "
            "([limits] max_batch): split them"
        )


def query_of(batch: SiloBatch, vector: WireVector) -> SiloQuery:
    """One query of the batch, as ``SiloService`` answers it."""
    return SiloQuery(
        vector,
        batch.k,
        signed=batch.signed,
        source_space=batch.source_space,
        adapter_id=batch.adapter_id,
    )


def admit_batch(service: SiloService, caller: PeerIdentity, batch: SiloBatch) -> PeerIdentity:
    """Who is asking for the whole batch, under this silo's own policy (``admit_query``'s
    checks, with the signature verified once over the batch)."""
    check_batch(service, batch)
    if batch.signed is None:
        # Unsigned: nothing depends on the vectors, so the single-query admission decides.
        return service.admit_query(caller, query_of(batch, batch.vectors[0]))
    if not batch.source_space:
        raise InvalidArgument("a signed batch must name its source space")
    config = service.config
    verified = verify_signed_query(
        batch.signed,
        ca_certificate_pem=service.trusted_ca.pem(),
        vector=batch.vectors,
        source_space=batch.source_space,
        silo=config.name,
        audience=caller.spiffe_id,
        replay=None,  # recorded last, by remember_batch_nonce
        max_skew_s=config.limits.max_clock_skew_s,
    )
    asker = verified.signer
    access = config.access
    with refused_on_behalf_of(asker, caller):
        if batch.k > verified.claims.k:
            raise PermissionDenied(
                f"k={batch.k} exceeds the k={verified.claims.k} the client signed for"
            )
        if not access.may_ask(asker):
            raise PermissionDenied(
                f"silo {config.name!r} does not serve queries from "
                f"{asker.spiffe_id or 'this caller'} (organization {asker.org or 'none'})"
            )
        first = query_of(batch, batch.vectors[0])
        foreign = service.translates(first) or service.routes.is_local_fit(batch.source_space)
        if foreign and not access.accepts_space(batch.source_space):
            raise PermissionDenied(
                f"silo {config.name!r} does not accept queries translated from space "
                f"{batch.source_space!r}"
            )
    return asker


def remember_batch_nonce(service: SiloService, batch: SiloBatch, asker: PeerIdentity) -> None:
    """The batch's one nonce, recorded last (``PermissionDenied`` for a replay)."""
    if batch.signed is None:
        return
    claims = decode_claims(batch.signed.claims)  # verified by admit_batch
    service.replay.check_and_remember(
        asker.spiffe_id, claims.nonce, claims.issued_unix_ms, now_ms()
    )


def answer_batch(
    service: SiloService, batch: SiloBatch, translation: Translation | None, asker: str
) -> tuple[list[list[Hit]], str]:
    """Every query of an admitted batch answered as a single one is, in order; and the
    receiving-side steps used (those of the last query: they are the same for all)."""
    results: list[list[Hit]] = []
    receiving = ""
    for vector in batch.vectors:
        answered = service.answer(query_of(batch, vector), translation, asker)
        results.append(answered.hits)
        receiving = answered.receiving
    return results, receiving
