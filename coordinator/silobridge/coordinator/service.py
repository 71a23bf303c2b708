"""The coordinator's domain, one method per RPC: each checks its caller against the consortium
policy once, then hands the work to the part that does it (registry, anchor exchange, trainer,
federated search). A silo's own policy is checked again by the silo, which has the last word.

No gRPC and no protobuf here: the servicer unpacks messages with ``silobridge.rpc.convert`` and
calls these; silos are reached through a ``SiloGateway``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from concurrent.futures import Executor

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from silobridge.audit.heads import AuditHead
from silobridge.coordinator.anchors.catalogue import AnchorCatalogue
from silobridge.coordinator.anchors.exchange import AnchorExchange
from silobridge.coordinator.audit_heads import AuditHeadBook
from silobridge.coordinator.config import CoordinatorConfig
from silobridge.coordinator.registry import SiloRegistry
from silobridge.coordinator.revocation import SiloRevocation
from silobridge.coordinator.search.batch import BatchSearch
from silobridge.coordinator.search.fanout import FederatedSearch
from silobridge.coordinator.search.planner import SearchPlanner
from silobridge.coordinator.search.translation import Translator
from silobridge.coordinator.silo_gateway import SiloGateway
from silobridge.coordinator.state.records import SiloRecord
from silobridge.coordinator.state.store import CoordinatorState
from silobridge.coordinator.training.run import AdapterTrainer
from silobridge.core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from silobridge.core.federation import FederatedAnswer, FederatedBatchAnswer
from silobridge.core.listings import (
    AdapterFiles,
    AdapterListing,
    AnchorChunk,
    AnchorVectors,
    SiloAction,
    SiloListing,
    SiloState,
    TrainProgress,
)
from silobridge.core.offload import off_loop
from silobridge.core.queries import FederatedBatch, FederatedQuery
from silobridge.security.denylist import Denylist
from silobridge.security.identity import PeerIdentity, Role


class CoordinatorService:
    """Everything the coordinator does, independent of how it is called."""

    def __init__(
        self,
        config: CoordinatorConfig,
        state: CoordinatorState,
        catalogue: AnchorCatalogue,
        gateway: SiloGateway,
        signing_key: Ed25519PrivateKey,
        executor: Executor,
        train_executor: Executor,
        revocation: SiloRevocation | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.gateway = gateway
        self.executor = executor
        self.train_executor = train_executor
        # Without one given, the records and the denylist still decide, with no TLS probe.
        self.revocation = revocation or SiloRevocation(Denylist(config.policy.denylist), None)
        self.registry = SiloRegistry(
            state,
            gateway,
            executor,
            self.revocation,
            probe_cache_seconds=config.server.probe_cache_seconds,
        )
        self.anchors = AnchorExchange(
            state,
            catalogue,
            gateway,
            executor,
            stream_seconds=config.server.anchor_stream_seconds,
        )
        self.trainer = AdapterTrainer(
            config.training, state, catalogue, self.anchors, signing_key, executor, train_executor
        )
        translator = Translator(state, signing_key.public_key())
        planner = SearchPlanner(state, config.policy, translator, self.revocation)
        self.search = FederatedSearch(config, planner, gateway, executor)
        self.batch_search = BatchSearch(self.search)
        # The silos' audit checkpoint heads: evidence kept outside each silo's host.
        self.audit_heads = AuditHeadBook.open(config.state_dir)

    def _authorize(self, action: str, caller: PeerIdentity) -> None:
        if not self.config.policy.allows(action, caller):
            who = caller.spiffe_id or "an unauthenticated caller"
            raise PermissionDenied(f"the consortium policy does not allow {who} to {action}")

    async def register_silo(self, caller: PeerIdentity, endpoint: str) -> SiloRecord:
        """RegisterSilo: record the calling silo at ``endpoint`` (named by its certificate)."""
        self._authorize("register", caller)
        return await self.registry.register(caller, endpoint)

    async def list_silos(self, caller: PeerIdentity) -> list[SiloListing]:
        """ListSilos: every registered silo, probed just now."""
        self._authorize("list", caller)
        return await self.registry.list_silos()

    async def anchor_set(
        self, caller: PeerIdentity, name: str, version: str = ""
    ) -> AsyncIterator[AnchorChunk]:
        """GetAnchorSet: an anchor set's texts in chunks (``version`` empty: the newest)."""
        self._authorize("anchors", caller)
        async for chunk in self.anchors.chunks(name, version):
            yield chunk

    async def submit_anchor_embeddings(
        self, caller: PeerIdentity, chunks: AsyncIterator[AnchorVectors]
    ) -> int:
        """SubmitAnchorEmbeddings: store a silo's vectors of a whole anchor set; how many."""
        self._authorize("anchors", caller)
        return await self.anchors.submit(caller, chunks)

    async def train_adapter(
        self,
        caller: PeerIdentity,
        *,
        source_space: str,
        target_space: str,
        anchor_set: str,
        version: str = "",
        kind: str = "",
        prefer: int = 0,
    ) -> AsyncIterator[TrainProgress]:
        """TrainAdapter: fit, calibrate, sign and store an adapter; progress, the adapter last."""
        self._authorize("train", caller)
        progress = self.trainer.train(
            source_space=source_space,
            target_space=target_space,
            anchor_set=anchor_set,
            version=version,
            kind=kind,
            prefer=prefer,
        )
        async for step in progress:
            yield step

    async def list_adapters(self, caller: PeerIdentity) -> list[AdapterListing]:
        """ListAdapters: every stored adapter, with why it is stale where it is."""
        self._authorize("list", caller)
        return await self.registry.list_adapters()

    async def federated_search(
        self, caller: PeerIdentity, query: FederatedQuery, *, time_remaining: float | None = None
    ) -> FederatedAnswer:
        """FederatedSearch: the merged hits of every silo asked, and each one's status.

        Who may query which silo is the ``[policy.query]`` table, checked per silo in the plan.
        """
        return await self.search.answer(caller, query, time_remaining=time_remaining)

    async def federated_search_batch(
        self, caller: PeerIdentity, batch: FederatedBatch, *, time_remaining: float | None = None
    ) -> FederatedBatchAnswer:
        """FederatedSearchBatch: per query its merged hits, and each silo's status once."""
        return await self.batch_search.answer(caller, batch, time_remaining=time_remaining)

    async def get_adapter(self, caller: PeerIdentity, adapter_id: str) -> AdapterFiles:
        """GetAdapter: the signed artifact of ``adapter_id``, byte for byte."""
        self._authorize("adapters", caller)
        return await self.registry.adapter_files(adapter_id)

    async def record_audit_head(self, caller: PeerIdentity, head: AuditHead) -> int:
        """RecordAuditHead: keep a registered silo's newest signed audit checkpoint head."""
        self._authorize("register", caller)
        if caller.role != Role.SILO:
            raise PermissionDenied(
                f"only silos record audit heads here; {caller.spiffe_id or 'this caller'} is not"
            )
        try:
            self.state.silo(caller.name)
        except NotFound:
            raise FailedPrecondition(
                f"silo {caller.name!r} is not registered; register before recording audit heads"
            ) from None
        return await off_loop(self.executor, lambda: self.audit_heads.record(caller.name, head))

    async def list_audit_heads(self, caller: PeerIdentity, silo: str) -> list[AuditHead]:
        """ListAuditHeads: the audit checkpoint heads recorded for ``silo``, for auditors."""
        self._authorize("list", caller)
        return await off_loop(self.executor, lambda: self.audit_heads.heads(silo))

    async def manage_silo(
        self, caller: PeerIdentity, silo: str, action: SiloAction | None, reason: str = ""
    ) -> SiloState:
        """ManageSilo: disable, enable or remove a registered silo (``[policy] manage``)."""
        self._authorize("manage", caller)
        if action is None:
            raise InvalidArgument("unknown silo action; send disable, enable or remove")
        return await self.registry.manage(caller, silo, action, reason)

    async def close(self) -> None:
        """Close silo links, stop the worker pools (dropping queued work) and close the state."""
        await self.search.silo_calls.close()
        await self.gateway.close()
        for pool in (self.executor, self.train_executor):
            pool.shutdown(wait=True, cancel_futures=True)
        self.state.close()
        self.audit_heads.close()
