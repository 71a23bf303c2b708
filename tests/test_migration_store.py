"""The store under a migration: the target generation, the re-encode journal, finish's promote.

Small random vectors in two spaces of different widths, exact indexes: after each step every
search of the target generation must equal the brute force over what the journal says.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from silobridge.core.documents import Document
from silobridge.core.errors import FailedPrecondition
from silobridge.core.spaces import SpaceDescriptor
from silobridge.silo_agent.store import journal
from silobridge.silo_agent.store.data import SiloData
from silobridge.silo_agent.store.index import IndexSettings
from silobridge.silo_agent.store.overlay import Overlay
from silobridge.silo_agent.store.rows import Changes

OLD = SpaceDescriptor("old@0001", "test/old", 8, "0000000000000001")
NEW = SpaceDescriptor("new@0002", "test/new", 4, "0000000000000002")
EXACT = IndexSettings(exact_threshold=1_000_000)


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    rows = rng.standard_normal((n, dim))
    out: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return out


def squash(old: np.ndarray) -> np.ndarray:
    """A stand-in old->new adapter: the first four coordinates, renormalised."""
    part = old[:, :4]
    out: np.ndarray = (part / np.linalg.norm(part, axis=1, keepdims=True)).astype(np.float32)
    return out


@pytest.fixture
def silo(tmp_path: Path) -> SiloData:
    data = SiloData.open(tmp_path / "data", OLD, EXACT)
    rng = np.random.default_rng(0)
    docs = [Document(f"doc-{i}", f"text {i}", {}) for i in range(30)]
    data.upsert(docs, unit(rng, 30, OLD.dimension))
    data.rebuild_index()
    return data


def test_provisional_vectors_cover_every_document_until_the_journal_replaces_them(
    silo: SiloData,
) -> None:
    assert journal.provisional(silo.docstore, squash) == 30
    assert journal.provisional(silo.docstore, squash) == 0  # idempotent
    target = silo.open_target(NEW)
    assert journal.progress(silo.docstore) == journal.Progress(30, 0)
    batch = journal.pending(silo.docstore, -1, 10)
    assert [doc.text for doc in batch] == [f"text {i}" for i in range(10)]
    rng = np.random.default_rng(1)
    native = unit(rng, 10, NEW.dimension)
    assert journal.record(silo.docstore, batch, native) == 10
    silo.refresh()
    assert journal.progress(silo.docstore).reencoded == 10
    # Re-encoded documents are searched with their native vector, the rest provisional.
    hit = silo.search_in(target, native[3], 1)[0]
    assert hit.doc_id == "doc-3"
    assert hit.score == pytest.approx(1.0, abs=1e-5)
    assert [doc.key for doc in journal.pending(silo.docstore, -1, 100)][:1] == [batch[-1].key + 1]


def test_a_batch_embedded_from_text_that_changed_meanwhile_is_not_recorded(
    silo: SiloData,
) -> None:
    journal.provisional(silo.docstore, squash)
    silo.open_target(NEW)
    rng = np.random.default_rng(2)
    batch = journal.pending(silo.docstore, -1, 5)
    # A live (dual) write rewrites doc-0 while the batch is being embedded.
    fresh = unit(rng, 1, NEW.dimension)
    silo.write([Document("doc-0", "rewritten", {})], unit(rng, 1, OLD.dimension), fresh)
    assert journal.record(silo.docstore, batch, unit(rng, 5, NEW.dimension)) == 4
    target = silo.target
    assert target is not None
    assert target.vectors_of([batch[0].key]) == pytest.approx(fresh)


def test_deletes_leave_both_generations_and_finish_needs_every_document(
    silo: SiloData,
) -> None:
    journal.provisional(silo.docstore, squash)
    target = silo.open_target(NEW)
    silo.delete(["doc-7"])
    assert all(
        hit.doc_id != "doc-7"
        for hit in silo.search_in(
            target, squash(unit(np.random.default_rng(3), 1, OLD.dimension))[0], 30
        )
    )
    with pytest.raises(FailedPrecondition, match="29 documents have no current vector"):
        journal.promote(silo.docstore, NEW, "finishing")
    rng = np.random.default_rng(4)
    rest = journal.pending(silo.docstore, -1, 100)
    journal.record(silo.docstore, rest, unit(rng, len(rest), NEW.dimension))
    journal.promote(silo.docstore, NEW, "finishing")
    assert silo.docstore.get_meta("fingerprint") == NEW.fingerprint
    _, vectors = silo.docstore.all_vectors()
    assert vectors.shape == (29, NEW.dimension)
    assert journal.progress(silo.docstore) == journal.Progress(29, 0)  # the table is emptied


vector_rows = st.lists(st.integers(0, 20), max_size=8, unique=True)


@settings(max_examples=60, deadline=None)
@given(first=vector_rows, second=vector_rows, deleted=st.lists(st.integers(0, 20), max_size=5))
def test_advancing_an_overlay_equals_building_it_from_all_the_changes(
    first: list[int], second: list[int], deleted: list[int]
) -> None:
    rng = np.random.default_rng(len(first) * 31 + len(second))
    dim = 3

    def changes(version: int, keys: list[int], gone: list[int]) -> Changes:
        return Changes(
            version,
            np.asarray(sorted(keys), dtype=np.int64),
            unit(rng, len(keys), dim) if keys else np.zeros((0, dim), np.float32),
            np.asarray(sorted(set(gone) - set(keys)), dtype=np.int64),
        )

    one, two = changes(1, first, []), changes(2, second, deleted)
    stepped = Overlay.of(0, one, index_max_key=10).advanced(two, index_max_key=10)
    # Built at once: the latest vector of every key still there, every hidden index key.
    latest = {int(k): v for k, v in zip(one.keys, one.vectors, strict=True)}
    for key in two.deleted.tolist():
        latest.pop(int(key), None)
    latest.update({int(k): v for k, v in zip(two.keys, two.vectors, strict=True)})
    assert sorted(stepped.keys.tolist()) == sorted(latest)
    for key, vector in latest.items():
        assert stepped.vector(key) == pytest.approx(vector)
    touched = set(first) | set(second) | set(two.deleted.tolist())
    assert stepped.hidden == frozenset(k for k in touched if k <= 10)
    assert stepped.version == 2
