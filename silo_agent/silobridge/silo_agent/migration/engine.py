"""The migration engine inside a serving silo: start, pause, resume, cut over, roll back, finish.

States and what is on disk in each are in docs/MIGRATION.md. Commands change the durable record
first (``record``), then what is served; a restart (``recover``) rebuilds what is served from the
record, so ``kill -9`` at any point leaves a state the next start resumes. Writes are dual while
a migration runs: each document is embedded by both models and stored in both spaces in one
transaction; deletes apply to both.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence

from silobridge.adapters.artifact import load_adapter
from silobridge.core.documents import Document
from silobridge.core.errors import FailedPrecondition, InvalidArgument
from silobridge.core.migration import MigrationCommand, MigrationState, MigrationStatus
from silobridge.core.spaces import SpaceDescriptor
from silobridge.embedding.embedders import Embedder
from silobridge.silo_agent.ingest import store_documents
from silobridge.silo_agent.migration import files, record
from silobridge.silo_agent.migration.local_adapters import DEFAULT_SAMPLE, LocalAdapters, fit_local
from silobridge.silo_agent.migration.plan import load_model
from silobridge.silo_agent.migration.record import MigrationRecord, Stage
from silobridge.silo_agent.migration.reencode import Reencoder
from silobridge.silo_agent.routes import Route, RouteTable
from silobridge.silo_agent.service import SiloService
from silobridge.silo_agent.store import journal
from silobridge.silo_agent.store.rows import DeleteCounts, UpsertCounts, content_hash

log = logging.getLogger(__name__)
DEFAULT_CPU_SHARE = 0.5


class MigrationEngine:
    """One silo's migration; every method but ``store`` is an admin command (blocking)."""

    def __init__(
        self,
        service: SiloService,
        source_model: str,
        *,
        after_batch: Callable[[], object] = lambda: None,
        primary_changed: Callable[[], object] = lambda: None,
    ) -> None:
        self.service = service
        self.data = service.data
        self.source_model = source_model
        self.source_embedder = service.embedder
        self.after_batch = after_batch  # the compaction check
        self.primary_changed = primary_changed  # re-register with the coordinator
        self.record: MigrationRecord | None = None
        self.target_embedder: Embedder | None = None
        self.adapters: LocalAdapters | None = None
        self.reencoder: Reencoder | None = None
        self._commands = threading.Lock()  # one command at a time
        self._writes = threading.Lock()  # dual writes against state changes

    # --- commands ---------------------------------------------------------------------------

    def control(
        self, command: MigrationCommand, to_model: str = "", sample: int = 0, share: float = 0.0
    ) -> MigrationStatus:
        if share and not 0.0 < share <= 1.0:
            raise InvalidArgument(f"cpu_share must be in (0, 1], got {share}")
        if command is MigrationCommand.STATUS:
            return self.status()  # a read: never waits behind a running command
        with self._commands:
            message = {
                MigrationCommand.STATUS: lambda: "",
                MigrationCommand.START: lambda: self._start(to_model, sample, share),
                MigrationCommand.PAUSE: self._pause,
                MigrationCommand.RESUME: lambda: self._resume(share),
                MigrationCommand.CUTOVER: self._cutover,
                MigrationCommand.ROLLBACK: self._rollback,
                MigrationCommand.FINISH: self._finish,
            }[command]()
            return self.status(message)

    def _start(self, to_model: str, sample: int, share: float) -> str:
        if self.record is not None:
            raise FailedPrecondition(
                f"a migration to {self.record.target_model} is under way "
                f"({self.record.stage.value}); roll it back or finish it first"
            )
        embedder = load_model(to_model, self.service.config.server.threads)
        source = self.service.space
        if embedder.space.fingerprint == source.fingerprint:
            raise FailedPrecondition(
                f"the silo already serves space {source.space_id}: there is nothing to migrate"
            )
        # Leftovers of a rollback cut short by a crash.
        files.remove_target_files(self.data.data_dir, self.data.home)
        journal.clear(self.data.docstore)
        limits = self.service.config.limits
        adapters = fit_local(
            self.data.docstore, embedder, sample or DEFAULT_SAMPLE, limits.batch_size
        )
        adapters.save(files.adapters_dir(self.data.data_dir), source, embedder.space)
        new = MigrationRecord(
            stage=Stage.REENCODING,
            source_model=self.source_model,
            target_model=to_model,
            source=source,
            target=embedder.space,
            cpu_share=share or DEFAULT_CPU_SHARE,
            anchors=adapters.anchors,
            forward_ndcg=float(adapters.forward.metrics.get("heldout_ndcg@10", 0.0)),
            backward_ndcg=float(adapters.backward.metrics.get("heldout_ndcg@10", 0.0)),
            agreement=adapters.agreement,
            started_at=record.now(),
        )
        with self._writes:
            record.save(self.data.docstore, new)  # from here a restart resumes the migration
            self.record, self.target_embedder, self.adapters = new, embedder, adapters
        try:
            self._serve(new)
        except Exception:
            self._rollback()  # a start that cannot serve both spaces leaves none of itself
            raise
        self.primary_changed()  # registers again: the coordinator learns the space also served
        return (
            f"answering in {embedder.space.space_id} now; re-encoding "
            f"{self.data.count()} documents in the background"
        )

    def _pause(self) -> str:
        current = self._require(Stage.REENCODING)
        self._stop_reencoder()
        self._save(current.with_stage(Stage.PAUSED))
        return "re-encode paused; both spaces are still answered"

    def _resume(self, share: float) -> str:
        current = self._require(Stage.PAUSED, Stage.REENCODING)
        self._stop_reencoder()
        resumed = current.with_stage(Stage.REENCODING, cpu_share=share or current.cpu_share)
        self._save(resumed)
        self._start_reencoder(resumed)
        return f"re-encode running at a CPU share of {resumed.cpu_share:g}"

    def _cutover(self) -> str:
        current = self._require(Stage.REENCODING, Stage.PAUSED)
        target = self.data.target
        remaining = journal.progress(self.data.docstore).remaining
        if target is None or remaining:
            raise FailedPrecondition(
                f"{remaining} documents are not re-encoded yet; cut over once status says ready"
            )
        self._stop_reencoder()
        self.data.rebuild_generation(target)  # the new primary serves from a full index
        with self._writes:
            self._save(current.with_stage(Stage.CUT_OVER))  # the one durable pointer swap
            self._serve_primary(target_primary=True)
        self.primary_changed()
        old = current.source.space_id
        return (
            f"primary space is now {current.target.space_id}; queries in {old} (and partners' "
            f"adapters into {old}) are answered from the old generation until finish, then "
            f"through this silo's local adapter: train adapters into {current.target.space_id}"
        )

    def _rollback(self) -> str:
        current = self._require(Stage.REENCODING, Stage.PAUSED, Stage.CUT_OVER)
        self._stop_reencoder()
        # No rebuild may save into index-next/ after it is removed, and no write slip between.
        with self._writes, self.data.exclusive():
            self.data.docstore.delete_meta(record.RECORD_KEY)  # the pointer back, durably
            self.record = None
            self.data.close_target()
            self.service.embedder = self.source_embedder
            self.service.routes = RouteTable.native(self.data.source, primary=self.data.source)
            journal.clear(self.data.docstore)
            files.remove_target_files(self.data.data_dir, self.data.home)
            self.data.refresh()
        # Also before a cut-over: the coordinator must stop routing the new space here.
        self.primary_changed()
        return f"rolled back to {current.source.space_id}; the old index was never changed"

    def _finish(self) -> str:
        current = self._require(Stage.CUT_OVER)
        assert self.target_embedder is not None and self.adapters is not None
        # Nothing else writes, refreshes or rebuilds from the commit to the swap: the source
        # generation still served meanwhile must not read the promoted rows as its own.
        with self._writes, self.data.exclusive():
            journal.promote(self.data.docstore, current.target, Stage.FINISHING.value)
            self._complete_finish(current)
            self.source_embedder, self.source_model = self.target_embedder, current.target_model
            self.service.embedder = self.target_embedder
            generation = self.data.promote_target(current.target)
            self.service.routes = RouteTable.native(generation, primary=generation).with_route(
                Route(current.source, generation, self.adapters.backward)
            )
            self.record, self.target_embedder = None, None
        return (
            f"finished: the old generation is dropped; set model = {current.target_model!r} in "
            "silo.toml. Old-space queries go through the silo's local adapter."
        )

    def _complete_finish(self, current: MigrationRecord) -> None:
        files.promote_files(self.data.data_dir, self.data.home)
        record.retire(self.data.docstore, current)
        self.data.docstore.delete_meta(record.RECORD_KEY)

    # --- serving ----------------------------------------------------------------------------

    def recover(self, target_embedder: Embedder | None) -> None:
        """At start-up: serve what the record says, and resume a running re-encode."""
        current = record.load(self.data.docstore)
        if current is None:
            retired = record.retired(self.data.docstore)
            if retired is not None:
                self._route_retired(retired.space)
            return
        assert target_embedder is not None
        self.record, self.target_embedder = current, target_embedder
        self.adapters = LocalAdapters.load(
            files.adapters_dir(self.data.data_dir), current.source, current.target
        )
        self._serve(current)

    def _serve(self, current: MigrationRecord) -> None:
        """Both spaces answered: new-space queries through the forward adapter until every
        document has a vector in the new space (provisional or re-encoded), then natively."""
        assert self.adapters is not None
        source = self.data.source
        self.service.routes = RouteTable.native(source, primary=source).with_route(
            Route(current.target, source, self.adapters.forward)
        )
        journal.provisional(self.data.docstore, self.adapters.backward.apply)
        target = self.data.open_target(current.target)
        if target.index is None or target.needs_compaction:
            self.data.rebuild_generation(target)
        self._serve_primary(target_primary=current.stage is Stage.CUT_OVER)
        if current.stage is Stage.REENCODING:
            self._start_reencoder(current)

    def _serve_primary(self, *, target_primary: bool) -> None:
        target, source = self.data.target, self.data.source
        assert target is not None and self.target_embedder is not None
        primary = target if target_primary else source
        self.data.set_primary(primary)
        self.service.embedder = self.target_embedder if target_primary else self.source_embedder
        self.service.routes = RouteTable.native(source, target, primary=primary)

    def _route_retired(self, old_space: SpaceDescriptor) -> None:
        directory = files.retired_dir(self.data.data_dir) / "backward"
        if not directory.is_dir():
            return
        adapter = load_adapter(directory, expected_source=old_space).adapter
        source = self.data.source
        self.service.routes = RouteTable.native(source, primary=source).with_route(
            Route(old_space, source, adapter)
        )

    def store(self, documents: Sequence[Document]) -> UpsertCounts:
        """A live write: in both spaces while migrating (one transaction), else as usual."""
        limits = self.service.config.limits
        with self._writes:
            target = self.target_embedder if self.record is not None else None
            if target is None:
                return store_documents(
                    documents,
                    self.data,
                    self.service.embedder,
                    batch_size=limits.batch_size,
                    live=True,
                )
            stored = self.data.stored_hashes(doc.doc_id for doc in documents)
            changed = [doc for doc in documents if stored.get(doc.doc_id) != content_hash(doc)]
            if not changed:
                return UpsertCounts(unchanged=len(documents))
            texts = [doc.text for doc in changed]
            old = self.source_embedder.embed(texts, batch_size=limits.batch_size)
            new = target.embed(texts, batch_size=limits.batch_size)
            counts = self.data.write(changed, old, new)
        skipped = len(documents) - len(changed)
        return UpsertCounts(counts.inserted, counts.updated, counts.unchanged + skipped)

    def delete(self, doc_ids: Sequence[str]) -> DeleteCounts:
        """A live delete: from every generation, never in the middle of a state change."""
        with self._writes:
            return self.data.delete(doc_ids)

    def status(self, message: str = "") -> MigrationStatus:
        current = self.record
        primary = self.service.space
        if current is None:
            documents = self.data.count()
            return MigrationStatus(
                MigrationState.NONE, primary, None, primary, documents, documents, message=message
            )
        counted = journal.progress(self.data.docstore)
        documents, done = counted.documents, counted.reencoded
        progress = self.reencoder.progress if self.reencoder is not None else None
        rate = progress.rate if progress is not None and self.reencoder_running else 0.0
        share = done / documents if documents else 1.0
        state = {
            Stage.REENCODING: MigrationState.REENCODING,
            Stage.PAUSED: MigrationState.PAUSED,
        }.get(current.stage, MigrationState.CUT_OVER)
        if state is not MigrationState.CUT_OVER and done >= documents:
            state = MigrationState.READY
        if progress is not None and progress.error and not message:
            message = f"last re-encode batch failed: {progress.error}"
        return MigrationStatus(
            state=state,
            source=current.source,
            target=current.target,
            primary=primary,
            documents=documents,
            reencoded=done,
            documents_per_second=rate,
            eta_seconds=(documents - done) / rate if rate > 0 else 0.0,
            cpu_share=current.cpu_share,
            anchors=current.anchors,
            forward_ndcg=current.forward_ndcg,
            backward_ndcg=current.backward_ndcg,
            adapter_agreement=current.agreement,
            retention_estimate=share + (1.0 - share) * current.agreement,
            message=message,
        )

    @property
    def reencoder_running(self) -> bool:
        return self.reencoder is not None and self.reencoder.running

    def close(self) -> None:
        self._stop_reencoder()

    # --- helpers ----------------------------------------------------------------------------

    def _require(self, *stages: Stage) -> MigrationRecord:
        current = self.record
        if current is None:
            raise FailedPrecondition("no migration is under way: start one first")
        if current.stage not in stages:
            allowed = ", ".join(stage.value for stage in stages)
            raise FailedPrecondition(
                f"the migration is {current.stage.value}; this command needs it {allowed}"
            )
        return current

    def _save(self, new: MigrationRecord) -> None:
        record.save(self.data.docstore, new)
        self.record = new

    def _start_reencoder(self, current: MigrationRecord) -> None:
        assert self.target_embedder is not None
        self.reencoder = Reencoder(
            self.data,
            self.target_embedder,
            current.cpu_share,
            batch_size=self.service.config.limits.batch_size,
            after_batch=self.after_batch,
        )
        self.reencoder.start()

    def _stop_reencoder(self) -> None:
        if self.reencoder is not None:
            self.reencoder.stop()
