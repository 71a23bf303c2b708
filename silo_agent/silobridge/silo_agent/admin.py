"""Live changes to a serving silo: its own admins add, update and delete documents over mTLS.

Each batch is checked like a corpus line, embedded with the silo's model (unchanged documents
are not), and stored durably before it is acknowledged; the next search sees it. Once enough
changes are served beside the index, the index is rebuilt in the background to fold them in.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import AsyncGenerator, AsyncIterable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Protocol

from silobridge.core.documents import DeleteReceipt, Document, WriteReceipt
from silobridge.core.errors import InvalidArgument, ResourceExhausted
from silobridge.core.migration import MigrationCommand, MigrationPlan, MigrationStatus
from silobridge.core.offload import off_loop
from silobridge.security.gatekeeper import Gatekeeper
from silobridge.security.identity import PeerIdentity
from silobridge.silo_agent.ingest import MAX_ID_CHARS, checked_document
from silobridge.silo_agent.migration.engine import MigrationEngine
from silobridge.silo_agent.migration.plan import plan_migration
from silobridge.silo_agent.service import SiloService
from silobridge.silo_agent.store.data import SiloData

log = logging.getLogger(__name__)


class WriteObserver(Protocol):
    """Told of every durable live change (the server's metrics: live ingest progress)."""

    def written(self, inserted: int, updated: int, unchanged: int) -> None: ...

    def deleted(self, count: int) -> None: ...


class _Unobserved:
    def written(self, inserted: int, updated: int, unchanged: int) -> None:
        pass

    def deleted(self, count: int) -> None:
        pass


class SiloAdmin:
    """``write`` and ``delete`` as the silo's admins call them (``[access] admin``)."""

    def __init__(
        self,
        service: SiloService,
        executor: Executor,
        gatekeeper: Gatekeeper,
        compactor: IndexCompactor,
        migration: MigrationEngine,
    ) -> None:
        self.service = service
        self.executor = executor
        self.gatekeeper = gatekeeper
        self.compactor = compactor
        self.migration = migration
        # Migration commands run for minutes (a start fits adapters, a cut-over builds an
        # index): on threads of their own, never on the query workers.
        self.commands = ThreadPoolExecutor(max_workers=2, thread_name_prefix="silo-migration")
        self.observer: WriteObserver = _Unobserved()  # the server's metrics, when on

    def _admit(self, caller: PeerIdentity) -> PeerIdentity:
        caller = self.gatekeeper.admit_peer(caller)  # the per-peer budget, before authorization
        self.service.authorize("admin", caller)
        self.gatekeeper.limit(caller)
        return caller

    async def write(
        self, caller: PeerIdentity, batches: AsyncIterable[Sequence[Document]]
    ) -> AsyncGenerator[WriteReceipt, None]:
        """Store each batch as it arrives; one receipt per batch, once it is durable."""
        caller = self._admit(caller)  # before reading any document
        first = True
        async for batch in batches:
            if not first:
                self.gatekeeper.limit(caller)  # every batch spends from the admin's budget
            first = False
            documents = self._checked(batch)
            receipt = await off_loop(self.executor, functools.partial(self._store, documents))
            self.observer.written(receipt.inserted, receipt.updated, receipt.unchanged)
            # One line per durable batch: a stream cut off later still leaves its record.
            self.gatekeeper.record(
                caller,
                "WriteDocuments",
                allowed=True,
                results=len(documents),
                inserted=receipt.inserted,
                updated=receipt.updated,
                unchanged=receipt.unchanged,
            )
            self.compactor.maybe_start()
            yield receipt

    async def delete(self, caller: PeerIdentity, doc_ids: Sequence[str]) -> DeleteReceipt:
        caller = self._admit(caller)
        ids = self._checked_ids(doc_ids)
        data = self.service.data
        counts = await off_loop(self.executor, lambda: self.migration.delete(ids))
        self.observer.deleted(len(counts.deleted))
        self.gatekeeper.record(caller, "DeleteDocuments", allowed=True, results=len(counts.deleted))
        self.compactor.maybe_start()
        return DeleteReceipt(len(counts.deleted), counts.missing, data.count())

    async def plan_migration(
        self, caller: PeerIdentity, to_model: str, sample_size: int
    ) -> MigrationPlan:
        """What moving to ``to_model`` would take (loads and times the model; changes nothing)."""
        caller = self._admit(caller)
        plan = await off_loop(
            self.executor, functools.partial(plan_migration, self.service, to_model, sample_size)
        )
        self.gatekeeper.record(
            caller, "PlanMigration", allowed=True, results=plan.documents, to_model=to_model
        )
        return plan

    async def control_migration(
        self,
        caller: PeerIdentity,
        command: MigrationCommand,
        to_model: str,
        sample_size: int,
        cpu_share: float,
    ) -> MigrationStatus:
        """One migration command (``migration/engine``); a status is a read, the rest change."""
        caller = self._admit(caller)
        status = await off_loop(
            self.commands,
            functools.partial(self.migration.control, command, to_model, sample_size, cpu_share),
        )
        self.gatekeeper.record(
            caller,
            "ControlMigration",
            allowed=True,
            command=command.value,
            to_model=to_model or None,
            state=status.state.value,
        )
        return status

    def _store(self, documents: Sequence[Document]) -> WriteReceipt:
        counts = self.migration.store(documents)
        data = self.service.data
        return WriteReceipt(counts.inserted, counts.updated, counts.unchanged, data.count())

    def _check_count(self, count: int, what: str) -> None:
        limit = self.service.config.limits.max_embed_texts
        if not count:
            raise InvalidArgument(f"no {what} given; send at least one")
        if count > limit:
            raise ResourceExhausted(
                f"{count} {what} in one request; this silo accepts at most {limit}: split it"
            )

    def _checked(self, batch: Sequence[Document]) -> list[Document]:
        limits = self.service.config.limits
        self._check_count(len(batch), "documents")
        documents: list[Document] = []
        seen: set[str] = set()
        for position, doc in enumerate(batch):
            checked = checked_document(doc.doc_id, doc.text, doc.metadata)
            if isinstance(checked, str):
                raise InvalidArgument(f"document #{position} ({doc.doc_id!r:.80}): {checked}")
            metadata_chars = sum(len(k) + len(v) for k, v in checked.metadata.items())
            if metadata_chars > limits.max_text_chars:
                raise ResourceExhausted(
                    f"document #{position} ({doc.doc_id!r:.80}) has {metadata_chars} characters "
                    f"of metadata; the limit is {limits.max_text_chars}"
                )
            if len(checked.text) > limits.max_text_chars:
                raise ResourceExhausted(
                    f"document #{position} ({doc.doc_id!r:.80}) has {len(checked.text)} "
                    f"characters; the limit is {limits.max_text_chars}"
                )
            if checked.doc_id in seen:
                raise InvalidArgument(f"document id {doc.doc_id!r:.80} appears twice in a batch")
            seen.add(checked.doc_id)
            documents.append(checked)
        return documents

    def _checked_ids(self, doc_ids: Sequence[str]) -> list[str]:
        self._check_count(len(doc_ids), "document ids")
        for doc_id in doc_ids:
            if not doc_id.strip() or len(doc_id) > MAX_ID_CHARS:
                raise InvalidArgument(f"document id {doc_id!r:.80} is empty or too long")
        return list(doc_ids)


class IndexCompactor:
    """Folds the changes served beside the index into a new one, in its own thread, one at a
    time: a rebuild of a large index takes minutes and must not hold a query worker."""

    def __init__(self, data: SiloData) -> None:
        self.data = data
        self._running = threading.Lock()
        self._thread: threading.Thread | None = None

    def maybe_start(self) -> bool:
        """Start a rebuild if the overlay is large enough and none runs; True if one started."""
        if not self.data.needs_compaction or not self._running.acquire(blocking=False):
            return False
        self._thread = threading.Thread(target=self._rebuild, name="silo-rebuild", daemon=True)
        self._thread.start()
        return True

    def _rebuild(self) -> None:
        try:
            for manifest in self.data.compact():
                log.info("index rebuilt with the live changes: %d documents", manifest.count)
        except Exception:
            log.exception("rebuilding the index with the live changes failed")
        finally:
            self._running.release()

    def join(self, timeout: float) -> None:
        """Wait for a running rebuild (at shutdown, before the data directory is closed)."""
        if self._thread is not None:
            self._thread.join(timeout)
