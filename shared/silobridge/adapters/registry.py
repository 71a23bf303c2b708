"""The fixed registry of adapter kinds: rebuild from saved state, and per-kind tune and refit.

Every kind is fitted in two steps: ``tune_kind`` fits on the fit split and makes its choices
(ridge lambda, MLP epochs) on the tune split; ``refit_kind`` refits on all anchors with those
choices. Nothing here imports a name it reads from a file.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

import numpy.typing as npt

from silobridge.adapters.base import Adapter, FitConfig, Float64Matrix
from silobridge.adapters.linear import (
    AffineAdapter,
    IdentityAdapter,
    ProcrustesAdapter,
    fit_affine,
    fit_identity,
    fit_procrustes,
    tune_affine,
)
from silobridge.adapters.local import LocalAdapter, fit_local, tune_local
from silobridge.adapters.mlp import MlpAdapter, fit_mlp, tune_mlp
from silobridge.core.errors import InvalidArgument

# "auto" is not here: it only chooses among these, and what it returns is one of them.
REGISTRY: Mapping[str, type[Adapter]] = MappingProxyType(
    {
        "identity": IdentityAdapter,
        "procrustes": ProcrustesAdapter,
        "affine": AffineAdapter,
        "mlp": MlpAdapter,
        "local": LocalAdapter,
    }
)


def adapter_from_state(
    kind: str, params: Mapping[str, Any], tensors: Mapping[str, npt.NDArray[Any]]
) -> Adapter:
    """Rebuild an adapter of ``kind`` from its ``params()`` and ``tensors()``."""
    adapter_class = REGISTRY.get(kind)
    if adapter_class is None:
        raise InvalidArgument(
            f"unknown adapter kind {kind!r}; this version knows {', '.join(REGISTRY)}"
        )
    return adapter_class.from_state(params, tensors)


def tune_kind(
    kind: str,
    fit_pair: tuple[Float64Matrix, Float64Matrix],
    tune_pair: tuple[Float64Matrix, Float64Matrix],
    config: FitConfig,
) -> Adapter:
    """An adapter of ``kind`` fitted on ``fit_pair`` with its choices made on ``tune_pair``."""
    (fit_s, fit_t), (tune_s, tune_t) = fit_pair, tune_pair
    if kind == "identity":
        return fit_identity(fit_s, fit_t)
    if kind == "procrustes":
        return fit_procrustes(fit_s, fit_t, config)
    if kind == "affine":
        return tune_affine(fit_s, fit_t, tune_s, tune_t, config)
    if kind == "mlp":
        return tune_mlp(fit_s, fit_t, tune_s, tune_t, config)
    if kind == "local":
        return tune_local(fit_s, fit_t, tune_s, tune_t, config)
    raise InvalidArgument(f"unknown adapter kind {kind!r}; choose one of {', '.join(REGISTRY)}")


def refit_kind(
    tuned: Adapter, source: Float64Matrix, target: Float64Matrix, config: FitConfig
) -> Adapter:
    """Refit ``tuned``'s kind on all anchors, keeping the choices it made when tuned."""
    if isinstance(tuned, IdentityAdapter):
        return fit_identity(source, target)
    if isinstance(tuned, ProcrustesAdapter):
        return fit_procrustes(source, target, config)
    if isinstance(tuned, AffineAdapter):
        return fit_affine(source, target, tuned.ridge_lambda, config)
    if isinstance(tuned, MlpAdapter):
        return fit_mlp(source, target, tuned.ridge_lambda, tuned.epochs, config)
    if isinstance(tuned, LocalAdapter):
        return fit_local(source, target, tuned.ridge_lambda, config)
    raise InvalidArgument(f"cannot refit an adapter of kind {tuned.kind!r}")
