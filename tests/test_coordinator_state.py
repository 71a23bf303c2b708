"""Coordinator state (silos, anchor embeddings, adapters) and adapter training, end to end."""

from __future__ import annotations

import dataclasses
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from silobridge.adapters import FitConfig, fit
from silobridge.adapters.artifact import SpaceMismatch, load_adapter
from silobridge.adapters.signing import (
    SignatureInvalid,
    generate_signing_key,
    load_signing_key,
    load_verify_key,
)
from silobridge.coordinator.anchors.manifest import AnchorSetInfo
from silobridge.coordinator.anchors.synthetic import random_word_strings
from silobridge.coordinator.anchors.validation import anchor_texts_sha256
from silobridge.coordinator.search.calibration import Calibration
from silobridge.coordinator.state.records import AdapterRecord, SiloRecord
from silobridge.coordinator.state.store import STATE_FILE, CoordinatorState
from silobridge.coordinator.training.fit import adapter_id_for, load_record_adapter, train_adapter
from silobridge.core.errors import FailedPrecondition, InvalidArgument, NotFound
from silobridge.core.spaces import SpaceDescriptor
from silobridge.embedding.embedders import load_embedder

FloatMatrix = npt.NDArray[np.float32]

MINILM = SpaceDescriptor("minilm-l6@1f2e3d4c", "minilm-l6", 8, "1f2e3d4c5b6a7988")
STATIC = SpaceDescriptor("static-64@a0b1c2d3", "static-64", 4, "a0b1c2d3e4f50617")
SHA = "ab" * 32


def silo_record(name: str, space: SpaceDescriptor = MINILM, **changes: object) -> SiloRecord:
    record = SiloRecord(
        name=name,
        endpoint=f"{name}.example:50051",
        spiffe_id=f"spiffe://testnet/silo/{name}",
        org=f"org-{name}",
        space=space,
        document_count=31102,
        registered_at=1_700_000_000.5,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


def adapter_record(
    state: CoordinatorState, adapter_id: str, created_at: float, **changes: object
) -> AdapterRecord:
    record = AdapterRecord(
        adapter_id=adapter_id,
        kind="procrustes",
        source=MINILM,
        target=STATIC,
        anchor_set="words",
        anchor_set_version="v1",
        anchor_set_sha256=SHA,
        metrics={"heldout_ndcg@10": 0.9, "calibration_null_mean": 0.1},
        created_at=created_at,
        path=state.adapters_dir / adapter_id,
    )
    return dataclasses.replace(record, **changes)  # type: ignore[arg-type]


@pytest.fixture
def state(tmp_path: Path) -> Iterator[CoordinatorState]:
    with CoordinatorState.open(tmp_path / "state") as opened:
        yield opened


def reopen(state: CoordinatorState) -> CoordinatorState:
    state.close()
    return CoordinatorState.open(state.state_dir)


# --- silos ----------------------------------------------------------------------------------


def test_silos_are_upserted_by_name_listed_sorted_and_survive_a_restart(
    state: CoordinatorState,
) -> None:
    state.upsert_silo(silo_record("web"))
    state.upsert_silo(silo_record("kjv"))
    moved = silo_record("web", STATIC, endpoint="10.0.0.7:6000", document_count=12)
    state.upsert_silo(moved)

    reopened = reopen(state)
    try:
        assert [silo.name for silo in reopened.silos()] == ["kjv", "web"]
        assert reopened.silo("web") == moved
        assert reopened.silo("kjv") == silo_record("kjv")
        with pytest.raises(NotFound, match=r"'nope'.*kjv, web"):
            reopened.silo("nope")
    finally:
        reopened.close()


def test_a_negative_document_count_is_refused(state: CoordinatorState) -> None:
    with pytest.raises(InvalidArgument, match="negative"):
        state.upsert_silo(silo_record("web", document_count=-1))
    assert state.silos() == []


def test_a_closed_state_refuses_use(state: CoordinatorState) -> None:
    state.close()
    with pytest.raises(FailedPrecondition, match="closed"):
        state.silos()


def test_concurrent_writers_and_readers_share_one_connection(state: CoordinatorState) -> None:
    errors: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for i in range(40):
                state.upsert_silo(silo_record(f"s{worker}-{i:02d}"))
                state.silos()
        except BaseException as err:  # collected: a thread's exception is otherwise lost
            errors.append(err)

    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(state.silos()) == 160


# --- anchor embeddings ----------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 20), st.just(MINILM.dimension)),
        elements=st.floats(width=32, allow_nan=False, allow_infinity=False),
    )
)
def test_anchor_embeddings_round_trip_bit_exactly(vectors: FloatMatrix) -> None:
    # A fresh directory per example: hypothesis reruns the body, a fixture would be shared.
    with tempfile.TemporaryDirectory() as tmp:
        with CoordinatorState.open(Path(tmp)) as state:
            state.upsert_silo(silo_record("web"))
            state.store_anchor_embeddings("web", "words", "v1", MINILM, vectors)
        with CoordinatorState.open(Path(tmp)) as state:
            stored = state.anchor_embeddings("words", "v1", MINILM.fingerprint, silo="web")
    assert stored is not None
    assert stored.dtype == np.float32
    assert stored.shape == vectors.shape
    assert stored.tobytes() == np.ascontiguousarray(vectors).tobytes()


def test_anchor_embeddings_are_kept_per_silo_never_shared_by_fingerprint(
    state: CoordinatorState,
) -> None:
    rng = np.random.default_rng(0)
    first, second, other = (rng.standard_normal((5, 8)).astype(np.float32) for _ in range(3))
    other_space = dataclasses.replace(MINILM, space_id="other", fingerprint="ffffeeeeddddcccc")
    for name in ("web", "kjv", "law"):
        state.upsert_silo(silo_record(name))
    state.store_anchor_embeddings("web", "words", "v1", MINILM, first)
    state.store_anchor_embeddings("kjv", "words", "v1", MINILM, second)
    state.store_anchor_embeddings("law", "words", "v1", other_space, other)

    # The newer submission of kjv (same model) does not replace what web sent.
    found = state.anchor_embeddings("words", "v1", MINILM.fingerprint, silo="web")
    assert found is not None and np.array_equal(found, first)
    found = state.anchor_embeddings("words", "v1", MINILM.fingerprint, silo="kjv")
    assert found is not None and np.array_equal(found, second)
    found_other = state.anchor_embeddings("words", "v1", other_space.fingerprint, silo="law")
    assert found_other is not None and np.array_equal(found_other, other)
    assert state.anchor_embeddings("words", "v1", other_space.fingerprint, silo="web") is None
    assert state.anchor_embeddings("words", "v2", MINILM.fingerprint, silo="web") is None
    assert state.anchor_embeddings("bible", "v1", MINILM.fingerprint, silo="web") is None
    assert state.anchor_embeddings("words", "v1", STATIC.fingerprint, silo="web") is None

    # A silo sending the same version again replaces its own earlier matrix.
    state.store_anchor_embeddings("web", "words", "v1", MINILM, first * 2)
    found = state.anchor_embeddings("words", "v1", MINILM.fingerprint, silo="web")
    assert found is not None and np.array_equal(found, first * 2)

    # Re-registering a silo (a restart, a new endpoint) keeps what it sent.
    state.upsert_silo(silo_record("web", endpoint="10.0.0.9:6000"))
    found = state.anchor_embeddings("words", "v1", MINILM.fingerprint, silo="web")
    assert found is not None and np.array_equal(found, first * 2)


def test_anchor_embeddings_are_refused_from_strangers_and_in_the_wrong_shape(
    state: CoordinatorState,
) -> None:
    good = np.ones((3, MINILM.dimension), dtype=np.float32)
    with pytest.raises(NotFound, match="'web' is not registered"):
        state.store_anchor_embeddings("web", "words", "v1", MINILM, good)
    state.upsert_silo(silo_record("web"))
    with pytest.raises(InvalidArgument, match=r"shape \(3, 4\)"):
        state.store_anchor_embeddings("web", "words", "v1", MINILM, good[:, :4])
    with pytest.raises(InvalidArgument, match="non-finite"):
        state.store_anchor_embeddings("web", "words", "v1", MINILM, good * np.inf)
    assert state.anchor_embeddings("words", "v1", MINILM.fingerprint, silo="web") is None


# --- adapters -------------------------------------------------------------------------------


def test_adapters_upsert_by_id_and_adapter_for_returns_the_newest(
    state: CoordinatorState,
) -> None:
    state.add_adapter(adapter_record(state, "old", 100.0))
    state.add_adapter(adapter_record(state, "new", 200.0, kind="affine"))
    reverse = adapter_record(state, "rev", 300.0, source=STATIC, target=MINILM)
    state.add_adapter(reverse)
    newest = state.adapter_for(MINILM.space_id, STATIC.space_id)
    assert newest is not None and newest.adapter_id == "new" and newest.kind == "affine"

    # Retraining "old" replaces its record, which is now the newest for the pair.
    replaced = adapter_record(state, "old", 250.0, metrics={"heldout_ndcg@10": 0.5})
    state.add_adapter(replaced)
    reopened = reopen(state)
    try:
        assert [record.adapter_id for record in reopened.adapters()] == ["rev", "old", "new"]
        assert reopened.adapter_for(MINILM.space_id, STATIC.space_id) == replaced
        assert reopened.adapter_for(STATIC.space_id, MINILM.space_id) == reverse
        assert reopened.adapter_for(MINILM.space_id, "unknown") is None
    finally:
        reopened.close()


def test_artifact_paths_follow_a_moved_state_directory(tmp_path: Path) -> None:
    with CoordinatorState.open(tmp_path / "a") as state:
        state.add_adapter(adapter_record(state, "x", 1.0))
    (tmp_path / "a").rename(tmp_path / "b")
    with CoordinatorState.open(tmp_path / "b") as moved:
        assert moved.adapters()[0].path == tmp_path / "b" / "adapters" / "x"


# --- schema ---------------------------------------------------------------------------------


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    CoordinatorState.open(tmp_path).close()
    with sqlite3.connect(tmp_path / STATE_FILE) as conn:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        conn.execute(f"PRAGMA user_version = {version + 1}")
    conn.close()
    with pytest.raises(FailedPrecondition, match=f"schema version {version + 1}, newer"):
        CoordinatorState.open(tmp_path)


def test_a_file_that_is_not_a_state_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(b"not sqlite at all, just some bytes " * 100)
    with pytest.raises(FailedPrecondition, match="not a usable coordinator state"):
        CoordinatorState.open(tmp_path)


# --- fit progress ---------------------------------------------------------------------------


def test_fit_reports_progress_without_changing_the_result() -> None:
    rng = np.random.default_rng(3)
    source = rng.standard_normal((120, 6))
    target = source @ rng.standard_normal((6, 5)) + 0.05 * rng.standard_normal((120, 5))
    config = FitConfig(kind="auto", auto_candidates=("procrustes", "affine"))
    messages: list[str] = []

    reported = fit(source, target, config, progress=messages.append)
    silent = fit(source, target, config)

    assert messages[0] == "tuning procrustes"
    assert any(m.startswith("affine held-out nDCG@10 ") for m in messages)
    assert any(m.startswith(f"auto chose {reported.kind}") for m in messages)
    assert messages[-1] == f"refitting {reported.kind} on all 120 anchors"
    assert silent.kind == reported.kind
    assert np.array_equal(silent.apply(source), reported.apply(source))


# --- training -------------------------------------------------------------------------------

ANCHORS = 300


@dataclasses.dataclass(frozen=True)
class AnchorPairs:
    """One anchor set embedded by two real models."""

    info: AnchorSetInfo
    source: SpaceDescriptor
    source_vectors: FloatMatrix
    target: SpaceDescriptor
    target_vectors: FloatMatrix


@pytest.fixture(scope="module")
def pairs() -> AnchorPairs:
    texts = random_word_strings(ANCHORS, seed=0)
    info = AnchorSetInfo(
        name="words",
        version="v1",
        sha256=anchor_texts_sha256(texts),
        count=ANCHORS,
        created_at="2026-11-26T03:00:00Z",
        source=f"synthetic:{ANCHORS}:seed=0",
    )
    source_model, target_model = load_embedder("static-64"), load_embedder("minilm-l3-onnx")
    return AnchorPairs(
        info=info,
        source=source_model.space,
        source_vectors=source_model.embed(texts),
        target=target_model.space,
        target_vectors=target_model.embed(texts),
    )


@pytest.fixture
def signing_key_path(tmp_path: Path) -> Path:
    key_path = tmp_path / "keys" / "adapter.key"
    key_path.parent.mkdir()
    generate_signing_key(key_path)
    return key_path


def train(
    state: CoordinatorState,
    pairs: AnchorPairs,
    key_path: Path,
    config: FitConfig,
    events: list[tuple[str, str]] | None = None,
    *,
    target_vectors: FloatMatrix | None = None,
) -> AdapterRecord:
    seen = events if events is not None else []
    return train_adapter(
        state,
        source=pairs.source,
        target=pairs.target,
        source_vectors=pairs.source_vectors,
        target_vectors=pairs.target_vectors if target_vectors is None else target_vectors,
        anchor_set=pairs.info,
        fit_config=config,
        signing_key=load_signing_key(key_path),
        progress=lambda stage, message: seen.append((stage, message)),
    )


def test_train_adapter_fits_calibrates_signs_and_records_the_adapter(
    state: CoordinatorState, pairs: AnchorPairs, signing_key_path: Path
) -> None:
    config = FitConfig(kind="procrustes", seed=0)
    events: list[tuple[str, str]] = []

    record = train(state, pairs, signing_key_path, config, events)

    stages = list(dict.fromkeys(stage for stage, _ in events))
    assert stages == ["fit", "calibrate", "store"]
    assert events[0] == ("fit", f"fitting procrustes on {ANCHORS} anchor pairs")
    assert ("fit", f"refitting procrustes on all {ANCHORS} anchors") in events
    assert (record.kind, record.anchor_set, record.anchor_set_version) == (
        "procrustes",
        "words",
        "v1",
    )

    # The signed manifest carries the fit's held-out score and the calibration.
    verify_key = load_verify_key(signing_key_path.with_name("adapter.key.pub"))
    loaded = load_adapter(record.path, verify_key=verify_key)
    assert loaded.verified
    assert record.adapter_id == adapter_id_for(
        pairs.source, pairs.target, pairs.info.sha256, "procrustes", loaded.manifest.weights_sha256
    )
    assert 0.0 < loaded.manifest.metrics["heldout_ndcg@10"] <= 1.0
    assert loaded.manifest.metrics == record.metrics
    assert Calibration.from_metrics(loaded.manifest.metrics) is not None
    with pytest.raises(SignatureInvalid):
        load_adapter(record.path, verify_key=Ed25519PrivateKey.generate().public_key())

    # The artifact is the adapter the same fit produces.
    refitted = fit(pairs.source_vectors, pairs.target_vectors, config)
    assert np.array_equal(
        loaded.adapter.apply(pairs.source_vectors), refitted.apply(pairs.source_vectors)
    )

    reopened = reopen(state)
    try:
        assert reopened.adapters() == [record]
        assert reopened.adapter_for(pairs.source.space_id, pairs.target.space_id) == record
        adapter = load_record_adapter(record, verify_key, source=pairs.source, target=pairs.target)
        assert adapter.kind == "procrustes"
        changed = dataclasses.replace(pairs.target, fingerprint="0123456789abcdef")
        with pytest.raises(SpaceMismatch) as caught:
            load_record_adapter(record, verify_key, source=pairs.source, target=changed)
        assert "0123456789abcdef" in str(caught.value)
        assert pairs.target.fingerprint in str(caught.value)
    finally:
        reopened.close()


def test_retraining_the_same_pair_replaces_the_artifact_and_its_record(
    state: CoordinatorState, pairs: AnchorPairs, signing_key_path: Path
) -> None:
    first = train(state, pairs, signing_key_path, FitConfig(kind="procrustes", seed=0))
    second = train(state, pairs, signing_key_path, FitConfig(kind="procrustes", seed=1))

    assert second.adapter_id == first.adapter_id and second.path == first.path
    assert state.adapters() == [second]
    assert sorted(p.name for p in state.adapters_dir.iterdir()) == [first.adapter_id]
    verify_key = load_verify_key(signing_key_path.with_name("adapter.key.pub"))
    assert load_adapter(second.path, verify_key=verify_key).manifest.metrics == second.metrics


def test_train_adapter_refuses_mismatched_anchor_matrices_before_fitting(
    state: CoordinatorState, pairs: AnchorPairs, signing_key_path: Path
) -> None:
    events: list[tuple[str, str]] = []
    expected = rf"expected \({ANCHORS}, {pairs.target.dimension}\)"
    with pytest.raises(InvalidArgument, match=expected):
        train(
            state,
            pairs,
            signing_key_path,
            FitConfig(kind="procrustes"),
            events,
            target_vectors=pairs.target_vectors[:-1],
        )
    assert events == []
    assert state.adapters() == []
