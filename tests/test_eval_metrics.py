"""Ranking metrics and exact search of the evaluation harness, against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from silobridge.core.errors import InvalidArgument
from silobridge.evaluation.metrics import (
    arr_at_k,
    mean_mrr,
    mean_ndcg,
    mean_recall,
    mrr_at_k,
    ndcg_at_k,
    overlap_at_k,
    recall_at_k,
    retention,
)
from silobridge.evaluation.search import rerank, top_k


def test_ndcg_of_one_relevant_document_at_rank_three() -> None:
    # DCG = 1 / log2(3 + 1); the ideal puts it at rank 1, IDCG = 1 / log2(2) = 1.
    assert ndcg_at_k([7, 8, 5, 9], {5: 1.0}) == pytest.approx(1 / math.log2(4))
    assert ndcg_at_k([7, 8, 5, 9], {5: 1.0}) == pytest.approx(0.5)


def test_ndcg_with_graded_relevance_uses_linear_gains() -> None:
    ranking = [1, 2, 3]
    grades = {2: 2.0, 3: 1.0}
    dcg = 2.0 / math.log2(3) + 1.0 / math.log2(4)
    idcg = 2.0 / math.log2(2) + 1.0 / math.log2(3)
    assert ndcg_at_k(ranking, grades) == pytest.approx(dcg / idcg)


def test_ndcg_ignores_documents_below_the_cutoff() -> None:
    ranking = list(range(20))
    assert ndcg_at_k(ranking, {10: 1.0}, k=10) == 0.0
    assert ndcg_at_k(ranking, {9: 1.0}, k=10) == pytest.approx(1 / math.log2(11))


def test_ndcg_ideal_is_cut_at_k_when_there_are_more_relevant_than_k() -> None:
    relevant = {d: 1.0 for d in range(15)}
    # The first ten are all relevant: that is the best any ranking can do at k=10.
    assert ndcg_at_k(list(range(10)), relevant, k=10) == pytest.approx(1.0)


def test_recall_counts_the_relevant_share_found() -> None:
    assert recall_at_k([4, 1, 9], {1: 1.0, 9: 1.0, 30: 1.0, 31: 1.0}) == pytest.approx(2 / 4)
    assert recall_at_k([4, 5], {6: 1.0}) == 0.0


def test_mrr_is_the_reciprocal_rank_of_the_first_hit() -> None:
    assert mrr_at_k([3, 2, 1, 0], {1: 1.0, 0: 1.0}) == pytest.approx(1 / 3)
    assert mrr_at_k([3, 2, 1, 0], {3: 1.0}) == 1.0
    assert mrr_at_k(list(range(20)), {12: 1.0}, k=10) == 0.0


def test_overlap_and_arr_by_hand() -> None:
    native = np.array([[0, 1, 2, 3, 4, 5, 6, 7, 8, 9], [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]])
    adapted = np.array(
        [
            [9, 8, 7, 100, 101, 102, 103, 104, 105, 106],  # 3 shared, order is irrelevant
            [10, 11, 12, 13, 14, 15, 16, 17, 18, 19],  # identical
        ]
    )
    assert overlap_at_k(list(adapted[0]), list(native[0])) == pytest.approx(0.3)
    assert arr_at_k(adapted, native) == pytest.approx((0.3 + 1.0) / 2)
    assert arr_at_k(native, native) == 1.0


def test_means_over_queries() -> None:
    rankings = np.array([[5, 6, 7], [7, 6, 5]])
    qrels = [{5: 1.0}, {5: 1.0}]
    assert mean_ndcg(rankings, qrels, k=3) == pytest.approx((1.0 + 0.5) / 2)
    assert mean_mrr(rankings, qrels, k=3) == pytest.approx((1.0 + 1 / 3) / 2)
    assert mean_recall(rankings, qrels, k=3) == 1.0
    assert mean_recall(rankings[:, :2], qrels, k=2) == pytest.approx(0.5)


def test_retention_is_a_ratio_and_undefined_without_a_native_score() -> None:
    assert retention(0.42, 0.6) == pytest.approx(0.7)
    assert retention(0.7, 0.6) == pytest.approx(0.7 / 0.6)  # above 1 is reported, not capped
    assert retention(0.3, 0.0) is None
    assert retention(None, 0.5) is None


@given(
    ranking=st.lists(st.integers(0, 40), min_size=1, max_size=15, unique=True),
    relevant=st.dictionaries(st.integers(0, 40), st.sampled_from([1.0, 2.0, 3.0]), min_size=1),
)
def test_metrics_stay_in_the_unit_interval(ranking: list[int], relevant: dict[int, float]) -> None:
    for metric in (ndcg_at_k, recall_at_k, mrr_at_k):
        value = metric(ranking, relevant, 10)
        assert 0.0 <= value <= 1.0 + 1e-12
    hit = any(doc in relevant for doc in ranking[:10])
    assert (mrr_at_k(ranking, relevant) > 0) == hit
    assert (ndcg_at_k(ranking, relevant) > 0) == hit


@given(st.integers(0, 2**32 - 1), st.integers(1, 12))
def test_top_k_matches_a_full_sort(seed: int, k: int) -> None:
    rng = np.random.default_rng(seed)
    queries = rng.standard_normal((7, 5)).astype(np.float32)
    corpus = rng.standard_normal((30, 5)).astype(np.float32)
    ranked = top_k(queries, corpus, k)
    scores = queries @ corpus.T
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    # Ties are (almost) impossible with random floats, so the order must agree exactly.
    np.testing.assert_array_equal(ranked, expected)


def test_top_k_returns_the_whole_corpus_when_k_exceeds_it() -> None:
    corpus = np.eye(3, dtype=np.float32)
    ranked = top_k(np.array([[0.1, 0.9, 0.5]], dtype=np.float32), corpus, 10)
    assert ranked.tolist() == [[1, 2, 0]]


def test_top_k_refuses_mismatched_dimensions() -> None:
    with pytest.raises(InvalidArgument, match="dimension"):
        top_k(np.ones((1, 3), dtype=np.float32), np.ones((4, 2), dtype=np.float32), 2)


def test_rerank_orders_candidates_by_the_other_query_vector() -> None:
    corpus = np.eye(4, dtype=np.float32)
    candidates = np.array([[0, 1, 2]])
    query = np.array([[0.1, 0.2, 0.9, 0.8]], dtype=np.float32)
    # Document 3 scores best but was not shortlisted, so it cannot come back.
    assert rerank(candidates, query, corpus, 2).tolist() == [[2, 1]]
