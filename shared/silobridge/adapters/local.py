"""Local drift adapter: per-cluster ridge experts shrunk toward the global map, softly gated.

Expert ``c`` is ``W_c = (1 - s) W_c_ridge + s W_global`` (same for its bias). Each expert is
stored as its departure from the global map, ``W_c - W_global``, truncated to rank
``local_rank``: the hot path then costs one full gemv plus two thin ones instead of one full
gemv per cluster, and a few hundred anchors per cluster cannot support a full-rank departure
anyway. ``local_rank=None`` keeps the departures exact.
"""

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
    IndexArray,
    ParamValue,
    normalise_in_place,
    require_float,
    require_int,
    require_tensor,
    unit_vector_or_raise,
)
from silobridge.adapters.linear import RidgeSolver, tune_affine
from silobridge.core.errors import InvalidArgument

KMEANS_ITERATIONS = 50
# A cluster needs some anchors before a ridge expert on it is more than noise around its mean.
MIN_CLUSTER_ANCHORS = 5


class LocalAdapter(Adapter):
    """``y = normalise(W x + b + sum_c g_c(x) (U_c V_c x + d_c))``, ``g = softmax(C x / T)``."""

    kind: ClassVar[str] = "local"

    def __init__(
        self,
        weights: Mapping[str, FloatMatrix],
        temperature: float,
        shrinkage: float,
        ridge_lambda: float,
    ) -> None:
        weight = np.asarray(weights["weight"], dtype=np.float32)
        super().__init__(weight.shape[1], weight.shape[0])
        self._centroids = np.array(weights["centroids"], dtype=np.float32)
        self.clusters = self._centroids.shape[0]
        self.rank = weights["expert_down"].shape[0] // self.clusters
        self.temperature = temperature
        self.shrinkage = shrinkage
        self.ridge_lambda = ridge_lambda
        # The hot path is two gemvs. ``x @ _fused_in`` yields [W x | V_c x for all c | gate
        # logits] (temperature folded into the centroids); ``[g_c V_c x | g] @ _fused_out``
        # yields the gated expert departures and biases.
        self._fused_in = np.ascontiguousarray(
            np.concatenate(
                [weight.T, weights["expert_down"].T, self._centroids.T / np.float32(temperature)],
                axis=1,
            ),
            dtype=np.float32,
        )
        self._fused_out = np.ascontiguousarray(
            np.concatenate([weights["expert_up"].T, weights["expert_bias"]]), dtype=np.float32
        )
        self._bias = np.array(weights["bias"], dtype=np.float32)
        self._expert_start = self.target_dim
        self._gate_start = self.target_dim + self.clusters * self.rank
        # Logits are cosines / T, so with 1/T <= 80 exp() stays within float32 without the
        # usual max-subtraction, which the hot path then skips.
        self._shift_logits = 1.0 / temperature > 80.0

    def _map(self, unit_batch: FloatMatrix) -> FloatMatrix:
        fused = unit_batch @ self._fused_in
        logits = fused[:, self._gate_start :]
        gates = np.exp(logits - logits.max(axis=1, keepdims=True))
        gates /= gates.sum(axis=1, keepdims=True)
        low = fused[:, self._expert_start : self._gate_start].reshape(-1, self.clusters, self.rank)
        gated = np.concatenate(
            [(low * gates[:, :, None]).reshape(len(fused), self.clusters * self.rank), gates],
            axis=1,
        )
        out = fused[:, : self._expert_start] + self._bias + gated @ self._fused_out
        return out.astype(np.float32, copy=False)

    def apply_one(self, vector: FloatVector) -> FloatVector:
        fused = np.dot(unit_vector_or_raise(vector, self.source_dim), self._fused_in)
        gates = fused[self._gate_start :]  # views: the gating happens inside ``fused``
        if self._shift_logits:
            gates -= gates.max()
        np.exp(gates, out=gates)
        gates *= 1.0 / float(gates.sum())
        low = fused[self._expert_start : self._gate_start].reshape(self.clusters, self.rank)
        low *= gates[:, None]
        y: FloatVector = np.dot(fused[self._expert_start :], self._fused_out)
        y += fused[: self._expert_start]
        y += self._bias
        return normalise_in_place(y)

    def params(self) -> dict[str, ParamValue]:
        return {
            **super().params(),
            "clusters": self.clusters,
            "rank": self.rank,
            "temperature": self.temperature,
            "shrinkage": self.shrinkage,
            "ridge_lambda": self.ridge_lambda,
        }

    def tensors(self) -> dict[str, npt.NDArray[Any]]:
        expert_rows = self._fused_in[:, self._expert_start : self._gate_start]
        return {
            "weight": np.ascontiguousarray(self._fused_in[:, : self._expert_start].T),
            "bias": self._bias.copy(),
            "centroids": self._centroids.copy(),
            "expert_down": np.ascontiguousarray(expert_rows.T),
            "expert_up": np.ascontiguousarray(self._fused_out[: self.clusters * self.rank].T),
            "expert_bias": np.ascontiguousarray(self._fused_out[self.clusters * self.rank :]),
        }

    @classmethod
    def from_state(
        cls, params: Mapping[str, Any], tensors: Mapping[str, npt.NDArray[Any]]
    ) -> LocalAdapter:
        s_dim, t_dim = require_int(params, "source_dim"), require_int(params, "target_dim")
        clusters, rank = require_int(params, "clusters"), require_int(params, "rank")
        shapes = {
            "weight": (t_dim, s_dim),
            "bias": (t_dim,),
            "centroids": (clusters, s_dim),
            "expert_down": (clusters * rank, s_dim),
            "expert_up": (t_dim, clusters * rank),
            "expert_bias": (clusters, t_dim),
        }
        weights = {name: require_tensor(tensors, name, shape) for name, shape in shapes.items()}
        temperature = require_float(params, "temperature")
        if not temperature > 0:  # the gate divides by it
            raise InvalidArgument(
                f"adapter parameter 'temperature' must be positive, got {temperature!r}"
            )
        return cls(
            weights,
            temperature,
            require_float(params, "shrinkage"),
            require_float(params, "ridge_lambda"),
        )


def spherical_kmeans(points: Float64Matrix, clusters: int, seed: int) -> IndexArray:
    """Cluster labels of unit ``points`` by cosine k-means with seeded k-means++ seeding."""
    rng = np.random.default_rng(seed)
    count = points.shape[0]
    centres = [points[int(rng.integers(count))]]
    distance = 1.0 - points @ centres[0]
    for _ in range(1, clusters):
        weights = np.maximum(distance, 0.0)
        total = float(weights.sum())
        if total <= 0.0:  # every point coincides with a centre: no more clusters exist
            break
        pick = int(rng.choice(count, p=weights / total))
        centres.append(points[pick])
        distance = np.minimum(distance, 1.0 - points @ points[pick])
    centroids = np.stack(centres)
    labels = np.argmax(points @ centroids.T, axis=1)
    for _ in range(KMEANS_ITERATIONS):
        for c in range(centroids.shape[0]):
            members = points[labels == c]
            if members.shape[0]:
                mean = members.sum(axis=0)
                centroids[c] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        new_labels = np.argmax(points @ centroids.T, axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
    out: IndexArray = labels.astype(np.int64)
    return out


def fit_local(
    source: Float64Matrix, target: Float64Matrix, ridge_lambda: float, config: FitConfig
) -> LocalAdapter:
    """Fit the global ridge map, cluster the sources, and fit one shrunk expert per cluster."""
    s_dim, t_dim = source.shape[1], target.shape[1]
    global_w, global_b = RidgeSolver(source, target).solve(ridge_lambda)
    clusters = max(1, min(config.local_clusters, source.shape[0] // MIN_CLUSTER_ANCHORS))
    labels = spherical_kmeans(source, clusters, config.seed)
    full_rank = min(s_dim, t_dim)
    rank = full_rank if config.local_rank is None else min(config.local_rank, full_rank)
    centroids, downs, ups, biases = [], [], [], []
    keep = 1.0 - config.local_shrinkage
    for c in range(clusters):
        members = labels == c
        if int(members.sum()) < 2:  # too small to fit even a centred expert
            continue
        mean = source[members].sum(axis=0)
        centroids.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
        expert_w, expert_b = RidgeSolver(source[members], target[members]).solve(ridge_lambda)
        u, singular, vt = np.linalg.svd(keep * (expert_w - global_w), full_matrices=False)
        ups.append(u[:, :rank] * singular[:rank])
        downs.append(vt[:rank])
        biases.append(keep * (expert_b - global_b))
    weights = {
        "weight": global_w.astype(np.float32),
        "bias": global_b.astype(np.float32),
        "centroids": np.stack(centroids).astype(np.float32),
        "expert_down": np.concatenate(downs).astype(np.float32),
        "expert_up": np.concatenate(ups, axis=1).astype(np.float32),
        "expert_bias": np.stack(biases).astype(np.float32),
    }
    return LocalAdapter(weights, config.local_temperature, config.local_shrinkage, ridge_lambda)


def tune_local(
    fit_s: Float64Matrix,
    fit_t: Float64Matrix,
    tune_s: Float64Matrix,
    tune_t: Float64Matrix,
    config: FitConfig,
) -> LocalAdapter:
    """Choose the ridge lambda as for the global affine map, then fit the experts on ``fit_*``."""
    ridge_lambda = tune_affine(fit_s, fit_t, tune_s, tune_t, config).ridge_lambda
    return fit_local(fit_s, fit_t, ridge_lambda, config)
