"""Refinement from traffic (``adapters/refinement``): mutual pairs, the map, the label-free guard,
and the silo's opt-in use of it (``silo_agent/receiving/refine``)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from silobridge.adapters import FitConfig, fit
from silobridge.adapters.refinement import (
    GUARD_MAX_BYTES,
    GUARD_TARGETS_TENSOR,
    GUARD_TRANSLATED_TENSOR,
    MIN_PAIRS,
    check_refinement,
    fit_refinement,
    guard_tensors,
    knn_mean,
    mutual_pairs,
    unit_rows,
)
from silobridge.core.documents import Document
from silobridge.core.errors import ConfigError
from silobridge.core.spaces import SpaceDescriptor
from silobridge.silo_agent.adapter_fetch import Translation
from silobridge.silo_agent.receiving.hubness_routes import HubnessCorrections
from silobridge.silo_agent.receiving.refine import Refinements
from silobridge.silo_agent.receiving.settings import ReceivingSettings, receiving_settings
from silobridge.silo_agent.store.data import SiloData

DIM = 16


def _unit(rng: np.random.Generator, n: int, dim: int = DIM) -> np.ndarray:
    return unit_rows(rng.standard_normal((n, dim)))


@settings(max_examples=40)
@given(seed=st.integers(0, 10_000), nq=st.integers(1, 40), nd=st.integers(1, 40))
def test_mutual_pairs_are_each_others_best_match_by_csls(seed: int, nq: int, nd: int) -> None:
    rng = np.random.default_rng(seed)
    q, d = _unit(rng, nq, 6), _unit(rng, nd, 6)
    rows, docs = mutual_pairs(q, d, k=3)
    csls = 2 * (q @ d.T) - knn_mean(q, d, 3)[:, None] - knn_mean(d, q, 3)[None, :]
    expected = [i for i in range(nq) if csls[:, csls[i].argmax()].argmax() == i]
    assert rows.tolist() == expected
    assert docs.tolist() == [int(csls[i].argmax()) for i in expected]
    assert len(set(docs.tolist())) == len(docs)  # a document pairs with one query at most


def test_the_map_is_pulled_to_the_identity_and_needs_enough_pairs() -> None:
    rng = np.random.default_rng(1)
    docs = _unit(rng, 400)
    queries = unit_rows(docs[:300] + 0.2 * rng.standard_normal((300, DIM)))
    stiff = fit_refinement(queries, docs, lam=1e9)
    assert stiff is not None and np.allclose(stiff, np.eye(DIM), atol=1e-4)
    loose = fit_refinement(queries, docs, lam=1.0)
    assert loose is not None and not np.allclose(loose, np.eye(DIM), atol=1e-2)
    assert fit_refinement(queries[: MIN_PAIRS - 1], docs) is None


def test_guard_tensors_are_float16_unit_rows_within_their_budget() -> None:
    rng = np.random.default_rng(2)
    translated, targets = rng.standard_normal((5000, 384)), rng.standard_normal((5000, 384))
    tensors = guard_tensors(translated, targets)
    a, b = tensors[GUARD_TRANSLATED_TENSOR], tensors[GUARD_TARGETS_TENSOR]
    assert a.dtype == b.dtype == np.float16 and a.shape == b.shape
    assert a.nbytes + b.nbytes <= GUARD_MAX_BYTES
    assert np.allclose(np.linalg.norm(a.astype(np.float32), axis=1), 1.0, atol=1e-3)
    # The pairs stay pairs: row i of both is the same anchor.
    small = guard_tensors(translated[:10], translated[:10])
    assert np.array_equal(small[GUARD_TRANSLATED_TENSOR], small[GUARD_TARGETS_TENSOR])


def _anchors(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Anchor check pairs of a good adapter: its translations near the silo's own vectors."""
    own = _unit(rng, 300)
    return unit_rows(own + 0.1 * rng.standard_normal(own.shape)), own


def test_the_guard_accepts_a_correction_that_keeps_the_anchors_in_place() -> None:
    rng = np.random.default_rng(3)
    docs = _unit(rng, 600)
    # Translated queries land a little off the documents they are about (a symmetric task).
    pool = unit_rows(docs[:500] + 0.15 * rng.standard_normal((500, DIM)))
    translated, own = _anchors(rng)
    verdict = check_refinement(pool, docs, translated, own)
    assert verdict.accepted, verdict.describe()


def test_the_guard_refuses_a_correction_that_bends_the_anchors_out_of_shape() -> None:
    rng = np.random.default_rng(4)
    # What the queries pair with is a strongly transformed version of them (short text ->
    # long document): a map that fits it moves every other text too.
    shear = np.eye(DIM) + 1.5 * rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)
    queries = _unit(rng, 500)
    docs = np.concatenate([unit_rows(queries @ shear), _unit(rng, 100)])
    translated, own = _anchors(rng)
    verdict = check_refinement(queries, docs, translated, own, lam=1.0)
    assert not verdict.accepted
    assert "anchors' mean cosine fell" in verdict.reason
    assert verdict.anchor_cosine[1] < verdict.anchor_cosine[0]
    assert "refused" in verdict.describe()


def test_the_guard_refuses_a_pool_with_too_few_mutual_pairs() -> None:
    rng = np.random.default_rng(5)
    docs = _unit(rng, 50)
    translated, own = _anchors(rng)
    verdict = check_refinement(_unit(rng, 40), docs, translated, own)
    assert not verdict.accepted and "fewer than" in verdict.reason


# --- the silo's side -------------------------------------------------------------------------


def _silo_data(tmp_path: Path, docs: np.ndarray) -> SiloData:
    space = SpaceDescriptor("s@00000000", "s", DIM, "0" * 16)
    data = SiloData.open(tmp_path / "data", space)
    data.upsert([Document(f"d{i}", f"text {i}") for i in range(len(docs))], docs)
    data.rebuild_index()
    return data


def _wait_for_fits() -> None:
    for thread in [t for t in threading.enumerate() if t.name in ("refine-fit", "hubness-warm")]:
        thread.join(timeout=60)


def _translation(guard: dict[str, np.ndarray] | None) -> Translation:
    rng = np.random.default_rng(6)
    adapter = fit(_unit(rng, 64), _unit(rng, 64), FitConfig(kind="procrustes"))
    space = SpaceDescriptor("s@00000000", "s", DIM, "0" * 16)
    guard = guard or {}
    return Translation(
        adapter,
        "src@11111111",
        space,
        adapter_id="a1",
        guard_translated=guard.get(GUARD_TRANSLATED_TENSOR),
        guard_targets=guard.get(GUARD_TARGETS_TENSOR),
    )


@pytest.mark.parametrize("bent", [False, True], ids=["accepted", "refused"])
def test_a_silo_uses_a_refinement_only_once_the_guard_accepts_it(
    tmp_path: Path, bent: bool
) -> None:
    rng = np.random.default_rng(7)
    shear = np.eye(DIM) + 1.5 * rng.standard_normal((DIM, DIM)) / np.sqrt(DIM)
    docs = _unit(rng, 600)
    pool = unit_rows(docs[:500] @ np.linalg.inv(shear) if bent else docs[:500])
    pool = unit_rows(pool + 0.15 * rng.standard_normal(pool.shape))
    data = _silo_data(tmp_path, docs)
    try:
        settings = ReceivingSettings(
            traffic_pool=1000, traffic_max_share=1.0, traffic_min=400, refine=True,
            refine_lambda=1.0 if bent else 30.0,
        )  # fmt: skip
        corrections = HubnessCorrections(settings, data)
        refinements = Refinements(corrections, data)
        translated, own = _anchors(rng)
        translation = _translation(guard_tensors(translated, own))
        # Below traffic_min: nothing is fitted.
        for vector in pool[:399]:
            corrections.remember("src@11111111", "s@00000000", "alice", vector)
        assert refinements.get(translation, data.primary) is None
        _wait_for_fits()
        assert refinements.verdict("a1", "s@00000000") is None
        for vector in pool[399:]:
            corrections.remember("src@11111111", "s@00000000", "alice", vector)
        assert refinements.get(translation, data.primary) is None  # fitted in the background
        _wait_for_fits()
        verdict = refinements.verdict("a1", "s@00000000")
        assert verdict is not None
        assert verdict.accepted is (not bent), verdict.describe()
        refined = refinements.get(translation, data.primary)
        if bent:
            assert refined is None
        else:
            assert refined is not None and refined.correction is not None
            mapped = refined.apply(pool[0].astype(np.float32))
            assert mapped.shape == (DIM,) and abs(float(np.linalg.norm(mapped)) - 1) < 1e-5
    finally:
        data.close()


def test_an_adapter_without_check_pairs_is_never_refined(tmp_path: Path) -> None:
    rng = np.random.default_rng(8)
    docs = _unit(rng, 300)
    data = _silo_data(tmp_path, docs)
    try:
        settings = ReceivingSettings(
            traffic_pool=1000, traffic_max_share=1.0, traffic_min=200, refine=True
        )
        corrections = HubnessCorrections(settings, data)
        refinements = Refinements(corrections, data)
        for vector in docs[:250]:
            corrections.remember("src@11111111", "s@00000000", "alice", vector)
        translation = _translation(None)
        assert refinements.get(translation, data.primary) is None
        deadline = time.monotonic() + 30
        _wait_for_fits()
        assert time.monotonic() < deadline
        assert refinements.get(translation, data.primary) is None
        assert refinements.verdict("a1", "s@00000000") is None
    finally:
        data.close()


def test_refine_is_off_by_default_and_needs_a_pool(tmp_path: Path) -> None:
    assert ReceivingSettings().refine is False
    path = tmp_path / "silo.toml"
    with pytest.raises(ConfigError, match="set traffic_pool too"):
        receiving_settings(path, {"receiving": {"refine": True}})
    with pytest.raises(ConfigError, match="refine_lambda"):
        receiving_settings(
            path, {"receiving": {"refine": True, "traffic_pool": 10, "refine_lambda": -1.0}}
        )
    on = receiving_settings(path, {"receiving": {"refine": True, "traffic_pool": 2000}})
    assert on.refine and on.refine_lambda == 30.0
