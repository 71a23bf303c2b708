"""The FAISS index: exact vs HNSW by size, no -1 padding, manifest round trip, atomic swap."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from silobridge.core.errors import ConfigError, FailedPrecondition, NotFound
from silobridge.silo_agent.store.index import (
    EXACT_FACTORY,
    MANIFEST_NAME,
    IndexSettings,
    VectorIndex,
    pin_faiss_threads,
    read_manifest,
)

DIM = 16
FP = "f00dfeedf00dfeed"
MODEL = "test/hashing-16"
SMALL = IndexSettings(exact_threshold=50, hnsw_factory="HNSW16,Flat", hnsw_ef_search=64)


def corpus(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rows = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    # Docstore keys are not positions: sparse, large, out of insertion order.
    keys = (np.arange(n, dtype=np.int64) * 7 + 1000)[::-1].copy()
    return keys, rows


def test_small_collections_are_exact_and_large_ones_use_the_factory() -> None:
    keys, vectors = corpus(50)
    exact = VectorIndex.build(keys[:49], vectors[:49], SMALL)
    approximate = VectorIndex.build(keys, vectors, SMALL)
    assert exact.factory == EXACT_FACTORY
    assert approximate.factory == "IDMap2,HNSW16,Flat"
    for index, n in ((exact, 49), (approximate, 50)):
        assert index.count == n
        hits = index.search(vectors[:n], 1)
        assert [row[0][0] for row in hits] == keys[:n].tolist()


def test_a_document_vector_finds_itself_first_with_inner_product_one() -> None:
    keys, vectors = corpus(30)
    index = VectorIndex.build(keys, vectors, SMALL)
    hits = index.search(vectors[5:6], 3)[0]
    assert hits[0][0] == int(keys[5])
    assert hits[0][1] == pytest.approx(1.0, abs=1e-5)
    assert hits[0][1] >= hits[1][1] >= hits[2][1]


def test_k_beyond_the_collection_returns_only_real_hits() -> None:
    keys, vectors = corpus(5)
    hits = VectorIndex.build(keys, vectors, SMALL).search(vectors[:2], 10)
    assert [len(row) for row in hits] == [5, 5]
    assert all(key in set(keys.tolist()) for row in hits for key, _ in row)


def test_an_empty_index_answers_with_no_hits() -> None:
    index = VectorIndex.build(np.zeros(0, dtype=np.int64), np.zeros((0, DIM), np.float32), SMALL)
    assert index.search(np.ones((1, DIM), np.float32), 3) == [[]]


def test_save_and_load_round_trip_with_a_manifest(tmp_path: Path) -> None:
    keys, vectors = corpus(40)
    built = VectorIndex.build(keys, vectors, SMALL)
    built.save(tmp_path, fingerprint=FP, model_id=MODEL)

    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["fingerprint"] == FP
    assert manifest["model_id"] == MODEL
    assert manifest["dimension"] == DIM
    assert manifest["count"] == 40
    assert manifest["factory"] == EXACT_FACTORY
    assert manifest["faiss_version"] == faiss.__version__
    assert manifest["created_at"].endswith("+00:00")
    assert list(manifest["files"]) == [p.name for p in tmp_path.glob("faiss-*.index")]

    loaded = VectorIndex.load(tmp_path, expected_fingerprint=FP)
    assert loaded.factory == EXACT_FACTORY
    assert loaded.search(vectors, 5) == built.search(vectors, 5)


def test_an_hnsw_index_round_trips_and_still_finds_each_vector(tmp_path: Path) -> None:
    keys, vectors = corpus(200)
    VectorIndex.build(keys, vectors, SMALL).save(tmp_path, fingerprint=FP, model_id=MODEL)
    loaded = VectorIndex.load(tmp_path, expected_fingerprint=FP, settings=SMALL)
    assert loaded.factory == "IDMap2,HNSW16,Flat"
    top = [row[0][0] for row in loaded.search(vectors, 1)]
    assert top == keys.tolist()


def test_a_corrupt_index_file_is_detected(tmp_path: Path) -> None:
    keys, vectors = corpus(20)
    VectorIndex.build(keys, vectors, SMALL).save(tmp_path, fingerprint=FP, model_id=MODEL)
    (index_file,) = tmp_path.glob("faiss-*.index")
    data = bytearray(index_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    index_file.write_bytes(bytes(data))
    with pytest.raises(FailedPrecondition, match=f"index file .*{index_file.name} is corrupt"):
        VectorIndex.load(tmp_path, expected_fingerprint=FP)


def test_a_missing_index_file_is_reported_with_how_to_rebuild(tmp_path: Path) -> None:
    keys, vectors = corpus(20)
    VectorIndex.build(keys, vectors, SMALL).save(tmp_path, fingerprint=FP, model_id=MODEL)
    for index_file in tmp_path.glob("faiss-*.index"):
        index_file.unlink()
    with pytest.raises(FailedPrecondition, match=r"missing.*silobridge silo ingest"):
        VectorIndex.load(tmp_path, expected_fingerprint=FP)


def test_another_models_index_is_refused_naming_both_models(tmp_path: Path) -> None:
    keys, vectors = corpus(20)
    VectorIndex.build(keys, vectors, SMALL).save(tmp_path, fingerprint=FP, model_id=MODEL)
    with pytest.raises(FailedPrecondition) as refused:
        VectorIndex.load(
            tmp_path, expected_fingerprint="0123456789abcdef", expected_model_id="other/model"
        )
    message = refused.value.message
    for expected in (FP, MODEL, "0123456789abcdef", "other/model", "new data directory"):
        assert expected in message


def test_no_manifest_means_no_index(tmp_path: Path) -> None:
    assert read_manifest(tmp_path) is None
    with pytest.raises(NotFound, match="silobridge silo ingest"):
        VectorIndex.load(tmp_path, expected_fingerprint=FP)


def test_a_new_save_swaps_the_manifest_and_leaves_only_the_file_it_names(tmp_path: Path) -> None:
    keys, vectors = corpus(30)
    VectorIndex.build(keys[:10], vectors[:10], SMALL).save(tmp_path, fingerprint=FP, model_id=MODEL)
    (first_file,) = tmp_path.glob("faiss-*.index")
    (tmp_path / "faiss-leftover.index.tmp").write_bytes(b"half-written by a crashed save")

    VectorIndex.build(keys, vectors, SMALL).save(tmp_path, fingerprint=FP, model_id=MODEL)

    manifest = read_manifest(tmp_path)
    assert manifest is not None
    assert manifest.count == 30
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST_NAME, *manifest.files])
    assert first_file.name not in manifest.files
    assert VectorIndex.load(tmp_path, expected_fingerprint=FP).count == 30


def test_an_unknown_factory_is_a_config_error() -> None:
    keys, vectors = corpus(5)
    with pytest.raises(ConfigError, match="NoSuchIndex"):
        VectorIndex.build(
            keys, vectors, IndexSettings(exact_threshold=1, hnsw_factory="NoSuchIndex")
        )


@pytest.fixture
def restore_faiss_threads() -> Iterator[None]:
    before = faiss.omp_get_max_threads()
    yield
    faiss.omp_set_num_threads(before)


@pytest.mark.usefixtures("restore_faiss_threads")
def test_faiss_threads_are_pinned() -> None:
    pin_faiss_threads(1)
    assert faiss.omp_get_max_threads() == 1
    with pytest.raises(ConfigError, match="at least 1"):
        pin_faiss_threads(0)
