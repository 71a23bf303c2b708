"""Residual MLP adapter: trained in torch from the affine solution, applied in plain numpy.

``y = normalise(A x + b + W2 gelu(W1 x + c))`` with ``A, b`` starting at the ridge solution and
``W2 = 0``, so training starts exactly at the affine map and only has to learn what it misses.
GELU is the tanh approximation in both torch and numpy, so the stored weights mean the same in
both and applying never needs torch (training lives in ``mlp_train``, imported only to fit).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from silobridge.adapters.base import (
    MLP_LOSSES,
    Adapter,
    FitConfig,
    Float64Matrix,
    FloatMatrix,
    FloatVector,
    ParamValue,
    normalise_in_place,
    require_float,
    require_int,
    require_tensor,
    unit_vector_or_raise,
)
from silobridge.adapters.linear import tune_affine
from silobridge.core.errors import InvalidArgument

_GELU_C = math.sqrt(2.0 / math.pi)


def _gelu_tanh(z: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """GELU (tanh approximation) in place, as torch's ``gelu(approximate="tanh")``."""
    cube = z * z
    cube *= z
    cube *= np.float32(0.044715)
    cube += z
    cube *= np.float32(_GELU_C)
    np.tanh(cube, out=cube)
    cube += np.float32(1.0)
    z *= np.float32(0.5)
    z *= cube
    return z


class MlpAdapter(Adapter):
    """The residual MLP adapter; ``epochs`` is how long it trained (reused when refitting)."""

    kind: ClassVar[str] = "mlp"

    def __init__(
        self, weights: Mapping[str, FloatMatrix], epochs: int, loss: str, ridge_lambda: float
    ) -> None:
        weight = np.asarray(weights["weight"], dtype=np.float32)
        super().__init__(weight.shape[1], weight.shape[0])
        hidden_weight = np.asarray(weights["hidden_weight"], dtype=np.float32)
        # One gemv ``x @ _fused_in`` yields [A x | W1 x]; a second applies W2 to the hidden.
        self._fused_in = np.ascontiguousarray(np.concatenate([weight.T, hidden_weight.T], axis=1))
        self._bias = np.array(weights["bias"], dtype=np.float32)
        self._hidden_bias = np.array(weights["hidden_bias"], dtype=np.float32)
        self._out_st = np.ascontiguousarray(np.asarray(weights["out_weight"], dtype=np.float32).T)
        self.hidden = hidden_weight.shape[0]
        self.epochs = epochs
        self.loss = loss
        self.ridge_lambda = ridge_lambda

    def _map(self, unit_batch: FloatMatrix) -> FloatMatrix:
        fused = unit_batch @ self._fused_in
        hidden = _gelu_tanh(fused[:, self.target_dim :] + self._hidden_bias)
        out: FloatMatrix = fused[:, : self.target_dim] + self._bias + hidden @ self._out_st
        return out

    def apply_one(self, vector: FloatVector) -> FloatVector:
        fused = np.dot(unit_vector_or_raise(vector, self.source_dim), self._fused_in)
        hidden = fused[self.target_dim :]
        hidden += self._hidden_bias
        y: FloatVector = np.dot(_gelu_tanh(hidden), self._out_st)
        y += fused[: self.target_dim]
        y += self._bias
        return normalise_in_place(y)

    def params(self) -> dict[str, ParamValue]:
        return {
            **super().params(),
            "hidden": self.hidden,
            "epochs": self.epochs,
            "loss": self.loss,
            "ridge_lambda": self.ridge_lambda,
        }

    def tensors(self) -> dict[str, npt.NDArray[Any]]:
        return {
            "weight": np.ascontiguousarray(self._fused_in[:, : self.target_dim].T),
            "bias": self._bias.copy(),
            "hidden_weight": np.ascontiguousarray(self._fused_in[:, self.target_dim :].T),
            "hidden_bias": self._hidden_bias.copy(),
            "out_weight": np.ascontiguousarray(self._out_st.T),
        }

    @classmethod
    def from_state(
        cls, params: Mapping[str, Any], tensors: Mapping[str, npt.NDArray[Any]]
    ) -> MlpAdapter:
        s_dim, t_dim = require_int(params, "source_dim"), require_int(params, "target_dim")
        hidden = require_int(params, "hidden")
        shapes = {
            "weight": (t_dim, s_dim),
            "bias": (t_dim,),
            "hidden_weight": (hidden, s_dim),
            "hidden_bias": (hidden,),
            "out_weight": (t_dim, hidden),
        }
        weights = {name: require_tensor(tensors, name, shape) for name, shape in shapes.items()}
        loss = params.get("loss")
        if loss not in MLP_LOSSES:
            raise InvalidArgument(f"adapter parameter 'loss' must be one of {MLP_LOSSES}")
        return cls(
            weights, require_int(params, "epochs"), loss, require_float(params, "ridge_lambda")
        )


def tune_mlp(
    fit_s: Float64Matrix,
    fit_t: Float64Matrix,
    tune_s: Float64Matrix,
    tune_t: Float64Matrix,
    config: FitConfig,
) -> MlpAdapter:
    """Train on ``fit_*`` from the tuned affine map, stopping early on ``tune_*`` nDCG@10."""
    from silobridge.adapters.mlp_train import train_residual_mlp

    ridge_lambda = tune_affine(fit_s, fit_t, tune_s, tune_t, config).ridge_lambda
    weights, epochs = train_residual_mlp(
        fit_s, fit_t, ridge_lambda, config, config.mlp_epochs, (tune_s, tune_t)
    )
    return MlpAdapter(weights, epochs, config.mlp_loss, ridge_lambda)


def fit_mlp(
    source: Float64Matrix,
    target: Float64Matrix,
    ridge_lambda: float,
    epochs: int,
    config: FitConfig,
) -> MlpAdapter:
    """Train on all anchors for the epoch count early stopping chose (no anchors left to stop)."""
    from silobridge.adapters.mlp_train import train_residual_mlp

    weights, trained = train_residual_mlp(source, target, ridge_lambda, config, epochs, None)
    return MlpAdapter(weights, trained, config.mlp_loss, ridge_lambda)
