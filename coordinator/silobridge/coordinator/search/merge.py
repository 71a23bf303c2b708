"""Merging per-silo hit lists into one ranked answer: calibrated z-scores or reciprocal-rank fusion.

Both merges are pure and deterministic. A document is identified by (silo, doc_id): the same
doc_id in two silos names two different documents and both are kept. Each silo's hit list is
taken in its own order (silos return hits by their own score, descending); a doc_id repeated
within one silo keeps its first occurrence only. Ties in the merged score are broken by silo name,
then by position in that silo's own list, so equal-scored hits of one silo keep the silo's order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from silobridge.coordinator.search.calibration import Calibration
from silobridge.core.errors import InvalidArgument
from silobridge.core.federation import MergeMode
from silobridge.core.hits import Hit

DEFAULT_RRF_K = 60
# What a silo without a calibration is scored against: its raw score is used as the z-score,
# i.e. the null is taken as N(0, 1). Cosine scores lie in [-1, 1], so no uncalibrated hit
# outranks a calibrated hit more than one null standard deviation above "unrelated": without
# evidence that a raw score is surprising, it does not beat one that is.
UNCALIBRATED = Calibration(null_mean=0.0, null_std=1.0)


@dataclass(frozen=True)
class SiloResult:
    """One silo's answer; ``calibration`` is ``None`` where none is known (scored raw)."""

    silo: str
    hits: Sequence[Hit]
    calibration: Calibration | None


def merge_calibrated(results: Sequence[SiloResult], k: int) -> list[Hit]:
    """The ``k`` best hits across silos by z-score against each silo's null distribution.

    A silo with ``calibration=None`` is scored against ``UNCALIBRATED`` (its raw score as z).
    """
    _check_k(k)

    def z_scores(result: SiloResult) -> Callable[[int, Hit], float]:
        calibration = result.calibration if result.calibration is not None else UNCALIBRATED
        return lambda _rank, hit: calibration.z(hit.score)

    return _merge(results, k, z_scores)


def merge_rrf(results: Sequence[SiloResult], k: int, *, rrf_k: int = DEFAULT_RRF_K) -> list[Hit]:
    """The ``k`` best hits by reciprocal-rank fusion: ``1 / (rrf_k + rank)``, rank from 1 per silo.

    Only each silo's own order counts, so no calibration is needed; raw scores are ignored.
    """
    _check_k(k)
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or rrf_k < 0:
        raise InvalidArgument(f"rrf_k must be an integer >= 0, got {rrf_k!r}")

    def reciprocal_rank(_result: SiloResult) -> Callable[[int, Hit], float]:
        return lambda rank, _hit: 1.0 / (rrf_k + rank)

    return _merge(results, k, reciprocal_rank)


def _merge(
    results: Sequence[SiloResult],
    k: int,
    scorer_for: Callable[[SiloResult], Callable[[int, Hit], float]],
) -> list[Hit]:
    """Score every distinct hit with ``scorer_for(result)(rank, hit)``, sort, keep ``k``."""
    seen_silos: set[str] = set()
    keyed: list[tuple[float, str, int, Hit]] = []
    for result in results:
        if result.silo in seen_silos:
            raise InvalidArgument(f"silo {result.silo!r} appears twice in the results to merge")
        seen_silos.add(result.silo)
        score_of = scorer_for(result)
        for rank, hit in enumerate(_distinct_hits(result), start=1):
            merged_score = score_of(rank, hit)
            # The silo's hit unchanged, named by its silo and the score it was ranked by.
            merged = dataclasses.replace(hit, silo=result.silo, merged_score=merged_score)
            keyed.append((-merged_score, result.silo, rank, merged))
    keyed.sort(key=lambda entry: entry[:3])
    return [entry[3] for entry in keyed[:k]]


def _distinct_hits(result: SiloResult) -> Iterator[Hit]:
    """The silo's hits in its own order, first occurrence of each doc_id only; scores checked."""
    seen: set[str] = set()
    for hit in result.hits:
        if not math.isfinite(hit.score):
            raise InvalidArgument(
                f"silo {result.silo!r} returned a non-finite score {hit.score!r} "
                f"for doc {hit.doc_id!r}"
            )
        if hit.doc_id in seen:
            continue
        seen.add(hit.doc_id)
        yield hit


def _check_k(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise InvalidArgument(f"k must be an integer >= 1, got {k!r}")


Merge = Callable[[Sequence[SiloResult], int], list[Hit]]
MERGES: Mapping[MergeMode, Merge] = {
    MergeMode.CALIBRATED: merge_calibrated,
    MergeMode.RRF: merge_rrf,
}


def merge(mode: MergeMode, results: Sequence[SiloResult], k: int) -> list[Hit]:
    """The ``k`` best hits across silos by ``mode``."""
    return MERGES[mode](results, k)
