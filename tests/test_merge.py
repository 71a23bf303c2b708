"""Score calibration and merging of per-silo hit lists: invariants, hand cases, validation."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from silobridge.coordinator.search.calibration import Calibration, fit_calibration
from silobridge.coordinator.search.merge import SiloResult, merge_calibrated, merge_rrf
from silobridge.core.errors import InvalidArgument
from silobridge.core.hits import Hit

# ---------------------------------------------------------------------------------------------
# Strategies: silos with hit lists sorted by their own score, as a silo returns them.

doc_ids = st.sampled_from([f"doc-{n}" for n in range(12)])  # small: same ids across silos
scores = st.floats(-1.0, 1.0, allow_nan=False)
fields = st.dictionaries(st.sampled_from(["title", "url"]), st.text(max_size=5), max_size=2)
calibrations = st.none() | st.builds(
    Calibration, null_mean=st.floats(-0.5, 0.8), null_std=st.floats(0.01, 0.5)
)


@st.composite
def silo_results(draw: st.DrawFn, name: str) -> SiloResult:
    ids = draw(st.lists(doc_ids, unique=True, max_size=8))
    hit_scores = sorted(draw(st.lists(scores, min_size=len(ids), max_size=len(ids))), reverse=True)
    hits = [
        Hit(doc_id=doc, score=score, fields=draw(fields))
        for doc, score in zip(ids, hit_scores, strict=True)
    ]
    return SiloResult(silo=name, hits=hits, calibration=draw(calibrations))


@st.composite
def federated_results(draw: st.DrawFn) -> list[SiloResult]:
    names = draw(st.lists(st.sampled_from(["alpha", "beta", "gamma", "delta"]), unique=True))
    return [draw(silo_results(name)) for name in names]


ks = st.integers(1, 40)
Merge = Callable[[Sequence[SiloResult], int], list[Hit]]
MERGES: list[Merge] = [merge_calibrated, merge_rrf]


def _total_hits(results: Sequence[SiloResult]) -> int:
    return sum(len(result.hits) for result in results)


def _input_hits(results: Sequence[SiloResult]) -> list[tuple[str, str, float, dict[str, str]]]:
    return [
        (result.silo, hit.doc_id, hit.score, dict(hit.fields))
        for result in results
        for hit in result.hits
    ]


def _as_tuple(hit: Hit) -> tuple[str, str, float, dict[str, str]]:
    return (hit.silo, hit.doc_id, hit.score, dict(hit.fields))


# ---------------------------------------------------------------------------------------------
# Invariants of both merges.


@pytest.mark.parametrize("merge", MERGES)
@given(results=federated_results(), k=ks)
def test_merge_returns_the_k_best_hits_in_order(
    merge: Merge, results: list[SiloResult], k: int
) -> None:
    merged = merge(results, k)

    assert len(merged) == min(k, _total_hits(results))
    assert all(a.merged_score >= b.merged_score for a, b in itertools.pairwise(merged))
    # Truncation keeps the best: nothing left out scores above the last hit kept.
    everything = merge(results, max(1, _total_hits(results)))
    kept = {(hit.silo, hit.doc_id) for hit in merged}
    dropped = [hit for hit in everything if (hit.silo, hit.doc_id) not in kept]
    if merged and dropped:
        assert max(hit.merged_score for hit in dropped) <= merged[-1].merged_score


@pytest.mark.parametrize("merge", MERGES)
@given(results=federated_results(), k=ks)
def test_merged_hits_are_input_hits_unchanged(
    merge: Merge, results: list[SiloResult], k: int
) -> None:
    merged = merge(results, k)

    inputs = _input_hits(results)
    for hit in merged:
        assert _as_tuple(hit) in inputs
    assert len({(hit.silo, hit.doc_id) for hit in merged}) == len(merged)


@pytest.mark.parametrize("merge", MERGES)
@given(results=federated_results(), k=ks)
def test_each_silo_keeps_its_own_order(merge: Merge, results: list[SiloResult], k: int) -> None:
    merged = merge(results, k)

    for result in results:
        own_order = [hit.doc_id for hit in result.hits]
        in_merge = [hit.doc_id for hit in merged if hit.silo == result.silo]
        assert in_merge == own_order[: len(in_merge)]


@pytest.mark.parametrize("merge", MERGES)
@given(results=federated_results(), k=ks, data=st.data())
def test_merge_does_not_depend_on_the_order_silos_answered(
    merge: Merge, results: list[SiloResult], k: int, data: st.DataObject
) -> None:
    shuffled = data.draw(st.permutations(results))

    assert merge(shuffled, k) == merge(results, k)


@given(results=federated_results(), k=ks)
def test_calibrated_merge_scores_each_hit_by_its_silos_z(results: list[SiloResult], k: int) -> None:
    calibration_of = {result.silo: result.calibration for result in results}

    for hit in merge_calibrated(results, k):
        calibration = calibration_of[hit.silo]
        expected = hit.score if calibration is None else calibration.z(hit.score)
        assert hit.merged_score == pytest.approx(expected)


@given(results=federated_results(), k=ks, rrf_k=st.integers(0, 100))
def test_rrf_scores_each_hit_by_its_rank_in_its_silo(
    results: list[SiloResult], k: int, rrf_k: int
) -> None:
    rank_of = {
        (result.silo, hit.doc_id): rank
        for result in results
        for rank, hit in enumerate(result.hits, start=1)
    }

    merged = merge_rrf(results, k, rrf_k=rrf_k)

    for hit in merged:
        assert hit.merged_score == pytest.approx(1.0 / (rrf_k + rank_of[(hit.silo, hit.doc_id)]))
    # With k at least the number of silos, every silo's first hit is in, scored 1/(rrf_k+1).
    answering = [result for result in results if result.hits]
    if k >= len(answering):
        firsts = {(hit.silo, hit.doc_id): hit.merged_score for hit in merged}
        for result in answering:
            assert firsts[(result.silo, result.hits[0].doc_id)] == 1.0 / (rrf_k + 1)


# ---------------------------------------------------------------------------------------------
# Hand cases.


def _silo(name: str, hits: list[tuple[str, float]], calibration: Calibration | None) -> SiloResult:
    return SiloResult(
        silo=name,
        hits=[Hit(doc_id=doc, score=score, fields={}) for doc, score in hits],
        calibration=calibration,
    )


def test_a_surprising_score_beats_a_higher_raw_score_against_a_higher_null() -> None:
    # Silo "lowspace" scores unrelated texts around 0.1: 0.55 there is 4.5 null std above.
    # Silo "highspace" scores unrelated texts around 0.5: 0.7 there is only 2 null std above.
    low = _silo("lowspace", [("a", 0.55)], Calibration(null_mean=0.1, null_std=0.1))
    high = _silo("highspace", [("b", 0.7)], Calibration(null_mean=0.5, null_std=0.1))

    merged = merge_calibrated([high, low], k=2)

    assert [(hit.silo, hit.doc_id) for hit in merged] == [("lowspace", "a"), ("highspace", "b")]
    assert merged[0].score == 0.55  # the raw score travels unchanged
    assert merged[0].merged_score == pytest.approx(4.5)
    assert merged[1].merged_score == pytest.approx(2.0)


def test_calibration_fitted_on_anchors_ranks_a_relevant_hit_above_an_anisotropic_silos_noise() -> (
    None
):
    rng = np.random.default_rng(7)
    dim, n = 64, 400
    # Space "iso": isotropic, unrelated texts score near 0.
    iso = rng.normal(size=(n, dim))
    # Space "aniso": every vector shares one direction, so unrelated texts score near 0.5.
    shared = np.zeros(dim)
    shared[0] = 1.0
    aniso = rng.normal(size=(n, dim)) / math.sqrt(dim) + shared
    iso_calibration = fit_calibration(iso, iso, seed=1)
    aniso_calibration = fit_calibration(aniso, aniso, seed=1)
    assert aniso_calibration.null_mean > iso_calibration.null_mean + 0.3

    def unit(v: np.ndarray) -> np.ndarray:
        out: np.ndarray = v / np.linalg.norm(v)
        return out

    # In "iso" the query has a genuinely related document (cosine 0.45).
    query_iso = unit(rng.normal(size=dim))
    other = rng.normal(size=dim)
    orthogonal = unit(other - (other @ query_iso) * query_iso)
    related = 0.45 * query_iso + math.sqrt(1 - 0.45**2) * orthogonal
    related_score = float(query_iso @ related)
    # In "aniso" the best hit is merely the most similar of unrelated documents.
    query_aniso = unit(rng.normal(size=dim) / math.sqrt(dim) + shared)
    unrelated = np.array([unit(v) for v in rng.normal(size=(50, dim)) / math.sqrt(dim) + shared])
    noise_score = float(np.max(unrelated @ query_aniso))
    assert noise_score > related_score  # raw scores would put the noise first

    merged = merge_calibrated(
        [
            _silo("aniso", [("noise", noise_score)], aniso_calibration),
            _silo("iso", [("related", related_score)], iso_calibration),
        ],
        k=2,
    )

    assert [hit.doc_id for hit in merged] == ["related", "noise"]


def test_same_doc_id_in_two_silos_are_two_documents() -> None:
    results = [_silo("alpha", [("x", 0.9)], None), _silo("beta", [("x", 0.8)], None)]

    for merge in MERGES:
        merged = merge(results, 10)
        assert sorted((hit.silo, hit.doc_id) for hit in merged) == [("alpha", "x"), ("beta", "x")]


def test_a_doc_repeated_within_one_silo_keeps_its_first_occurrence() -> None:
    results = [_silo("alpha", [("x", 0.9), ("y", 0.8), ("x", 0.7)], None)]

    assert [(h.doc_id, h.score) for h in merge_calibrated(results, 10)] == [("x", 0.9), ("y", 0.8)]
    rrf = merge_rrf(results, 10, rrf_k=60)
    assert [(h.doc_id, h.merged_score) for h in rrf] == [("x", 1 / 61), ("y", 1 / 62)]


def test_ties_are_broken_by_silo_name() -> None:
    results = [_silo("zulu", [("a", 0.5)], None), _silo("alpha", [("b", 0.5)], None)]

    for merge in MERGES:
        assert [hit.silo for hit in merge(results, 2)] == ["alpha", "zulu"]


def test_an_uncalibrated_silo_is_scored_by_its_raw_score() -> None:
    calibrated = _silo("cal", [("c", 0.3)], Calibration(null_mean=0.0, null_std=0.2))  # z = 1.5
    uncalibrated = _silo("raw", [("r", 0.99)], None)

    merged = merge_calibrated([uncalibrated, calibrated], k=2)

    assert [(hit.silo, hit.merged_score) for hit in merged] == [
        ("cal", pytest.approx(1.5)),
        ("raw", 0.99),
    ]


def test_empty_input_merges_to_nothing() -> None:
    for merge in MERGES:
        assert merge([], 5) == []
        assert merge([_silo("alpha", [], None)], 5) == []


@pytest.mark.parametrize("k", [0, -1, True, 2.0])
def test_k_must_be_a_positive_integer(k: object) -> None:
    for merge in MERGES:
        with pytest.raises(InvalidArgument, match="k must be"):
            merge([_silo("alpha", [("a", 0.5)], None)], k)  # type: ignore[arg-type]


def test_rrf_k_must_not_be_negative() -> None:
    with pytest.raises(InvalidArgument, match="rrf_k"):
        merge_rrf([_silo("alpha", [("a", 0.5)], None)], 1, rrf_k=-1)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_score_from_a_silo_is_refused_naming_it(bad: float) -> None:
    for merge in MERGES:
        with pytest.raises(InvalidArgument, match="'beta'"):
            merge([_silo("alpha", [("a", 0.5)], None), _silo("beta", [("b", bad)], None)], 5)


def test_a_silo_listed_twice_is_refused() -> None:
    for merge in MERGES:
        with pytest.raises(InvalidArgument, match="'alpha' appears twice"):
            merge([_silo("alpha", [("a", 0.5)], None), _silo("alpha", [("b", 0.4)], None)], 5)


# ---------------------------------------------------------------------------------------------
# Calibration.


def _random_directions(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def test_null_of_random_directions_in_64_d_is_centred_with_std_one_eighth() -> None:
    vectors = _random_directions(1000, 64, seed=3)

    calibration = fit_calibration(vectors, vectors)

    # Cosine of two random directions in d dimensions: mean 0, std 1/sqrt(d).
    assert abs(calibration.null_mean) < 0.01
    assert calibration.null_std == pytest.approx(1 / 8, rel=0.05)


def test_fit_is_deterministic_per_seed() -> None:
    vectors = _random_directions(200, 16, seed=4)

    assert fit_calibration(vectors, vectors, seed=5) == fit_calibration(vectors, vectors, seed=5)
    assert fit_calibration(vectors, vectors, seed=5) != fit_calibration(vectors, vectors, seed=6)


def test_fit_never_pairs_an_anchor_with_itself() -> None:
    # Two orthogonal anchors: every unrelated pair scores exactly 0; a self pair would score 1.
    vectors = np.eye(2, 8, dtype=np.float32)

    calibration = fit_calibration(vectors, vectors, pairs=1000)

    assert calibration.null_mean == 0.0
    assert calibration.null_std == 1e-6  # the floor, so z stays finite


def test_fit_ignores_row_lengths() -> None:
    vectors = _random_directions(100, 16, seed=8)
    lengths = np.random.default_rng(9).uniform(0.1, 10.0, size=(100, 1)).astype(np.float32)

    plain = fit_calibration(vectors, vectors)
    scaled = fit_calibration(vectors * lengths, vectors)

    assert scaled.null_mean == pytest.approx(plain.null_mean, abs=1e-6)
    assert scaled.null_std == pytest.approx(plain.null_std, rel=1e-5)


@pytest.mark.parametrize(
    ("queries", "targets", "message"),
    [
        (np.ones((5, 8)), np.ones((5, 4)), "same shape"),
        (np.ones((5, 8)), np.ones((6, 8)), "same shape"),
        (np.ones((1, 8)), np.ones((1, 8)), "at least 2"),
        (np.ones(8), np.ones(8), "at least 2"),
        (np.ones((3, 0)), np.ones((3, 0)), "at least 2"),
        (np.array([[1.0, math.nan], [1.0, 0.0]]), np.ones((2, 2)), "queries has 1 row"),
        (np.ones((2, 2)), np.array([[math.inf, 0.0], [1.0, 0.0]]), "targets has 1 row"),
        (np.array([[1.0, 0.0], [0.0, 0.0]]), np.ones((2, 2)), "queries row 1 has zero norm"),
    ],
)
def test_fit_refuses_bad_matrices(queries: np.ndarray, targets: np.ndarray, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        fit_calibration(queries, targets)


def test_fit_refuses_no_pairs() -> None:
    vectors = _random_directions(4, 4, seed=0)

    with pytest.raises(InvalidArgument, match="pairs"):
        fit_calibration(vectors, vectors, pairs=0)


@given(mean=st.floats(-1.0, 1.0), std=st.floats(1e-6, 1.0), score=st.floats(-1.0, 1.0))
def test_calibration_round_trips_through_adapter_metrics(
    mean: float, std: float, score: float
) -> None:
    calibration = Calibration(null_mean=mean, null_std=std)
    metrics = {"retention_at_10": 0.9, **calibration.to_metrics()}

    restored = Calibration.from_metrics(metrics)

    assert restored == calibration
    assert restored.z(mean) == 0.0
    assert restored.z(score) == pytest.approx((score - mean) / std)


def test_metrics_without_calibration_give_none() -> None:
    assert Calibration.from_metrics({}) is None
    assert Calibration.from_metrics({"calibration_null_mean": 0.1}) is None
    assert Calibration.from_metrics({"calibration_null_std": 0.1}) is None


@pytest.mark.parametrize(
    ("mean", "std"), [(math.nan, 0.1), (0.0, math.inf), (0.0, 0.0), (0.0, -0.1), (0.1, math.nan)]
)
def test_unusable_calibration_metrics_are_refused(mean: float, std: float) -> None:
    metrics = {"calibration_null_mean": mean, "calibration_null_std": std}

    with pytest.raises(InvalidArgument, match="calibration"):
        Calibration.from_metrics(metrics)
