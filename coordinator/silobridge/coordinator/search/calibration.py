"""Score calibration: a null distribution per (adapter, target space), used to z-score hits.

Raw cosine scores from different embedding spaces, or reached through adapters of different
quality, are not comparable: one model's "unrelated" sits near 0.0, another's near 0.3. For each
(adapter, target space) we estimate on the shared public anchors how a translated query scores
against *unrelated* target texts (anchor i against anchor j, j != i), and report a hit's score as
its z-score against that null: how many null standard deviations above "unrelated" it is. This is
the z-score normalisation of metasearch / federated search.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from silobridge.core.errors import InvalidArgument

FloatMatrix = npt.NDArray[np.float32]

METRIC_NULL_MEAN = "calibration_null_mean"
METRIC_NULL_STD = "calibration_null_std"
# A null with (almost) no spread would turn any score difference into an enormous z.
MIN_NULL_STD = 1e-6
DEFAULT_PAIRS = 20_000
_MIN_NORM = 1e-12


@dataclass(frozen=True)
class Calibration:
    """The null (unrelated-pair) score distribution of one (adapter, target space)."""

    null_mean: float
    null_std: float

    def z(self, score: float) -> float:
        """``score`` as standard deviations above the null mean."""
        return (score - self.null_mean) / self.null_std

    def to_metrics(self) -> dict[str, float]:
        """The two numbers as adapter-metrics entries (stored with the adapter's record)."""
        return {METRIC_NULL_MEAN: self.null_mean, METRIC_NULL_STD: self.null_std}

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, float]) -> Calibration | None:
        """Read back ``to_metrics``; ``None`` if the metrics carry no calibration."""
        if METRIC_NULL_MEAN not in metrics or METRIC_NULL_STD not in metrics:
            return None
        mean = float(metrics[METRIC_NULL_MEAN])
        std = float(metrics[METRIC_NULL_STD])
        if not (math.isfinite(mean) and math.isfinite(std)) or std <= 0.0:
            raise InvalidArgument(
                f"calibration metrics are unusable: {METRIC_NULL_MEAN}={mean!r}, "
                f"{METRIC_NULL_STD}={std!r} (both must be finite and the std > 0); "
                "retrain the adapter to recompute them"
            )
        return cls(null_mean=mean, null_std=std)


def fit_calibration(
    queries: npt.ArrayLike,
    targets: npt.ArrayLike,
    *,
    seed: int = 0,
    pairs: int = DEFAULT_PAIRS,
) -> Calibration:
    """Estimate the null from ``pairs`` random unrelated anchor pairs (i, j), j != i.

    ``queries[i]`` is anchor i as a query arrives in the target space (translated by the adapter,
    or the target-space vector itself when no adapter is needed: pass the same matrix twice);
    ``targets[j]`` is anchor j embedded in the target space. Rows need not be unit length.
    """
    q = _checked_rows(queries, "queries")
    t = _checked_rows(targets, "targets")
    if q.shape != t.shape:
        raise InvalidArgument(
            f"queries {q.shape} and targets {t.shape} must have the same shape: "
            "row i of both is anchor i, in the target space"
        )
    if pairs < 1:
        raise InvalidArgument(f"pairs must be >= 1, got {pairs}")
    n = q.shape[0]
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, size=pairs)
    # Draw j from the n - 1 other rows directly, so j != i without rejection sampling.
    j = rng.integers(0, n - 1, size=pairs)
    j = j + (j >= i)
    scores = np.einsum("ij,ij->i", q[i], t[j])
    mean = float(scores.mean())
    std = max(float(scores.std()), MIN_NULL_STD)
    return Calibration(null_mean=mean, null_std=std)


def _checked_rows(rows: npt.ArrayLike, name: str) -> npt.NDArray[np.float64]:
    """``rows`` as float64 unit rows; refuses bad shapes, non-finite values and zero rows."""
    array: npt.NDArray[Any] = np.asarray(rows, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2 or array.shape[1] < 1:
        raise InvalidArgument(
            f"{name} must be a matrix with at least 2 anchor rows, got shape {array.shape}"
        )
    if not np.all(np.isfinite(array)):
        bad = int(np.count_nonzero(~np.all(np.isfinite(array), axis=1)))
        raise InvalidArgument(f"{name} has {bad} row(s) with NaN or infinite values")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    if float(norms.min()) < _MIN_NORM:
        raise InvalidArgument(
            f"{name} row {int(np.argmin(norms))} has zero norm; it has no direction"
        )
    unit: npt.NDArray[np.float64] = array / norms
    return unit
