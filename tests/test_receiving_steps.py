"""Receiving-side steps of the harness: hubness correction's invariants (hypothesis)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from hypothesis import given, settings
from hypothesis import strategies as st

from silobridge.evaluation.receiving import hubness, hubness_rerank
from silobridge.evaluation.search import rerank, top_k


def _unit(rng: np.random.Generator, rows: int, dim: int) -> npt.NDArray[np.float32]:
    vectors = rng.normal(size=(rows, dim)).astype(np.float32)
    unit: npt.NDArray[np.float32] = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    return unit


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), docs=st.integers(5, 60), refs=st.integers(1, 40))
def test_hubness_is_the_mean_of_each_documents_k_best_reference_similarities(
    seed: int, docs: int, refs: int
) -> None:
    rng = np.random.default_rng(seed)
    corpus, reference = _unit(rng, docs, 8), _unit(rng, refs, 8)
    k = min(10, refs)
    expected = np.sort(corpus @ reference.T, axis=1)[:, -k:].mean(axis=1)
    np.testing.assert_allclose(hubness(corpus, reference), expected, rtol=1e-5, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), shift=st.floats(-1, 1, width=32))
def test_a_uniform_penalty_changes_no_order_and_a_hub_loses_its_place(
    seed: int, shift: float
) -> None:
    rng = np.random.default_rng(seed)
    corpus, queries = _unit(rng, 50, 8), _unit(rng, 6, 8)
    candidates = top_k(queries, corpus, 20)
    flat = np.full(50, shift, dtype=np.float32)
    np.testing.assert_array_equal(
        hubness_rerank(candidates, queries, corpus, flat, 10),
        rerank(candidates, queries, corpus, 10),
    )
    # Penalise each query's best candidate heavily: it drops out of that query's top 10.
    hub = candidates[0, 0]
    penalty = np.zeros(50, dtype=np.float32)
    penalty[hub] = 10.0
    assert hub not in hubness_rerank(candidates[:1], queries[:1], corpus, penalty, 10)[0]
