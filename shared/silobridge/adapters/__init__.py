"""Adapters between embedding spaces: fit, apply, and signed artifacts."""

from __future__ import annotations

from silobridge.adapters.base import KINDS, Adapter, FitConfig, heldout_ndcg
from silobridge.adapters.fitting import fit
from silobridge.adapters.registry import adapter_from_state

__all__ = ["KINDS", "Adapter", "FitConfig", "adapter_from_state", "fit", "heldout_ndcg"]
