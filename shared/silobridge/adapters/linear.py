"""Global linear adapters: identity, mean-centred (semi-)orthogonal Procrustes and ridge affine."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from silobridge.adapters.base import (
    Adapter,
    FitConfig,
    Float64Matrix,
    FloatMatrix,
    FloatVector,
    ParamValue,
    heldout_ndcg,
    normalise_in_place,
    require_float,
    require_int,
    require_tensor,
    unit_vector_or_raise,
)
from silobridge.core.errors import InvalidArgument


class IdentityAdapter(Adapter):
    """The no-adapter baseline: the source vector used as is (same dimension only)."""

    kind: ClassVar[str] = "identity"

    def __init__(self, dim: int) -> None:
        super().__init__(dim, dim)

    def _map(self, unit_batch: FloatMatrix) -> FloatMatrix:
        return unit_batch

    def apply_one(self, vector: FloatVector) -> FloatVector:
        return np.array(unit_vector_or_raise(vector, self.source_dim), dtype=np.float32)

    def tensors(self) -> dict[str, npt.NDArray[Any]]:
        return {}

    @classmethod
    def from_state(
        cls, params: Mapping[str, Any], tensors: Mapping[str, npt.NDArray[Any]]
    ) -> IdentityAdapter:
        source_dim = require_int(params, "source_dim")
        if require_int(params, "target_dim") != source_dim:
            raise InvalidArgument("an identity adapter needs target_dim == source_dim")
        return cls(source_dim)


def fit_identity(source: Float64Matrix, target: Float64Matrix) -> IdentityAdapter:
    """The identity map, refused across dimensions where it has no meaning."""
    if source.shape[1] != target.shape[1]:
        raise InvalidArgument(
            f"identity needs equal dimensions, got source {source.shape[1]} and target "
            f"{target.shape[1]}; choose procrustes, affine, mlp, local or auto instead"
        )
    return IdentityAdapter(source.shape[1])


class LinearMapAdapter(Adapter):
    """``y = normalise(W x + b)``: every global linear kind, with centring folded into ``b``."""

    def __init__(self, weight: FloatMatrix, bias: FloatVector) -> None:
        super().__init__(weight.shape[1], weight.shape[0])
        # Held as (source_dim, target_dim), C-contiguous: ``x @ W`` is the fastest gemv layout
        # here (measured ~20% faster than ``W @ x`` on the row-major transpose).
        self._weight_st = np.ascontiguousarray(np.asarray(weight, dtype=np.float32).T)
        self._bias = np.ascontiguousarray(bias, dtype=np.float32)

    def _map(self, unit_batch: FloatMatrix) -> FloatMatrix:
        out: FloatMatrix = unit_batch @ self._weight_st + self._bias
        return out

    def apply_one(self, vector: FloatVector) -> FloatVector:
        y: FloatVector = np.dot(unit_vector_or_raise(vector, self.source_dim), self._weight_st)
        y += self._bias
        return normalise_in_place(y)

    def tensors(self) -> dict[str, npt.NDArray[Any]]:
        return {"weight": np.ascontiguousarray(self._weight_st.T), "bias": self._bias.copy()}

    @classmethod
    def _weights_from_state(
        cls, params: Mapping[str, Any], tensors: Mapping[str, npt.NDArray[Any]]
    ) -> tuple[FloatMatrix, FloatVector]:
        source_dim = require_int(params, "source_dim")
        target_dim = require_int(params, "target_dim")
        weight = require_tensor(tensors, "weight", (target_dim, source_dim))
        return weight, require_tensor(tensors, "bias", (target_dim,))


class ProcrustesAdapter(LinearMapAdapter):
    """``y = s Q (x - mu_s) + mu_t``, ``Q`` orthogonal (semi-orthogonal across dimensions)."""

    kind: ClassVar[str] = "procrustes"

    def __init__(self, weight: FloatMatrix, bias: FloatVector, scale: float) -> None:
        super().__init__(weight, bias)
        self.scale = scale

    def params(self) -> dict[str, ParamValue]:
        return {**super().params(), "scale": self.scale}

    @classmethod
    def from_state(
        cls, params: Mapping[str, Any], tensors: Mapping[str, npt.NDArray[Any]]
    ) -> ProcrustesAdapter:
        weight, bias = cls._weights_from_state(params, tensors)
        return cls(weight, bias, require_float(params, "scale"))


def fit_procrustes(
    source: Float64Matrix, target: Float64Matrix, config: FitConfig
) -> ProcrustesAdapter:
    """Closed-form centred Procrustes: ``Q = U V^T`` from the SVD of the cross-covariance."""
    mean_s, mean_t = source.mean(axis=0), target.mean(axis=0)
    centred_s, centred_t = source - mean_s, target - mean_t
    u, singular, vt = np.linalg.svd(centred_s.T @ centred_t, full_matrices=False)
    rotation = u @ vt  # (source_dim, target_dim)
    scale = 1.0
    if config.procrustes_scale:
        # The least-squares scale for a fixed rotation: trace(S) / ||X_c||_F^2.
        scale = float(singular.sum() / max(float(np.sum(centred_s**2)), 1e-12))
    weight = rotation.T * scale
    bias = mean_t - weight @ mean_s
    return ProcrustesAdapter(weight.astype(np.float32), bias.astype(np.float32), scale)


class AffineAdapter(LinearMapAdapter):
    """Ridge least squares with bias, ``y = W x + b``, optionally of low rank."""

    kind: ClassVar[str] = "affine"

    def __init__(
        self, weight: FloatMatrix, bias: FloatVector, ridge_lambda: float, rank: int
    ) -> None:
        super().__init__(weight, bias)
        self.ridge_lambda = ridge_lambda
        self.rank = rank

    def params(self) -> dict[str, ParamValue]:
        return {**super().params(), "ridge_lambda": self.ridge_lambda, "rank": self.rank}

    @classmethod
    def from_state(
        cls, params: Mapping[str, Any], tensors: Mapping[str, npt.NDArray[Any]]
    ) -> AffineAdapter:
        weight, bias = cls._weights_from_state(params, tensors)
        return cls(weight, bias, require_float(params, "ridge_lambda"), require_int(params, "rank"))


class RidgeSolver:
    """Ridge solutions ``W(lambda)`` for many lambdas from one SVD of the centred sources."""

    def __init__(self, source: Float64Matrix, target: Float64Matrix) -> None:
        self.mean_s, self.mean_t = source.mean(axis=0), target.mean(axis=0)
        u, self._singular, self._vt = np.linalg.svd(source - self.mean_s, full_matrices=False)
        self._projected = u.T @ (target - self.mean_t)

    def solve(self, ridge_lambda: float, rank: int | None = None) -> tuple[Float64Matrix, Any]:
        """``(W, b)`` with ``W`` shaped (target_dim, source_dim), truncated to ``rank`` if set."""
        shrink = self._singular / (self._singular**2 + ridge_lambda)
        weight_st = self._vt.T @ (shrink[:, None] * self._projected)  # (source, target)
        if rank is not None and rank < min(weight_st.shape):
            u, singular, vt = np.linalg.svd(weight_st, full_matrices=False)
            weight_st = (u[:, :rank] * singular[:rank]) @ vt[:rank]
        weight = weight_st.T
        return weight, self.mean_t - weight @ self.mean_s


def affine_rank(config: FitConfig, source_dim: int, target_dim: int) -> int:
    """The effective rank of an affine map under ``config``."""
    full = min(source_dim, target_dim)
    return full if config.affine_rank is None else min(config.affine_rank, full)


def build_affine(solver: RidgeSolver, ridge_lambda: float, rank: int) -> AffineAdapter:
    weight, bias = solver.solve(ridge_lambda, rank)
    return AffineAdapter(weight.astype(np.float32), bias.astype(np.float32), ridge_lambda, rank)


def tune_affine(
    fit_s: Float64Matrix,
    fit_t: Float64Matrix,
    tune_s: Float64Matrix,
    tune_t: Float64Matrix,
    config: FitConfig,
) -> AffineAdapter:
    """The affine map fitted on ``fit_*`` with the lambda that scores best on ``tune_*``."""
    solver = RidgeSolver(fit_s, fit_t)
    rank = affine_rank(config, fit_s.shape[1], fit_t.shape[1])
    best: tuple[float, AffineAdapter] | None = None
    # On a tie the stronger penalty wins: it is the safer map for unseen inputs.
    for ridge_lambda in sorted(config.ridge_lambdas):
        adapter = build_affine(solver, ridge_lambda, rank)
        score = heldout_ndcg(adapter, tune_s, tune_t, distractors=fit_t)
        if best is None or score >= best[0]:
            best = (score, adapter)
    assert best is not None  # FitConfig refuses an empty lambda grid
    return best[1]


def fit_affine(
    source: Float64Matrix, target: Float64Matrix, ridge_lambda: float, config: FitConfig
) -> AffineAdapter:
    """The affine map on all of ``source``/``target`` with an already chosen lambda."""
    rank = affine_rank(config, source.shape[1], target.shape[1])
    return build_affine(RidgeSolver(source, target), ridge_lambda, rank)
