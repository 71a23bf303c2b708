"""Live writes to a serving silo: written, rewritten and deleted documents are searched exactly.

A reference model (doc id -> text, metadata, vector) is driven through random writes, deletes,
index rebuilds, reopenings and writes by another process; after every step a search with an
exact index must return exactly the brute-force top-k of the model.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from silobridge.core.documents import Document
from silobridge.core.errors import FailedPrecondition, ResourceExhausted
from silobridge.core.hits import Hit
from silobridge.core.spaces import SpaceDescriptor
from silobridge.silo_agent.store import data as data_module
from silobridge.silo_agent.store import generation as generation_module
from silobridge.silo_agent.store.data import DOCSTORE_NAME, SiloData
from silobridge.silo_agent.store.docstore import DocStore
from silobridge.silo_agent.store.index import EXACT_FACTORY, IndexSettings, VectorIndex

FloatVector = npt.NDArray[np.float32]
FloatMatrix = npt.NDArray[np.float32]

DIM = 8
SPACE = SpaceDescriptor("live@0123", "test/random-unit", DIM, "0123456789abcdef")
EXACT = IndexSettings(exact_threshold=1_000_000)
# exact_threshold=1: any index with a vector in it is HNSW.
HNSW = IndexSettings(exact_threshold=1, hnsw_factory="HNSW16,Flat", hnsw_ef_search=64)
# float32 scores (FAISS, numpy) against the float64 reference.
EPS = 1e-5

# A small pool, so that writes often rewrite and re-create ids that were deleted.
IDS = [f"doc-{i}" for i in range(10)]
NEVER_STORED = ["never-a", "never-b"]


def unit(rng: np.random.Generator, n: int = 1, dim: int = DIM) -> FloatMatrix:
    rows = rng.standard_normal((n, dim))
    out: FloatMatrix = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return out


@dataclass(frozen=True)
class Stored:
    """What the model holds for one document id."""

    incarnation: int  # a new one per insert: the docstore gives a re-created id a new key
    text: str
    metadata: dict[str, str]
    vector: FloatVector


def brute_force(model: dict[str, Stored], query: FloatVector, k: int) -> list[tuple[str, float]]:
    q = query.astype(np.float64)
    scored = [(doc_id, float(row.vector.astype(np.float64) @ q)) for doc_id, row in model.items()]
    scored.sort(key=lambda pair: (-pair[1], pair[0]))
    return scored[:k]


def assert_exact(hits: Sequence[Hit], model: dict[str, Stored], query: FloatVector, k: int) -> None:
    """``hits`` is the brute-force top-k of ``model``: same ids, same scores, best first.

    Where two documents score within EPS of each other their order (and which of them makes
    the cut at rank k) is not determined by the float32 arithmetic; elsewhere the id must match.
    """
    want = brute_force(model, query, k)
    q = query.astype(np.float64)
    every = sorted(float(row.vector.astype(np.float64) @ q) for row in model.values())
    got_ids = [hit.doc_id for hit in hits]
    assert len(set(got_ids)) == len(got_ids), f"a document is returned twice: {got_ids}"
    assert len(hits) == len(want), (got_ids, want)
    for rank, (hit, (want_id, want_score)) in enumerate(zip(hits, want, strict=True)):
        assert hit.doc_id in model, f"{hit.doc_id} is not stored (deleted?)"
        true_score = float(model[hit.doc_id].vector.astype(np.float64) @ q)
        # The score is that of the document's current vector, not of an older one.
        assert hit.score == pytest.approx(true_score, abs=EPS), (rank, hit.doc_id)
        assert hit.score == pytest.approx(want_score, abs=EPS), (rank, got_ids, want)
        near = sum(1 for score in every if abs(score - want_score) <= 2 * EPS)
        if near == 1:
            assert hit.doc_id == want_id, (rank, got_ids, want)
        assert dict(hit.fields) == model[hit.doc_id].metadata


def assert_finds_itself(hit: Hit, doc_id: str) -> None:
    """A document's own vector finds it, with inner product one."""
    assert hit.doc_id == doc_id
    assert hit.score == pytest.approx(1.0, abs=EPS)


class LiveStoreMachine(RuleBasedStateMachine):
    """One silo data directory with an exact index, against a dict of what it should hold."""

    def __init__(self) -> None:
        super().__init__()
        self._tmp = tempfile.TemporaryDirectory(prefix="live-store-")
        self.root = Path(self._tmp.name) / "silo"
        self.data = SiloData.open(self.root, SPACE, EXACT)
        self.model: dict[str, Stored] = {}
        self.rng = np.random.default_rng(0)
        self.generation = 0
        # Model of the overlay: incarnations written since the last rebuild, and indexed ones
        # deleted since (a document both written and deleted after it leaves nothing behind).
        self.pending: set[int] = set()
        self.indexed: set[int] = set()
        self.changed_since_build = False
        self.built = False
        # Vectors worth querying with: the old vector of a rewritten document, the vector of a
        # deleted one, the new vector of a written one.
        self.probes: list[FloatVector] = []
        self.deleted: set[str] = set()

    @initialize(seed=st.integers(0, 2**32 - 1))
    def seed(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)

    def teardown(self) -> None:
        self.data.close()
        self._tmp.cleanup()

    # --- helpers -------------------------------------------------------------------------

    def _probe(self, vector: FloatVector) -> None:
        self.probes = [*self.probes[-3:], vector]

    def _next_incarnation(self) -> int:
        self.generation += 1
        return self.generation

    def _plan(
        self, batch: Sequence[tuple[str, bool]]
    ) -> tuple[list[Document], FloatMatrix, tuple[int, int, int]]:
        """Documents and vectors for a batch, applying it to the model as the store should.

        ``same`` asks for a document with the stored text and metadata (a new random vector
        all the same): it is unchanged, and its stored vector must stay the old one.
        """
        docs: list[Document] = []
        vectors = unit(self.rng, len(batch)) if batch else np.zeros((0, DIM), np.float32)
        inserted = updated = unchanged = 0
        for (doc_id, same), vector in zip(batch, vectors, strict=True):
            current = self.model.get(doc_id)
            if same and current is not None:
                docs.append(Document(doc_id, current.text, current.metadata))
                unchanged += 1
                continue
            self.generation += 1
            text = f"text of {doc_id}, generation {self.generation}"
            metadata = {"generation": str(self.generation)}
            docs.append(Document(doc_id, text, metadata))
            if current is None:
                incarnation = self._next_incarnation()
                inserted += 1
            else:
                incarnation = current.incarnation
                updated += 1
                self._probe(current.vector)
            self.model[doc_id] = Stored(incarnation, text, metadata, vector.copy())
            self.pending.add(incarnation)
            self.deleted.discard(doc_id)
            self._probe(vector)
        if inserted or updated:
            self.changed_since_build = True
        return docs, vectors, (inserted, updated, unchanged)

    # --- rules ---------------------------------------------------------------------------

    batches = st.lists(st.tuples(st.sampled_from(IDS), st.booleans()), max_size=5)

    @rule(batch=batches)
    def write(self, batch: list[tuple[str, bool]]) -> None:
        docs, vectors, expected = self._plan(batch)
        counts = self.data.write(docs, vectors)
        assert (counts.inserted, counts.updated, counts.unchanged) == expected

    @rule(batch=batches)
    def write_from_another_process(self, batch: list[tuple[str, bool]]) -> None:
        """As `silo ingest` would: straight into the docstore, then the server refreshes."""
        docs, vectors, expected = self._plan(batch)
        other = DocStore(self.root / DOCSTORE_NAME)
        try:
            counts = other.upsert(docs, vectors)
        finally:
            other.close()
        assert (counts.inserted, counts.updated, counts.unchanged) == expected
        assert self.data.refresh() is bool(expected[0] or expected[1])

    @rule(batch=batches)
    def ingest_in_another_process(self, batch: list[tuple[str, bool]]) -> None:
        """`silo ingest` elsewhere stores and rebuilds; the server refreshes and reloads."""
        docs, vectors, expected = self._plan(batch)
        ingest_side = SiloData.open(self.root, SPACE, EXACT)
        try:
            counts = ingest_side.upsert(docs, vectors)
            ingest_side.rebuild_index()
        finally:
            ingest_side.close()
        assert (counts.inserted, counts.updated, counts.unchanged) == expected
        assert self.data.refresh() is bool(expected[0] or expected[1])
        if self.data.reload_index():
            self.pending.clear()
            self.indexed = {row.incarnation for row in self.model.values()}
        # else: the same index bytes as the one served, which keeps its own (older) base.
        self.changed_since_build = False
        self.built = True

    @rule(doc_ids=st.lists(st.sampled_from(IDS + NEVER_STORED), max_size=4))
    def delete(self, doc_ids: list[str]) -> None:
        wanted = list(dict.fromkeys(doc_ids))
        gone = tuple(doc_id for doc_id in wanted if doc_id in self.model)
        missing = tuple(doc_id for doc_id in wanted if doc_id not in self.model)
        for doc_id in gone:
            row = self.model.pop(doc_id)
            if row.incarnation in self.indexed:
                self.pending.add(row.incarnation)
            else:
                self.pending.discard(row.incarnation)
            self.deleted.add(doc_id)
            self._probe(row.vector)
        if gone:
            self.changed_since_build = True
        counts = self.data.delete(doc_ids)
        assert counts.deleted == gone
        assert counts.missing == missing

    @rule()
    def rebuild_index(self) -> None:
        manifest = self.data.rebuild_index()
        assert manifest.count == len(self.model)
        assert manifest.factory == EXACT_FACTORY
        self.pending.clear()
        self.indexed = {row.incarnation for row in self.model.values()}
        self.changed_since_build = False
        self.built = True

    @rule()
    def reopen(self) -> None:
        self.data.close()
        self.data = SiloData.open(self.root, SPACE, EXACT)
        assert self.data.has_index is self.built

    # --- what must hold after every step ------------------------------------------------

    @invariant()
    def nothing_is_left_to_pick_up(self) -> None:
        assert self.data.refresh() is False

    @invariant()
    def counts_match(self) -> None:
        assert self.data.count() == len(self.model)
        assert self.data.pending_changes == len(self.pending)
        assert self.data.needs_rebuild is (not self.built or self.changed_since_build)

    @invariant()
    def searches_are_exact(self) -> None:
        queries = [*self.probes, unit(self.rng)[0]]
        if not self.model and not self.data.has_index:
            # Nothing stored and no index ever built: the "ingest first" answer, or nothing.
            with contextlib.suppress(FailedPrecondition):
                assert self.data.search(queries[-1], 3) == []
            return
        for query in queries:
            for k in (1, 3, len(IDS) + 2):
                hits = self.data.search(query, k)
                assert_exact(hits, self.model, query, k)
                assert not {hit.doc_id for hit in hits} & self.deleted
        # Re-ranking gets each hit's current vector, wherever it is served from.
        candidates = self.data.search_candidates(queries[-1], len(IDS))
        assert candidates.vectors is not None
        assert candidates.vectors.shape == (len(candidates.hits), DIM)
        for hit, row in zip(candidates.hits, candidates.vectors, strict=True):
            assert np.allclose(row, self.model[hit.doc_id].vector, atol=1e-6)

    @invariant()
    def written_documents_are_found_by_their_vector(self) -> None:
        for doc_id, row in self.model.items():
            top = self.data.search(row.vector, 1)[0]
            assert top.score == pytest.approx(1.0, abs=EPS)
            assert top.doc_id == doc_id or np.allclose(self.model[top.doc_id].vector, row.vector)


def test_live_writes_deletes_rebuilds_and_reopens_match_a_reference_model() -> None:
    run_state_machine_as_test(
        LiveStoreMachine,
        settings=settings(
            max_examples=30,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )


# --- another process ---------------------------------------------------------------------


@pytest.fixture
def serving(tmp_path: Path) -> Iterator[SiloData]:
    data = SiloData.open(tmp_path / "silo", SPACE, EXACT)
    yield data
    data.close()


def corpus(n: int, rng: np.random.Generator, dim: int = DIM) -> tuple[list[Document], FloatMatrix]:
    docs = [Document(f"doc-{i}", f"text {i}", {"n": str(i)}) for i in range(n)]
    return docs, unit(rng, n, dim)


def test_a_change_from_another_process_is_served_only_after_refresh(serving: SiloData) -> None:
    rng = np.random.default_rng(11)
    docs, vectors = corpus(20, rng)
    serving.write(docs, vectors)
    serving.rebuild_index()
    assert serving.refresh() is False

    # `silo ingest` in another process: one SiloData inserts, a bare DocStore rewrites doc-3.
    new_vector, rewritten = unit(rng, 2)
    ingest_side = SiloData.open(serving.data_dir, SPACE, EXACT)
    try:
        ingest_side.upsert([Document("late", "a late arrival", {"n": "late"})], new_vector[None])
    finally:
        ingest_side.close()
    other = DocStore(serving.data_dir / DOCSTORE_NAME)
    try:
        counts = other.upsert([Document("doc-3", "rewritten", {"n": "3b"})], rewritten[None])
    finally:
        other.close()
    assert counts.updated == 1

    # Not seen yet: the new document is not found, doc-3 still answers for its old vector.
    assert "late" not in {hit.doc_id for hit in serving.search(new_vector, 21)}
    old_top = serving.search(vectors[3], 1)[0]
    assert_finds_itself(old_top, "doc-3")
    assert serving.search(rewritten, 1)[0].score < 1.0 - 1e-3

    assert serving.refresh() is True

    late = serving.search(new_vector, 1)[0]
    assert_finds_itself(late, "late")
    assert dict(late.fields) == {"n": "late"}
    top = serving.search(rewritten, 1)[0]
    assert_finds_itself(top, "doc-3")
    stale = [h for h in serving.search(vectors[3], 21) if h.doc_id == "doc-3"]
    assert [h.score for h in stale] == [pytest.approx(float(rewritten @ vectors[3]), abs=EPS)]
    assert serving.count() == 21
    assert serving.refresh() is False

    # A delete by the other process: after refresh, the top-k is full again without it.
    other = DocStore(serving.data_dir / DOCSTORE_NAME)
    try:
        assert other.delete(["doc-5"]).deleted == ("doc-5",)
    finally:
        other.close()
    assert serving.refresh() is True
    hits = serving.search(vectors[5], 5)
    assert len(hits) == 5
    assert "doc-5" not in {hit.doc_id for hit in hits}
    assert serving.refresh() is False


# --- compaction ----------------------------------------------------------------------------


def _answers(data: SiloData, queries: FloatMatrix, k: int) -> list[list[tuple[str, float]]]:
    return [[(hit.doc_id, hit.score) for hit in data.search(q, k)] for q in queries]


def test_needs_compaction_past_the_threshold_and_a_rebuild_keeps_the_results(
    serving: SiloData, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation_module, "COMPACT_MIN_ROWS", 5)
    rng = np.random.default_rng(5)
    docs, vectors = corpus(40, rng)  # 5% of 40 is 2: the five rows are the threshold
    serving.write(docs, vectors)
    serving.rebuild_index()
    assert (serving.pending_changes, serving.needs_compaction) == (0, False)

    serving.write(
        [Document(f"doc-{i}", f"rewritten {i}", {"n": str(i)}) for i in range(3)], unit(rng, 3)
    )
    serving.write([Document("new-0", "new", {}), Document("new-1", "new", {})], unit(rng, 2))
    assert (serving.pending_changes, serving.needs_compaction) == (5, False)
    # An unchanged rewrite and a delete of a missing id add nothing.
    serving.write([docs[10]], unit(rng, 1))
    serving.delete(["never-stored"])
    assert (serving.pending_changes, serving.needs_compaction) == (5, False)
    serving.delete(["doc-20"])
    assert (serving.pending_changes, serving.needs_compaction) == (6, True)

    queries = unit(rng, 8)
    before = _answers(serving, queries, 10)
    serving.rebuild_index()
    assert (serving.pending_changes, serving.needs_compaction) == (0, False)
    for got, want in zip(_answers(serving, queries, 10), before, strict=True):
        assert [doc_id for doc_id, _ in got] == [doc_id for doc_id, _ in want]
        assert [s for _, s in got] == pytest.approx([s for _, s in want], abs=EPS)
    assert serving.count() == 41


def test_the_share_of_the_index_also_triggers_compaction(
    serving: SiloData, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generation_module, "COMPACT_MIN_ROWS", 1)
    rng = np.random.default_rng(6)
    docs, vectors = corpus(100, rng)  # 5% of 100 is 5
    serving.write(docs, vectors)
    serving.rebuild_index()
    serving.delete([f"doc-{i}" for i in range(5)])
    assert serving.needs_compaction is False
    serving.delete(["doc-5"])
    assert serving.needs_compaction is True


# --- HNSW ----------------------------------------------------------------------------------


def test_live_changes_are_visible_beside_an_hnsw_index(tmp_path: Path) -> None:
    dim = 16
    space = SpaceDescriptor("live-hnsw@0123", "test/random-unit-16", dim, "fedcba9876543210")
    rng = np.random.default_rng(21)
    docs, vectors = corpus(150, rng, dim)
    data = SiloData.open(tmp_path / "silo", space, HNSW)
    try:
        data.write(docs, vectors)
        assert data.rebuild_index().factory.startswith("IDMap2,HNSW")

        added = [Document(f"new-{i}", f"new {i}", {}) for i in range(10)]
        added_vectors = unit(rng, 10, dim)
        rewritten = [Document(f"doc-{i}", f"rewritten {i}", {}) for i in range(10)]
        rewritten_vectors = unit(rng, 10, dim)
        deleted = [f"doc-{i}" for i in range(10, 20)]
        data.write(added, added_vectors)
        assert data.write(rewritten, rewritten_vectors).updated == 10
        assert data.delete([*deleted, "never-stored"]).missing == ("never-stored",)

        current = {d.doc_id: v for d, v in zip(docs, vectors, strict=True)}
        current.update({d.doc_id: v for d, v in zip(added, added_vectors, strict=True)})
        current.update({d.doc_id: v for d, v in zip(rewritten, rewritten_vectors, strict=True)})
        for doc_id in deleted:
            del current[doc_id]

        def check(where: SiloData) -> None:
            assert where.count() == len(current) == 150
            for doc_id in [*(d.doc_id for d in added), *(d.doc_id for d in rewritten)]:
                top = where.search(current[doc_id], 1)[0]
                assert_finds_itself(top, doc_id)
            for i in range(10):  # a rewritten document no longer answers for its old vector
                for hit in where.search(vectors[i], 10):
                    assert hit.score == pytest.approx(
                        float(current[hit.doc_id] @ vectors[i]), abs=EPS
                    )
            for i in range(10, 20):  # deleted documents never come back
                hits = where.search(vectors[i], 20)
                assert len(hits) == 20
                assert not {hit.doc_id for hit in hits} & set(deleted)
            ids = [hit.doc_id for hit in where.search(vectors[0], 150)]
            assert len(ids) == len(set(ids))

        check(data)
        data.close()
        data = SiloData.open(tmp_path / "silo", space, HNSW)  # saved index + changes after it
        assert data.manifest is not None
        assert data.manifest.factory.startswith("IDMap2,HNSW")
        assert data.pending_changes == 30
        check(data)
        assert data.rebuild_index().factory.startswith("IDMap2,HNSW")
        assert data.pending_changes == 0
        check(data)
    finally:
        data.close()


def test_a_server_opening_while_an_ingest_finishes_still_serves_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ingest saves a newer index between the server's reads: nothing may fall in a gap."""
    space = SpaceDescriptor("s", "m", 4, "0123456789abcdef")
    root = tmp_path / "silo"
    eye = np.eye(4, dtype=np.float32)
    ingest = SiloData.open(root, space)
    ingest.upsert([Document("a", "a")], eye[:1])
    ingest.rebuild_index()
    real_load = VectorIndex.load.__func__  # type: ignore[attr-defined]

    def load_then_ingest_finishes(cls: type[VectorIndex], /, *args: object, **kw: object) -> object:
        index = real_load(cls, *args, **kw)
        ingest.upsert([Document("b", "b")], eye[1:2])
        ingest.rebuild_index()
        return index

    monkeypatch.setattr(VectorIndex, "load", classmethod(load_then_ingest_finishes))
    server = SiloData.open(root, space)
    monkeypatch.undo()
    try:
        assert server.count() == 2
        assert [hit.doc_id for hit in server.search(eye[1], 1)] == ["b"]
    finally:
        server.close()
        ingest.close()


def test_live_writes_wait_for_the_rebuild_once_too_much_is_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The overlay is bounded: past the cap a write is refused until a rebuild folds it in."""
    monkeypatch.setattr(data_module, "MAX_PENDING_ROWS", 3)
    space = SpaceDescriptor("s", "m", 4, "0123456789abcdef")
    data = SiloData.open(tmp_path / "silo", space)
    eye = np.eye(4, dtype=np.float32)
    try:
        data.write([Document(f"d{i}", f"text {i}") for i in range(3)], eye[:3])
        with pytest.raises(ResourceExhausted, match="background rebuild"):
            data.write([Document("d3", "text 3")], eye[3:4])
        assert data.count() == 3
        data.rebuild_index()
        data.write([Document("d3", "text 3")], eye[3:4])
        assert [hit.doc_id for hit in data.search(eye[3], 1)] == ["d3"]
        # New keys are above the index's: they are served beside it, nothing of it is hidden.
        assert data.pending_changes == 1
    finally:
        data.close()
