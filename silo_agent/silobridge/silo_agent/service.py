"""The silo's domain operations — describe, embed, embed anchors, search — with its own policy.

No gRPC here: ``handlers`` admits and authorizes each call once, then calls these. Every input
from a peer is validated before any work, and every refusal is a domain error with an actionable
message.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np

from silobridge.adapters.hubness import HubnessCorrection
from silobridge.core.config import TrustedCa
from silobridge.core.documents import INVISIBLE_TEXT_MESSAGE, has_visible_text
from silobridge.core.errors import (
    InvalidArgument,
    PermissionDenied,
    ResourceExhausted,
    SiloBridgeError,
)
from silobridge.core.hits import Hit
from silobridge.core.listings import SiloDescription
from silobridge.core.queries import SiloQuery
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor
from silobridge.core.stage_timer import TIMINGS
from silobridge.core.vectors import FloatVector, validate_k, validate_query_vector
from silobridge.embedding.embedders import Embedder
from silobridge.security.identity import PeerIdentity, Role
from silobridge.security.signed_query.claims import decode_claims
from silobridge.security.signed_query.replay import (
    DEFAULT_MAX_AGE_S,
    NonceStore,
    ReplayCache,
)
from silobridge.security.signed_query.signing import now_ms
from silobridge.security.signed_query.verify import verify_signed_query
from silobridge.silo_agent.adapter_fetch import Translation
from silobridge.silo_agent.config import Limits, SiloConfig, disclosure_policy
from silobridge.silo_agent.receiving.hubness_routes import (
    TRAFFIC,
    HubnessCorrections,
    corrected_search,
)
from silobridge.silo_agent.receiving.refine import REFINE_STEP, Refined, Refinements
from silobridge.silo_agent.rerank import rerank, rerank_depth
from silobridge.silo_agent.routes import Route, RouteTable
from silobridge.silo_agent.store.data import SiloData

log = logging.getLogger(__name__)
# The silo's nonce memory in its data directory (SQLite).
NONCE_FILE = "replay-nonces.sqlite"
# Even a very high rate limit does not make the nonce memory of one signer unbounded.
MAX_NONCES_PER_SIGNER = 1_000_000


def nonces_per_signer(limits: Limits) -> int:
    """Room for every signed query the rate limit lets one signer make while its nonces live,
    so the cap never refuses a query the rate limit admits (and bites only on that signer)."""
    lifetime_s = DEFAULT_MAX_AGE_S + limits.max_clock_skew_s
    allowed = limits.burst + math.ceil(limits.rate_per_second * lifetime_s)
    return min(allowed, MAX_NONCES_PER_SIGNER)


@contextlib.contextmanager
def refused_on_behalf_of(asker: PeerIdentity, caller: PeerIdentity) -> Iterator[None]:
    """Mark a domain error raised inside as ``asker``'s refusal when ``asker`` (a verified
    signer) is not the calling peer, so the boundary audits it under the signer."""
    try:
        yield
    except SiloBridgeError as error:
        if asker != caller and error.asker is None:
            error.asker = asker
        raise


# What an answer's ``receiving`` names: the hubness correction re-scored it; the silo's own
# local fit mapped the query (``receiving/``).
HUBNESS_STEP = "hubness"
LOCAL_FIT_STEP = "local-fit"


@dataclasses.dataclass(frozen=True)
class Answer:
    """A search's hits and the receiving-side steps applied to them ("" for none)."""

    hits: list[Hit]
    receiving: str = ""


class SiloService:
    """One silo: its config (policy and limits), its embedder and its data."""

    def __init__(self, config: SiloConfig, embedder: Embedder, data: SiloData) -> None:
        self.config = config
        self.embedder = embedder
        self.data = data
        # Nonces of signed queries seen within their validity window, kept in the data directory
        # so that a replay is refused after a restart too.
        self.replay = ReplayCache(
            max_per_signer=nonces_per_signer(config.limits),
            store=NonceStore(config.data_dir / NONCE_FILE),
            now_ms=now_ms(),
        )
        self.trusted_ca = TrustedCa(
            config.tls, f"silo {config.name!r} runs without TLS and cannot verify signed queries"
        )
        # The spaces queries are answered in; a migration swaps in new tables (migration/).
        self.routes = RouteTable.native(data.source, primary=data.source)
        # The model specs it runs: its source model, and the one it migrates to if it does.
        self.model_spec = config.model
        self.migrating_to: str | None = None
        # Receiving-side hubness correction of translated queries ([receiving] in silo.toml).
        self.hubness = HubnessCorrections(config.receiving, data)
        # The opt-in correction after the adapter, fitted on the traffic pool behind a guard.
        self.refinements = Refinements(self.hubness, data)

    @property
    def space(self) -> SpaceDescriptor:
        return self.embedder.space

    def admit_query(self, caller: PeerIdentity, query: SiloQuery) -> PeerIdentity:
        """Who is asking, checked against this silo's own policy (which has the last word).

        A query forwarded by a coordinator must carry the client's signature: verified against
        the consortium CA, within its time window, never replayed, over this very vector and
        source space, addressed to this silo. The asker is then the signer, not the forwarder.
        """
        access = self.config.access
        name = self.config.name
        if query.signed is None:
            if caller.role == Role.COORDINATOR and access.require_signed:
                raise PermissionDenied(
                    f"silo {name!r} serves queries forwarded by a coordinator only when the "
                    "client signed them"
                )
            asker = caller
            signed_k = None
        else:
            if not query.source_space:
                raise InvalidArgument("a signed query must name its source space")
            verified = verify_signed_query(
                query.signed,
                ca_certificate_pem=self.trusted_ca.pem(),
                vector=query.vector,
                source_space=query.source_space,
                silo=name,
                # Only the coordinator the client signed for may hand it to us (issue 11, 7).
                audience=caller.spiffe_id,
                # The nonce is recorded last, by remember_nonce, once every check passed.
                replay=None,
                rerank_text=query.rerank_text,
                max_skew_s=self.config.limits.max_clock_skew_s,
            )
            asker = verified.signer
            signed_k = verified.claims.k
        # From here on a refusal is the signer's, audited under it (``via`` the forwarder).
        with refused_on_behalf_of(asker, caller):
            if signed_k is not None and query.k > signed_k:
                raise PermissionDenied(
                    f"k={query.k} exceeds the k={signed_k} the client signed for"
                )
            if not access.may_ask(asker):
                raise PermissionDenied(
                    f"silo {name!r} does not serve queries from "
                    f"{asker.spiffe_id or 'this caller'} (organization {asker.org or 'none'})"
                )
            foreign = self.translates(query) or self.routes.is_local_fit(query.source_space)
            if foreign and not access.accepts_space(query.source_space):
                raise PermissionDenied(
                    f"silo {name!r} does not accept queries translated from space "
                    f"{query.source_space!r}"
                )
        return asker

    def remember_nonce(self, query: SiloQuery, asker: PeerIdentity) -> None:
        """Record a signed query's nonce (``PermissionDenied`` for a replay): the last step of
        admission, after the policy, denylist and rate checks, so a query refused by any of them
        leaves its nonce to the genuine forward. ``asker`` is the signer ``admit_query`` named."""
        if query.signed is None:
            return
        claims = decode_claims(query.signed.claims)  # verified by admit_query
        self.replay.check_and_remember(
            asker.spiffe_id, claims.nonce, claims.issued_unix_ms, now_ms()
        )

    def translates(self, query: SiloQuery) -> bool:
        """Whether ``query`` comes from a space this silo does not answer in, so it needs the
        coordinator's adapter (a migrating silo answers in its old and new spaces itself)."""
        return bool(query.source_space) and self.routes.of(query.source_space) is None

    def authorize(self, rpc: str, caller: PeerIdentity) -> None:
        """Refuse (PermissionDenied) unless the silo's access rules allow ``caller`` this RPC."""
        if not self.config.access.allows(rpc, caller):
            who = caller.spiffe_id or "an unauthenticated caller"
            raise PermissionDenied(f"silo {self.config.name!r} does not allow {who} to call {rpc}")

    def _check_texts(self, texts: Sequence[str], max_count: int) -> None:
        limits = self.config.limits
        if not texts:
            raise InvalidArgument("no texts given; send at least one")
        if len(texts) > max_count:
            raise ResourceExhausted(
                f"{len(texts)} texts in one request; this silo accepts at most {max_count}: "
                "split the request"
            )
        for position, text in enumerate(texts):
            if len(text) > limits.max_text_chars:
                raise ResourceExhausted(
                    f"text #{position} has {len(text)} characters; the limit is "
                    f"{limits.max_text_chars}"
                )
            if not text.strip():
                raise InvalidArgument(f"text #{position} is empty")
            if not has_visible_text(text):
                raise InvalidArgument(f"text #{position} {INVISIBLE_TEXT_MESSAGE}")

    def describe(self) -> SiloDescription:
        return SiloDescription(
            name=self.config.name,
            space=self.space,
            also_serves=self.routes.also_serves,
            document_count=self.data.count(),
            max_k=self.config.limits.max_k,
            policy=disclosure_policy(self.config),
        )

    def embed(self, texts: Sequence[str]) -> FloatMatrix:
        """Embed a client's own texts (its organization's queries)."""
        self._check_texts(texts, self.config.limits.max_embed_texts)
        return self.embedder.embed(texts, batch_size=self.config.limits.batch_size)

    def embed_anchors(self, texts: Sequence[str]) -> FloatMatrix:
        """Embed public anchor texts for adapter training."""
        self._check_texts(texts, self.config.limits.max_anchor_texts)
        return self.embedder.embed(texts, batch_size=self.config.limits.batch_size)

    def answer(self, query: SiloQuery, translation: Translation | None, asker: str = "") -> Answer:
        """Search with an admitted query, translated first by the coordinator's adapter if it
        has one (into a space this silo answers in), with the receiving-side steps it used."""
        vector = query.vector.decode()
        space_id = query.source_space
        correction: HubnessCorrection | None = None
        refined: Refined | None = None
        translated = vector
        if translation is not None:
            adapter = translation.adapter
            translated = adapter.apply_one(validate_query_vector(vector, adapter.source_dim))
            vector = translated
            space_id = translation.target_space
            generation = self.route(space_id).generation
            refined = self.refinements.get(translation, generation)
            if refined is not None:
                vector, correction = refined.apply(translated), refined.correction
            else:
                correction = self.hubness.get(
                    translation.adapter_id,
                    translation.source_space,
                    translation.hubness_reference,
                    generation,
                )
            if query.rerank_text:  # a two-stage answer is scored natively anyway
                correction = None
        elif self.routes.is_local_fit(space_id) and not query.rerank_text:
            local = self.route(space_id)
            correction = self.hubness.get(
                f"local-fit:{space_id}", space_id, local.hubness_reference, local.generation
            )
        with TIMINGS.stage("silo: index search (with hubness re-scoring, docstore)"):
            hits = self.search(
                vector,
                query.k,
                query.rerank_text,
                query.rerank_depth,
                space_id=space_id,
                hubness=correction,
            )
        if translation is not None:  # after the search: a query is not its own reference
            self.hubness.remember(translation.source_space, space_id, asker, translated)
        steps = [LOCAL_FIT_STEP] if self.route(space_id).local else []
        if refined is not None:
            steps.append(REFINE_STEP)
        if correction is not None:
            steps.append(HUBNESS_STEP if correction.label != TRAFFIC else "hubness(traffic)")
        return Answer(hits, "+".join(steps))

    def answers_at_once(self, query: SiloQuery, translation: Translation | None) -> bool:
        """Whether ``answer`` is sub-millisecond work now (no text to embed, no correction to
        build first), so the caller may run it on the event loop rather than a worker thread."""
        if query.rerank_text:
            return False
        try:
            if translation is not None:
                generation = self.route(translation.target_space).generation
                return self.hubness.ready(
                    translation.adapter_id,
                    translation.source_space,
                    translation.hubness_reference is not None,
                    generation,
                )
            if self.routes.is_local_fit(query.source_space):
                local = self.route(query.source_space)
                has_reference = local.hubness_reference is not None
                adapter_id = f"local-fit:{query.source_space}"
                return self.hubness.ready(
                    adapter_id, query.source_space, has_reference, local.generation
                )
        except SiloBridgeError:
            return False  # refused in the worker thread, with its message
        return True

    def route(self, space_id: str) -> Route:
        """How a vector in ``space_id`` (empty: the primary space) is searched here."""
        routes = self.routes
        route = routes.of(space_id or routes.primary.space_id)
        if route is None:
            raise InvalidArgument(
                f"silo {self.config.name!r} answers in {routes.primary.space_id}, not in "
                f"{space_id}; send the query through the coordinator to have it translated"
            )
        return route

    def search(
        self,
        vector: FloatVector,
        k: int,
        rerank_text: str = "",
        rerank_depth: int = 0,
        *,
        space_id: str = "",
        hubness: HubnessCorrection | None = None,
    ) -> list[Hit]:
        """Nearest documents to a vector in this silo's space; only disclosed fields leave.

        With ``rerank_text`` (two-stage re-ranking, only if the silo accepts query text) the top
        ``rerank_depth`` hits for ``vector`` are re-ordered by their cosine with the text embedded
        by this silo's own model, and that native score is what is returned. With ``hubness``
        the top ``[receiving] hubness_depth`` candidates are re-scored by it.
        """
        if rerank_text and not self.config.access.accept_query_text:
            raise PermissionDenied(
                f"silo {self.config.name!r} does not accept query text (two-stage re-ranking); "
                "resend without it"
            )
        validate_k(k, self.config.limits.max_k)
        route = self.route(space_id)
        query = validate_query_vector(vector, route.space.dimension)
        if route.adapter is not None:
            query = route.adapter.apply_one(query)
        if rerank_text:
            hits = rerank(self, route.generation, query, k, rerank_text, rerank_depth)
        elif hubness is not None:
            depth = max(k, self.config.receiving.hubness_depth)
            hits = corrected_search(self.data, route.generation, query, k, depth, hubness)
        else:
            hits = self.data.search_in(route.generation, query, k)
        disclosed = self.config.access.disclose_fields
        # Built directly (not dataclasses.replace): this runs for every hit of every query.
        return [
            Hit(
                hit.doc_id,
                hit.score,
                {name: hit.fields[name] for name in disclosed if name in hit.fields},
                hit.silo,
                hit.merged_score,
            )
            for hit in hits
        ]

    def rerank_depth(self, k: int, requested: int) -> int:
        """How many first-stage candidates to re-score: ``requested`` or max(k, 100), clamped."""
        return rerank_depth(self.config.limits, k, requested)

    def search_text(self, text: str, k: int) -> list[Hit]:
        """Local debugging: embed and search with the silo's own model (no access check: local).

        Every metadata field is shown: the result stays on this machine.
        """
        self._check_texts([text], 1)
        vector = self.embedder.embed([text])[0]
        validate_k(k, self.config.limits.max_k)
        return self.data.search(np.asarray(vector, dtype=np.float32), k)
