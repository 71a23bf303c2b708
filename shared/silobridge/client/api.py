"""The Python SDK of a consortium member: embed at home, search the federation, manage adapters.

A query's text goes only to the caller's *home* silo (its own organization's, which embeds it);
the coordinator and the other silos receive the query vector. A translated vector can be inverted
by the silo that receives it, so a query is disclosed to every silo it is sent to: choose
``silos`` accordingly.

Every failure is a ``SiloBridgeError``: invalid arguments found before anything is sent raise
``InvalidArgument``; a peer's refusal or failure raises the matching subclass
(``PermissionDenied``, ``Unavailable``, ``DeadlineExceeded``, ...), its ``status_name`` set to the
peer's gRPC status and its message ending with which peer it was, e.g.
``(home silo at 10.0.0.7:50051)`` or ``(coordinator at hub.example.org:50050)``.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from types import TracebackType
from typing import cast

import numpy as np
import numpy.typing as npt

from silobridge.client.config import ClientConfig
from silobridge.core.errors import InvalidArgument, SiloBridgeError
from silobridge.core.federation import (
    FederatedAnswer,
    FederatedBatchAnswer,
    merge_mode,
)
from silobridge.core.listings import (
    AdapterListing,
    SiloAction,
    SiloListing,
    SiloState,
    TrainProgress,
)
from silobridge.core.queries import FederatedBatch, FederatedQuery
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor
from silobridge.core.vectors import WireVector
from silobridge.rpc.coordinator_client import CoordinatorClient
from silobridge.rpc.silo_client import SiloClient
from silobridge.security.signed_query.signing import QuerySigner, load_client_signer

_UINT32_MAX = 2**32 - 1

# Queries per FederatedSearchBatch call: the coordinator's default [server] max_batch.
DEFAULT_MAX_BATCH = 256

# How long a listing of "every silo" is reused for queries that name no silos.
EVERY_SILO_SECONDS = 10.0


def _count(name: str, value: int, *, minimum: int) -> int:
    if not minimum <= value <= _UINT32_MAX:
        raise InvalidArgument(f"{name} must be at least {minimum}, got {value}")
    return value


def check_search_options(*, k: int, merge: str, rerank_depth: int = 0) -> None:
    """Refuse bad options before anything is sent (the coordinator enforces its own maximum k)."""
    _count("k", k, minimum=1)
    merge_mode(merge)
    _count("rerank_depth", rerank_depth, minimum=0)


@contextlib.contextmanager
def _answered_by(peer: str) -> Iterator[None]:
    """Name which of the client's two peers refused or failed: ``... (home silo at host:port)``.

    Errors raised here, before anything reached the peer, carry no status and pass unchanged.
    """
    try:
        yield
    except SiloBridgeError as error:
        if not error.status_name:
            raise
        named = type(error)(f"{error.peer_details or error.message} ({peer})")
        named.status_name = error.status_name
        named.peer_details = error.peer_details
        raise named from None


class FederatedClient:
    """``async with FederatedClient(config) as client: await client.query("…")``.

    Construct it inside a running event loop: it opens its two gRPC channels at once. With
    ``[tls]`` it reads the client's key once, here, and signs every query with it.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        # Before any channel is opened: a key that cannot sign leaves nothing to close.
        self._signer: QuerySigner | None = (
            None if config.tls is None else load_client_signer(config.tls.key, config.tls.cert)
        )
        self._home_peer = f"home silo at {config.home_silo}"
        self._coordinator_peer = f"coordinator at {config.coordinator}"
        # Each channel expects one identity: the query text goes to the home silo named in
        # client.toml and nobody else, whatever certificate answers at its address.
        self._audience = config.expected_coordinator()
        # "Every silo", as last listed: (when, names). A query naming no silos signs these.
        self._every: tuple[float, tuple[str, ...]] | None = None
        self._home = SiloClient(
            config.home_silo,
            config.tls,
            insecure=config.insecure,
            expect=config.expected_home_silo(),
        )
        self._coordinator = CoordinatorClient(
            config.coordinator,
            config.tls,
            insecure=config.insecure,
            timeout=config.timeout_seconds,
            expect=self._audience,
        )

    async def __aenter__(self) -> FederatedClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._home.close()
        await self._coordinator.close()

    async def embed(self, texts: Sequence[str]) -> tuple[FloatMatrix, SpaceDescriptor]:
        """Embed texts with the home silo's model: they stay inside the caller's organization."""
        with _answered_by(self._home_peer):
            return await self._home.embed_with_space(texts, timeout=self.config.timeout_seconds)

    async def search_vector(
        self,
        vector: npt.ArrayLike,
        source_space: str,
        *,
        k: int = 10,
        silos: Sequence[str] = (),
        merge: str = "calibrated",
        rerank_text: str = "",
        rerank_depth: int = 0,
    ) -> FederatedAnswer:
        """Search the federation with a vector of ``source_space`` (a registered silo's space id).

        ``silos`` empty means every registered silo: a signing client asks the coordinator
        (``ListSilos``) and signs their names, since a signed query always names its targets
        (the consortium policy still answers "denied" for those it may not query). A
        non-empty ``rerank_text`` is
        sent to every target silo whose policy accepts query text, which re-ranks its top
        ``rerank_depth`` hits with its own model (0: the coordinator's default depth).
        """
        wire = WireVector.of(vector)
        targets = tuple(name.strip() for name in silos if name.strip())
        k = _count("k", k, minimum=1)
        mode = merge_mode(merge)
        rerank_depth = _count("rerank_depth", rerank_depth, minimum=0)
        # Signed with our certificate's key over the very bytes sent: silos verify that this
        # query came from us, and a coordinator can neither alter nor replay it. The targets
        # and the coordinator (audience) are signed too, so no other caller can use it.
        signed = None
        if self._signer is not None and self._audience is not None:
            if not targets:
                targets = await self._every_silo()
            signed = self._signer(
                vector=wire,
                source_space=source_space,
                silos=targets,
                k=k,
                audience=self._audience,
                rerank_text=rerank_text,
            )
        query = FederatedQuery(
            vector=wire,
            source_space=source_space,
            k=k,
            silos=targets,
            merge=mode,
            rerank_text=rerank_text,
            rerank_depth=rerank_depth,
            signed=signed,
        )
        with _answered_by(self._coordinator_peer):
            return await self._coordinator.federated_search(query)

    async def search_vectors(
        self,
        vectors: npt.ArrayLike,
        source_space: str,
        *,
        k: int = 10,
        silos: Sequence[str] = (),
        merge: str = "calibrated",
        timeout: float | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> FederatedBatchAnswer:
        """Search the federation with many vectors of ``source_space`` (one per row), in
        batches of at most ``max_batch`` (the coordinator's ``[server] max_batch``): one
        signature, one call per batch, one call per silo. The answers come back in row order;
        the statuses are one per silo for all of them (the first failure of a silo shows).
        """
        rows = np.asarray(vectors, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise InvalidArgument(
                f"search_vectors takes a (count, dimension) matrix of queries, got {rows.shape}"
            )
        targets = tuple(name.strip() for name in silos if name.strip())
        k = _count("k", k, minimum=1)
        mode = merge_mode(merge)
        max_batch = _count("max_batch", max_batch, minimum=1)
        if self._signer is not None and self._audience is not None and not targets:
            targets = await self._every_silo()
        parts: list[FederatedBatchAnswer] = []
        for start in range(0, rows.shape[0], max_batch):
            wires = tuple(WireVector.of(row) for row in rows[start : start + max_batch])
            signed = None
            if self._signer is not None and self._audience is not None:
                # One signature over the whole batch, in order: no vector can be swapped.
                signed = self._signer.sign_batch(
                    vectors=wires,
                    source_space=source_space,
                    silos=targets,
                    k=k,
                    audience=self._audience,
                )
            batch = FederatedBatch(
                vectors=wires,
                source_space=source_space,
                k=k,
                silos=targets,
                merge=mode,
                signed=signed,
            )
            with _answered_by(self._coordinator_peer):
                parts.append(await self._coordinator.federated_search_batch(batch, timeout=timeout))
        return FederatedBatchAnswer.joined(parts)

    async def query_many(
        self,
        texts: Sequence[str],
        *,
        k: int = 10,
        silos: Sequence[str] = (),
        merge: str = "calibrated",
        timeout: float | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
    ) -> FederatedBatchAnswer:
        """Embed ``texts`` at the home silo (one Embed call per ``max_batch`` texts), then search
        the federation with their vectors in batches; the texts never leave the organization."""
        if not texts:
            raise InvalidArgument("no query texts given")
        for position, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgument(f"query text #{position} is empty")
        check_search_options(k=k, merge=merge)
        max_batch = _count("max_batch", max_batch, minimum=1)
        matrices: list[FloatMatrix] = []
        space: SpaceDescriptor | None = None
        for start in range(0, len(texts), max_batch):
            matrix, space = await self.embed(texts[start : start + max_batch])
            matrices.append(matrix)
        assert space is not None  # at least one text, so at least one Embed call
        return await self.search_vectors(
            np.concatenate(matrices),
            space.space_id,
            k=k,
            silos=silos,
            merge=merge,
            timeout=timeout,
            max_batch=max_batch,
        )

    async def query(
        self,
        text: str,
        *,
        k: int = 10,
        silos: Sequence[str] = (),
        merge: str = "calibrated",
        rerank: bool = False,
        rerank_depth: int = 0,
    ) -> FederatedAnswer:
        """Embed ``text`` at the home silo, then search the federation with its vector.

        By default the text never leaves the caller's organization. ``rerank=True`` opts in to
        two-stage re-ranking: the text itself is then sent, through the coordinator, to every
        target silo whose policy accepts query text.
        """
        if not text.strip():
            raise InvalidArgument("the query text is empty")
        check_search_options(k=k, merge=merge, rerank_depth=rerank_depth)
        matrix, space = await self.embed([text])
        return await self.search_vector(
            matrix[0],
            space.space_id,
            k=k,
            silos=silos,
            merge=merge,
            rerank_text=text if rerank else "",
            rerank_depth=rerank_depth,
        )

    async def _every_silo(self) -> tuple[str, ...]:
        """The names of every registered silo: "every silo", made explicit for signing.

        Listed again after ``EVERY_SILO_SECONDS``, not per query: a silo registered since then
        is searched once the list is renewed.
        """
        now = time.monotonic()
        if self._every is not None and now - self._every[0] < EVERY_SILO_SECONDS:
            return self._every[1]
        names = tuple(sorted({listing.silo for listing in await self.list_silos()}))
        if not names:
            raise InvalidArgument(
                "no silos are registered with the coordinator; there is nothing to search"
            )
        self._every = (now, names)
        return names

    async def list_silos(self) -> list[SiloListing]:
        with _answered_by(self._coordinator_peer):
            return await self._coordinator.list_silos()

    async def manage_silo(self, silo: str, action: SiloAction, reason: str = "") -> SiloState:
        """Disable, enable or remove a registered silo (``[policy] manage`` admins only)."""
        with _answered_by(self._coordinator_peer):
            return await self._coordinator.manage_silo(silo, action, reason)

    async def list_adapters(self) -> list[AdapterListing]:
        with _answered_by(self._coordinator_peer):
            return await self._coordinator.list_adapters()

    async def train(
        self,
        source_space: str,
        target_space: str,
        anchor_set: str,
        *,
        kind: str = "",
        version: str = "",
        prefer: int = 0,
        timeout: float | None = None,
    ) -> AsyncIterator[TrainProgress]:
        """Train an adapter at the coordinator (admins only), yielding its progress.

        No deadline by default: a fit takes minutes. ``kind`` empty means "auto", ``version``
        empty the newest version of the anchor set. ``prefer`` > 0: the anchor set is a pool
        and the adapter is trained on the ``prefer`` texts of it the two silos prefer (each
        must set ``[receiving] anchor_preferences = true``).
        """
        # An async generator (typed as an iterator): closed here, so that a caller that stops
        # iterating early does not leave the stream open.
        steps = cast(
            AsyncGenerator[TrainProgress, None],
            self._coordinator.train_adapter(
                source_space,
                target_space,
                anchor_set,
                kind=kind,
                version=version,
                prefer=prefer,
                timeout=timeout,
            ),
        )
        async with contextlib.aclosing(steps):
            with _answered_by(self._coordinator_peer):
                async for step in steps:
                    yield step
