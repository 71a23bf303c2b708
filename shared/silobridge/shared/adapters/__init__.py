"""Adapters between embedding spaces: fit, apply, and signed artifacts."""

from __future__ import annotations

from silobridge.shared.adapters.base import KINDS, Adapter, FitConfig, heldout_ndcg
from silobridge.shared.adapters.fitting import fit
from silobridge.shared.adapters.registry import adapter_from_state

__all__ = ["KINDS", "Adapter", "FitConfig", "adapter_from_state", "fit", "heldout_ndcg"]
