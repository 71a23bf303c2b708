"""The Python SDK of a consortium member: embed at home, search the federation, manage adapters.

A query's text goes only to the caller's *home* silo (its own organization's, which embeds it);
the coordinator and the other silos receive the query vector. A translated vector can be inverted
by the silo that receives it, so a query is disclosed to every silo it is sent to: choose
``silos`` accordingly. gRPC failures propagate as ``grpc.aio.AioRpcError``; invalid arguments
found before anything is sent raise ``InvalidArgument``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from silobridge.client.config import ClientConfig
from silobridge.core.errors import InvalidArgument
from silobridge.core.spaces import FloatMatrix, SpaceDescriptor
from silobridge.rpc.convert import space_from_proto, vector_from_proto, vector_to_proto
from silobridge.rpc.silo_client import SiloClient
from silobridge.rpc.transport import open_channel
from silobridge.security.signed_query import sign_query
from silobridge.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc, silo_pb2

MERGE_MODES: Mapping[str, coordinator_pb2.MergeMode.ValueType] = {
    "calibrated": coordinator_pb2.MERGE_MODE_CALIBRATED,
    "rrf": coordinator_pb2.MERGE_MODE_RRF,
}
_STATE_NAMES: Mapping[common_pb2.SiloState.ValueType, str] = {
    common_pb2.SILO_STATE_OK: "ok",
    common_pb2.SILO_STATE_TIMEOUT: "timeout",
    common_pb2.SILO_STATE_UNAVAILABLE: "unavailable",
    common_pb2.SILO_STATE_DENIED: "denied",
    common_pb2.SILO_STATE_ERROR: "error",
}
_UINT32_MAX = 2**32 - 1


@dataclass(frozen=True)
class ResultHit:
    """One merged hit: the silo's opaque doc id, its own-space score, and the merge score."""

    silo: str
    doc_id: str
    score: float
    merged_score: float
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ResultStatus:
    """How one silo's part of a federated call went."""

    silo: str
    state: str  # "ok", "timeout", "unavailable", "denied" or "error"
    message: str
    adapter_id: str  # "" when the spaces matched and no translation was needed
    hit_count: int
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return self.state == "ok"


@dataclass(frozen=True)
class FederatedResult:
    hits: list[ResultHit]
    statuses: list[ResultStatus]
    source_space: str

    @property
    def failed(self) -> list[ResultStatus]:
        """The silos that did not answer fully: the result is partial when this is not empty."""
        return [status for status in self.statuses if not status.ok]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dictionary: ``{"source_space", "hits": [...], "statuses": [...]}``."""
        return {
            "source_space": self.source_space,
            "hits": [asdict(hit) for hit in self.hits],
            "statuses": [asdict(status) for status in self.statuses],
        }


@dataclass(frozen=True)
class SiloView:
    """A registered silo as the coordinator sees it (probed just now)."""

    silo: str
    endpoint: str
    org: str
    space: SpaceDescriptor | None
    healthy: bool
    document_count: int
    message: str
    registered_unix: int


@dataclass(frozen=True)
class AdapterView:
    """A stored adapter; ``version`` is the version of the anchor set it was trained on."""

    adapter_id: str
    kind: str
    source: SpaceDescriptor
    target: SpaceDescriptor
    anchor_set: str
    version: str
    anchor_set_sha256: str
    metrics: dict[str, float]
    created_unix: int
    stale: bool
    stale_reason: str


@dataclass(frozen=True)
class TrainProgress:
    """One step of a training run; the last one carries the stored adapter."""

    stage: str
    message: str
    adapter: AdapterView | None = None


def _space_or_none(message: common_pb2.SpaceDescriptor) -> SpaceDescriptor | None:
    return space_from_proto(message) if message.space_id else None


def result_from_proto(
    reply: coordinator_pb2.FederatedSearchResponse, source_space: str
) -> FederatedResult:
    return FederatedResult(
        hits=[
            ResultHit(
                silo=hit.silo,
                doc_id=hit.hit.doc_id,
                score=hit.hit.score,
                merged_score=hit.merged_score,
                fields=dict(hit.hit.fields),
            )
            for hit in reply.hits
        ],
        statuses=[
            ResultStatus(
                silo=status.silo,
                # A state this client does not know (a newer coordinator) is reported as an error.
                state=_STATE_NAMES.get(status.state, "error"),
                message=status.message,
                adapter_id=status.adapter_id,
                hit_count=status.hit_count,
                elapsed_ms=status.elapsed_ms,
            )
            for status in reply.statuses
        ],
        source_space=source_space,
    )


def silo_from_proto(message: coordinator_pb2.SiloInfo) -> SiloView:
    return SiloView(
        silo=message.silo,
        endpoint=message.endpoint,
        org=message.org,
        space=_space_or_none(message.space),
        healthy=message.healthy,
        document_count=message.document_count,
        message=message.message,
        registered_unix=message.registered_unix,
    )


def adapter_from_proto(message: coordinator_pb2.AdapterInfo) -> AdapterView:
    return AdapterView(
        adapter_id=message.adapter_id,
        kind=message.kind,
        source=space_from_proto(message.source),
        target=space_from_proto(message.target),
        anchor_set=message.anchor_set,
        version=message.anchor_set_version,
        anchor_set_sha256=message.anchor_set_sha256,
        metrics=dict(message.metrics),
        created_unix=message.created_unix,
        stale=message.stale,
        stale_reason=message.stale_reason,
    )


def _merge_mode(merge: str) -> coordinator_pb2.MergeMode.ValueType:
    try:
        return MERGE_MODES[merge]
    except KeyError:
        raise InvalidArgument(
            f"unknown merge mode {merge!r}; choose one of {', '.join(MERGE_MODES)}"
        ) from None


def _count(name: str, value: int, *, minimum: int) -> int:
    if not minimum <= value <= _UINT32_MAX:
        raise InvalidArgument(f"{name} must be at least {minimum}, got {value}")
    return value


def check_search_options(*, k: int, merge: str, rerank_depth: int = 0) -> None:
    """Refuse bad options before anything is sent (the coordinator enforces its own maximum k)."""
    _count("k", k, minimum=1)
    _merge_mode(merge)
    _count("rerank_depth", rerank_depth, minimum=0)


class FederatedClient:
    """``async with FederatedClient(config) as client: await client.query("…")``.

    Construct it inside a running event loop: it opens its two gRPC channels at once.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._home = SiloClient(config.home_silo, config.tls, insecure=config.insecure)
        self._channel = open_channel(config.coordinator, config.tls, insecure=config.insecure)
        self._coordinator = coordinator_pb2_grpc.CoordinatorServiceStub(self._channel)
        self._tls_bytes: tuple[bytes, bytes, bytes] | None = None

    def _tls_material(self) -> tuple[bytes, bytes, bytes]:
        if self._tls_bytes is None:
            assert self.config.tls is not None
            self._tls_bytes = self.config.tls.read()
        return self._tls_bytes

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
        await self._channel.close()

    async def embed(self, texts: Sequence[str]) -> tuple[FloatMatrix, SpaceDescriptor]:
        """Embed texts with the home silo's model: they stay inside the caller's organization."""
        reply = await self._home.stub.Embed(
            silo_pb2.EmbedRequest(texts=list(texts)), timeout=self.config.timeout_seconds
        )
        space = space_from_proto(reply.space)
        if len(reply.vectors) != len(texts):
            raise InvalidArgument(
                f"home silo {self.config.home_silo} returned {len(reply.vectors)} vectors "
                f"for {len(texts)} texts"
            )
        rows = [vector_from_proto(vector) for vector in reply.vectors]
        matrix = np.stack(rows) if rows else np.zeros((0, space.dimension), np.float32)
        return matrix, space

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
    ) -> FederatedResult:
        """Search the federation with a vector of ``source_space`` (a registered silo's space id).

        ``silos`` empty means every silo the caller may query. A non-empty ``rerank_text`` is
        sent to every target silo whose policy accepts query text, which re-ranks its top
        ``rerank_depth`` hits with its own model (0: the coordinator's default depth).
        """
        wire = vector_to_proto(vector)
        targets = [name.strip() for name in silos if name.strip()]
        request = coordinator_pb2.FederatedSearchRequest(
            vector=wire,
            source_space=source_space,
            k=_count("k", k, minimum=1),
            silos=targets,
            merge=_merge_mode(merge),
            rerank_text=rerank_text,
            rerank_depth=_count("rerank_depth", rerank_depth, minimum=0),
        )
        if self.config.tls is not None:
            # Signed with our certificate's key: silos verify that this very query came from
            # us, and a coordinator can neither alter nor replay it.
            cert, key, _ca = self._tls_material()
            request.signed.CopyFrom(
                sign_query(
                    vector=wire,
                    source_space=source_space,
                    silos=targets,
                    k=k,
                    key_pem=key,
                    certificate_pem=cert,
                    rerank_text=rerank_text,
                )
            )
        reply = await self._coordinator.FederatedSearch(
            request, timeout=self.config.timeout_seconds
        )
        return result_from_proto(reply, source_space)

    async def query(
        self,
        text: str,
        *,
        k: int = 10,
        silos: Sequence[str] = (),
        merge: str = "calibrated",
        rerank: bool = False,
        rerank_depth: int = 0,
    ) -> FederatedResult:
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

    async def list_silos(self) -> list[SiloView]:
        reply = await self._coordinator.ListSilos(
            coordinator_pb2.ListSilosRequest(), timeout=self.config.timeout_seconds
        )
        return [silo_from_proto(silo) for silo in reply.silos]

    async def list_adapters(self) -> list[AdapterView]:
        reply = await self._coordinator.ListAdapters(
            coordinator_pb2.ListAdaptersRequest(), timeout=self.config.timeout_seconds
        )
        return [adapter_from_proto(adapter) for adapter in reply.adapters]

    async def train(
        self,
        source_space: str,
        target_space: str,
        anchor_set: str,
        *,
        kind: str = "",
        version: str = "",
        timeout: float | None = None,
    ) -> AsyncIterator[TrainProgress]:
        """Train an adapter at the coordinator (admins only), yielding its progress.

        No deadline by default: a fit takes minutes. ``kind`` empty means "auto", ``version``
        empty the newest version of the anchor set.
        """
        request = coordinator_pb2.TrainAdapterRequest(
            source_space=source_space,
            target_space=target_space,
            anchor_set=anchor_set,
            kind=kind,
            anchor_set_version=version,
        )
        call = self._coordinator.TrainAdapter(request, timeout=timeout)
        try:
            async for message in call:
                adapter = None
                if message.HasField("adapter"):
                    adapter = adapter_from_proto(message.adapter)
                yield TrainProgress(stage=message.stage, message=message.message, adapter=adapter)
        finally:
            # A caller that stops iterating early must not leave the stream open.
            call.cancel()
