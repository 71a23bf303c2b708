"""The SQLite docstore: idempotent upserts, stable keys on update, WAL, survival of kill -9."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from silobridge.core.documents import Document
from silobridge.core.errors import InvalidArgument
from silobridge.core.spaces import FloatMatrix
from silobridge.silo_agent.store.docstore import DocStore
from silobridge.silo_agent.store.rows import content_hash

DIM = 8


def unit_rows(n: int, seed: int = 0) -> FloatMatrix:
    rows = np.random.default_rng(seed).standard_normal((n, DIM))
    unit: FloatMatrix = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return unit


def docs(n: int) -> list[Document]:
    return [
        Document(f"doc-{i}", f"text number {i}", {"source": "test", "n": str(i)}) for i in range(n)
    ]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[DocStore]:
    db = DocStore(tmp_path / "docstore.sqlite")
    yield db
    db.close()


def test_journal_mode_is_wal_for_every_connection(store: DocStore) -> None:
    assert store.journal_mode() == "wal"
    # WAL is a property of the file: a second, plain connection sees it too.
    other = sqlite3.connect(store.path)
    try:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        other.close()


def test_upserting_the_same_documents_twice_changes_nothing(store: DocStore) -> None:
    first = store.upsert(docs(5), unit_rows(5))
    keys_before, vectors_before = store.all_vectors()
    second = store.upsert(docs(5), unit_rows(5, seed=1))

    assert (first.inserted, first.updated, first.unchanged) == (5, 0, 0)
    assert (second.inserted, second.updated, second.unchanged) == (0, 0, 5)
    keys_after, vectors_after = store.all_vectors()
    assert np.array_equal(keys_before, keys_after)
    assert np.array_equal(vectors_before, vectors_after)  # unchanged rows keep their vectors
    assert store.count() == 5


def test_an_update_changes_the_hash_and_keeps_the_key(store: DocStore) -> None:
    original = docs(3)
    store.upsert(original, unit_rows(3))
    keys, _ = store.all_vectors()
    key_of_doc1 = next(k for k, d in store.fetch(keys.tolist()).items() if d.doc_id == "doc-1")
    old_hash = store.stored_hashes(["doc-1"])["doc-1"]

    edited = Document("doc-1", "a rewritten text", original[1].metadata)
    new_vector = unit_rows(1, seed=7)
    counts = store.upsert([edited], new_vector)

    assert (counts.inserted, counts.updated, counts.unchanged) == (0, 1, 0)
    new_hash = store.stored_hashes(["doc-1"])["doc-1"]
    assert new_hash != old_hash
    assert new_hash == content_hash(edited)
    fetched = store.fetch([key_of_doc1])[key_of_doc1]
    assert (fetched.doc_id, fetched.text) == ("doc-1", "a rewritten text")
    keys_after, vectors_after = store.all_vectors()
    assert np.array_equal(keys, keys_after)
    assert np.allclose(vectors_after[list(keys_after).index(key_of_doc1)], new_vector[0])


def test_a_metadata_change_alone_is_an_update(store: DocStore) -> None:
    store.upsert([Document("a", "same text", {"lang": "en"})], unit_rows(1))
    counts = store.upsert([Document("a", "same text", {"lang": "fr"})], unit_rows(1))
    assert counts.updated == 1
    keys, _ = store.all_vectors()
    assert store.fetch(keys.tolist())[int(keys[0])].metadata == {"lang": "fr"}


def test_content_hash_ignores_metadata_order_but_not_content() -> None:
    a = Document("x", "text", {"a": "1", "b": "2"})
    b = Document("x", "text", {"b": "2", "a": "1"})
    assert content_hash(a) == content_hash(b)
    assert content_hash(a) != content_hash(Document("x", "text", {"a": "1", "b": "3"}))
    # The text/metadata boundary cannot be shifted to forge an equal hash.
    assert content_hash(Document("x", "ab", {})) != content_hash(Document("x", "a", {"b": ""}))


def test_fetch_and_hashes_leave_out_unknown_ids_and_handle_large_batches(store: DocStore) -> None:
    many = docs(1200)  # more than one SQL IN-chunk
    store.upsert(many, unit_rows(1200))
    hashes = store.stored_hashes([d.doc_id for d in many] + ["nope"])
    assert len(hashes) == 1200
    assert "nope" not in hashes
    keys, vectors = store.all_vectors()
    assert keys.dtype == np.int64
    assert vectors.shape == (1200, DIM)
    assert vectors.dtype == np.float32
    fetched = store.fetch([*keys.tolist(), 10**9])
    assert len(fetched) == 1200
    assert {d.doc_id for d in fetched.values()} == {d.doc_id for d in many}


def test_unicode_text_and_metadata_round_trip(store: DocStore) -> None:
    doc = Document("ü-1", "En el principio creó Dios los cielos 🌍", {"libro": "Génesis"})
    store.upsert([doc], unit_rows(1))
    keys, _ = store.all_vectors()
    stored = store.fetch(keys.tolist())[int(keys[0])]
    assert (stored.doc_id, stored.text, dict(stored.metadata)) == (
        doc.doc_id,
        doc.text,
        dict(doc.metadata),
    )
    assert store.texts(["ü-1", "missing"]) == {"ü-1": doc.text}


def test_empty_store_reports_vectors_of_its_recorded_dimension(store: DocStore) -> None:
    store.set_meta("dimension", str(DIM))
    keys, vectors = store.all_vectors()
    assert keys.shape == (0,)
    assert vectors.shape == (0, DIM)


def test_mismatched_vectors_are_refused_before_anything_is_written(store: DocStore) -> None:
    store.set_meta("dimension", str(DIM))
    with pytest.raises(InvalidArgument, match="one vector row per document"):
        store.upsert(docs(3), unit_rows(2))
    with pytest.raises(InvalidArgument, match="dimension 4"):
        store.upsert(docs(1), np.ones((1, 4), dtype=np.float32))
    bad = unit_rows(2)
    bad[1, 0] = np.nan
    with pytest.raises(InvalidArgument, match="NaN"):
        store.upsert(docs(2), bad)
    assert store.count() == 0


def test_meta_values_persist_and_can_be_replaced(tmp_path: Path) -> None:
    path = tmp_path / "docstore.sqlite"
    first = DocStore(path)
    first.set_meta("fingerprint", "aaaa")
    first.set_meta("fingerprint", "bbbb")
    first.close()
    reopened = DocStore(path)
    try:
        assert reopened.get_meta("fingerprint") == "bbbb"
        assert reopened.get_meta("absent") is None
    finally:
        reopened.close()


def test_an_acknowledged_upsert_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "docstore.sqlite"
    writer = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        from silobridge.core.documents import Document
        from silobridge.silo_agent.store.docstore import DocStore
        store = DocStore({str(path)!r})
        store.upsert([Document("kept", "acknowledged before the crash")],
                     np.ones((1, 4), dtype=np.float32) / 2)
        print("acknowledged", flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", writer], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == -9, result.stderr
    assert "acknowledged" in result.stdout
    store = DocStore(path)
    try:
        assert store.count() == 1
        assert store.texts(["kept"]) == {"kept": "acknowledged before the crash"}
    finally:
        store.close()
